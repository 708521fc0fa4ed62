"""§1 and §4 on demand: `/migrate help`, `precheck` (and `ack-risk`, which clears a HIGH risk of it),
`status`, `activity`. Each calls runbook/, records its event and posts its report."""
from __future__ import annotations

from typing import Callable

from bot import blocks
from bot.commands import Command
from bot.flows.replies import Replies
from bot.origin import Origin
from runbook import precheck
from runbook.config import Settings
from runbook.revisions import AlembicProject


class Checks:
    """`project`: the environment's AlembicProject, kept warm by Flows."""

    def __init__(self, settings: Settings, replies: Replies, project: Callable[[str], AlembicProject]):
        self.settings = settings
        self.replies = replies
        self.store = replies.store
        self.project = project

    def handlers(self) -> dict[str, Callable[[Command, Origin], None]]:
        return {"help": self.do_help, "precheck": self.do_precheck, "ack-risk": self.do_ack_risk,
                "status": self.do_status, "activity": self.do_activity}

    def do_help(self, command: Command, origin: Origin) -> None:
        """Slack gets the help in the ack itself (no Web API call); here it is only recorded."""
        self.replies.record(origin, "help", None, "ok")

    def do_precheck(self, command: Command, origin: Origin) -> None:
        from runbook.backup import last_backup_at

        name, env = self.settings.environment(command.environment)
        from runbook.review import acknowledgements

        from runbook import ops

        project = self.project(name)
        report = precheck.run_precheck(name, env, project=project,
                                       last_backup_at=last_backup_at(self.store, name),
                                       acknowledgements=lambda: acknowledgements(self.store, name),
                                       rehearsal=lambda current, head: ops.rehearsal_of_range(
                                           self.store, name, env, current, head, project))
        self.replies.record(origin, "precheck", name, report.verdict, "; ".join(report.reasons)[:2000],
                            {"duration_seconds": round(report.duration_seconds, 3),
                             "checks": {c.name: c.status for c in report.checks},
                             "pending": [r.revision for r in (report.alembic.pending if report.alembic else [])]})
        self.replies.post(origin, blocks.precheck_message(report))

    def do_ack_risk(self, command: Command, origin: Origin) -> None:
        """`/migrate ack-risk [env] REV reason` (issue 7): an approver of the environment records that a
        pending revision's HIGH risk rating was reviewed; the precheck then counts it as cleared. An
        append-only event, bound to the revision file as it is now."""
        from bot.commands import ack_risk_args
        from bot.review_blocks import ack_message
        from runbook import review

        revision, reason = ack_risk_args(command.args)     # who may: the ack_risk permission (Admission)
        name, env = self.settings.environment(command.environment)
        project = self.project(name)
        with precheck.target_of(env).connect("ack-risk") as conn:
            current = project.current(conn)
        try:
            ack = review.acknowledge(self.store, name, env, revision, reason, self.replies.actor(origin),
                                     project=project, current=current)
        except review.AcknowledgeError as exc:
            self.replies.fail(command, origin, f"`/migrate ack-risk` refused: {exc}")
            return
        self.replies.post(origin, ack_message(ack))

    def do_status(self, command: Command, origin: Origin) -> None:
        name, env = self.settings.environment(command.environment)
        state = precheck.alembic_status(env, project=self.project(name))
        last = self.store.last_event(name)
        from runbook.incident import latest_run

        self.replies.record(origin, "status", name, "ok",
                            f"current {', '.join(state.current) or 'none'}, {len(state.pending)} pending")
        self.replies.post(origin, blocks.status_message(name, state, last, latest_run(self.store, name)))

    def do_activity(self, command: Command, origin: Origin) -> None:
        """§4 on demand: the same snapshot the watch takes, against the environment's thresholds."""
        from runbook.watch import live_activity

        name, env = self.settings.environment(command.environment)
        snapshot, target = live_activity(env)
        self.replies.record(origin, "activity", name, "ok",
                            f"{len(snapshot.long_queries)} long, {len(snapshot.idle_in_transaction)} idle in "
                            f"transaction, {len(snapshot.lock_waits)} waiting on locks")
        self.replies.post(origin, blocks.activity_message(name, snapshot, target))
