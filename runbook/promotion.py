"""The promotion gate (issue 7): an environment with `promote_from: staging` takes revision R only
after the bot applied R (or a later revision) on staging and validated it there.

The evidence is the runs table (runbook/state/runs.py): a succeeded `migrate` run on the source
environment whose end revision has R among its ancestors, with §5 validation passed. Runs are read
newest first, so a later successful rollback of the source below R withdraws the evidence until
R is applied and validated there again; so does a later restore that took the source below R (a
restore is never evidence itself: nothing validated the revision it brought back). Nothing here
is kept in memory: any replica, and the CLI, decide the same from the state database.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from runbook.config import Environment
from runbook.revisions import AlembicProject, RevisionError

# How far back the runs of the source environment are read.
RUNS_LOOKED_AT = 500


@dataclass(frozen=True)
class PromotionCheck:
    allowed: bool
    reason: str                          # one line: the evidence, or what is missing
    source: str | None = None
    evidence_run_id: str | None = None


def _reaches(project: AlembicProject, ends: Sequence[str], revision: str) -> bool:
    """Whether a database at `ends` has `revision` applied (it is one of their ancestors)."""
    try:
        return any(revision == end or any(r.revision == revision for r in project.pending([], end))
                   for end in ends)
    except RevisionError:
        return False            # a revision these scripts do not know: no evidence either way


def check(store: Any, name: str, env: Environment, revision: str, project: AlembicProject) -> PromotionCheck:
    """Whether `name` may be migrated to `revision` (an id the scripts know)."""
    from runbook.state.runs import RunStore, SUCCEEDED

    source = env.promote_from
    if source is None:
        return PromotionCheck(True, f"{name} has no promote_from: no promotion gate")
    rule = f"{name} takes only revisions the bot applied and validated on {source} first"
    if store is None:
        return PromotionCheck(False, f"promotion gate: {rule}, and the state database that records {source}'s "
                                     "runs is not available here", source)
    runs = RunStore(store).list(environment=source, states=(SUCCEEDED,), limit=RUNS_LOOKED_AT)
    unvalidated = None
    for run in runs:                                     # newest first
        result = run.outcome
        ends = result.to_revisions or []
        if run.kind in ("rollback", "restore"):
            started = result.from_revisions or []
            if _reaches(project, started, revision) and not _reaches(project, ends, revision):
                how = ("rolled back" if run.kind == "rollback" else
                       f"undone by a restore of backup #{result.backup_id}")
                return PromotionCheck(False, f"promotion gate: {rule}; {revision} was {how} on {source} "
                                             f"(run {run.id}, {run.finished_at or run.started_at:%Y-%m-%d %H:%M} UTC"
                                             f" to {', '.join(ends) or 'base'}): migrate and validate {source} "
                                             f"again first (`/migrate run {source} {revision}`)", source)
            continue
        if run.kind != "migrate" or not _reaches(project, ends, revision):
            continue
        if result.validation_passed is True:
            when = f"{run.finished_at or run.started_at:%Y-%m-%d %H:%M} UTC"
            return PromotionCheck(True, f"{revision} was applied and validated on {source} by run {run.id} "
                                        f"({when}, reached {', '.join(ends)})", source, run.id)
        unvalidated = unvalidated or run
    if unvalidated is not None:
        missing = (f"run {unvalidated.id} applied it on {source} but its validation did not pass: fix the cause, "
                   f"roll {source} back and migrate it again")
    else:
        latest = next((r for r in runs if r.kind == "migrate" and r.outcome.to_revisions), None)
        seen = (f"{source}'s latest migration by the bot reached {', '.join(latest.outcome.to_revisions)} "
                f"(run {latest.id})"
                if latest is not None else f"the bot has no successful migration of {source} on record")
        missing = f"{seen}; migrate and validate {source} first (`/migrate run {source} {revision}`)"
    return PromotionCheck(False, f"promotion gate: {rule}; {revision} has not been: {missing}", source)


__all__ = ["PromotionCheck", "check"]
