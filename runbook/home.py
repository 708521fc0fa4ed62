"""Where each environment stands, for the Slack App Home (issue 14 §4): one plain dataclass per
environment, read from the target's alembic_version and the state database. Read-only: no audit
event, no lock. Knows nothing of Slack (bot/home_blocks.py renders it).

A target that cannot be reached does not hide the rest: its revisions read as `revisions_error`
(one redacted line) and everything the state database knows is still shown.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from runbook import precheck
from runbook.backup import Backup, latest_verified
from runbook.config import Environment, Settings
from runbook.incident import latest_run
from runbook.revisions import AlembicProject, Revision, RevisionError
from runbook.state.approvals import APPROVED, EXECUTING, PENDING, ApprovalRequest, ApprovalStore
from runbook.state.runs import Run
from runbook.target import TargetError
from runbook.watch import Alert, AlertBook, WatchState

# Requests that still wait for something: approvers (pending) or the run they started.
OPEN_REQUEST_STATES = (PENDING, APPROVED, EXECUTING)
# At most this many open requests and alerts are read per environment (the view shows fewer).
READ_LIMIT = 50


@dataclass(frozen=True)
class EnvironmentHome:
    environment: str
    production: bool
    current: tuple[str, ...] | None          # None: the target could not be read (`revisions_error`)
    pending: tuple[Revision, ...]            # oldest first, what `upgrade head` would apply
    revisions_problem: str | None            # several heads, an unknown current revision, ...
    revisions_error: str | None
    latest_run: Run | None
    open_requests: tuple[ApprovalRequest, ...]   # newest first
    open_alerts: tuple[Alert, ...]
    watch: WatchState
    watch_every_seconds: int
    latest_backup: Backup | None             # the latest verified full backup
    approvers: tuple[str, ...]               # user (U…) and user-group (S…) IDs
    required_approvals: int
    allow_self_approval: bool


def environment_home(name: str, env: Environment, store: Any, *,
                     project: AlembicProject | None = None) -> EnvironmentHome:
    current: tuple[str, ...] | None = None
    pending: tuple[Revision, ...] = ()
    problem = error = None
    try:
        state = precheck.alembic_status(env, project=project)
        current, pending, problem = tuple(state.current), tuple(state.pending), state.problem
    except (TargetError, RevisionError) as exc:      # both carry one redacted line
        error = str(exc) or type(exc).__name__
    book = AlertBook(store)
    return EnvironmentHome(
        environment=name, production=env.production, current=current, pending=pending,
        revisions_problem=problem, revisions_error=error,
        latest_run=latest_run(store, name),
        open_requests=tuple(ApprovalStore(store).list(environment=name, states=OPEN_REQUEST_STATES,
                                                      limit=READ_LIMIT)),
        open_alerts=tuple(book.alerts(name)[:READ_LIMIT]),
        watch=book.state(name), watch_every_seconds=env.watch.every_seconds,
        latest_backup=latest_verified(store, name),
        approvers=tuple(env.approvals.approvers), required_approvals=env.required_approvals,
        allow_self_approval=env.approvals.allow_self_approval)


def home(settings: Settings, store: Any, *,
         project: Callable[[str], AlembicProject] | None = None) -> list[EnvironmentHome]:
    """Every configured environment, in the configuration's order. `project(name)`: a cached
    AlembicProject per environment (the running bot keeps its parsed scripts)."""
    return [environment_home(name, env, store, project=project(name) if project else None)
            for name, env in settings.environments.items()]


__all__ = ["EnvironmentHome", "OPEN_REQUEST_STATES", "environment_home", "home"]
