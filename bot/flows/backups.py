"""§2 and §6.2–6.3 as commands: `/migrate backup` (with its progress message), `backups`, `restore` (asked
for approval; bot/restores.py runs it once approved). Backup progress messages left behind by a Slack
outage are brought up to date here too."""
from __future__ import annotations

from typing import Any, Callable

from bot import approvals, blocks
from bot.commands import Command, backup_args, restore_args
from bot.flows.replies import Replies
from bot.origin import Origin
from runbook.config import Settings


class Backups:
    """`service`: the approvals service a restore is asked through (it runs the restore once approved)."""

    def __init__(self, settings: Settings, replies: Replies, service: approvals.ApprovalService):
        self.settings = settings
        self.replies = replies
        self.store = replies.store
        self.approvals = service

    def handlers(self) -> dict[str, Callable[[Command, Origin], None]]:
        return {"backup": self.do_backup, "backups": self.do_backups, "restore": self.do_restore}

    def do_restore(self, command: Command, origin: Origin) -> None:
        """`/migrate restore [env] ID [tables=a,b]` (§6.2–6.3): checked against the catalogue and the
        backup, shown with what it replaces, then asked for approval; the approvals service runs it."""
        from runbook import backup as backups

        name, env = self.settings.environment(command.environment)
        backup_id, tables = restore_args(command.args)
        try:
            plan = backups.plan_restore(name, env, self.store, backup_id, tables=tables)
            if plan.blockers:
                raise approvals.ApprovalError("; ".join(plan.blockers))
            request = self.approvals.request("restore", name, self.replies.actor(origin),
                                             backups.plan_to_params(plan), channel=origin.channel_id)
        except (backups.BackupError, approvals.ApprovalError) as exc:
            self.replies.fail(command, origin, f"`{command.text}` refused: {exc}")
            return
        if origin.channel_id and request.channel != origin.channel_id:
            self.replies.reply_ephemeral(origin, blocks.approval_pointer(request.channel, "restore", name))

    def do_backup(self, command: Command, origin: Origin) -> None:
        """`/migrate backup [env] [schema | tables=a,b]` (§2): verified, catalogued; a dump that runs
        longer than a few seconds posts one progress message and updates it, then the result."""
        from runbook import backup as backups

        name, env = self.settings.environment(command.environment)
        kind, tables = backup_args(command.args)
        live = BackupProgress(self.replies, origin, name, kind, tables)
        try:
            made = backups.backup(name, env, self.store, kind=kind, tables=tables,
                                  actor=self.replies.actor(origin), progress=live, progress_every=live.every)
        except backups.BackupFailed as exc:
            made = exc.backup
        except backups.BackupError as exc:
            live.finish(blocks.error_message(f"`{command.text}` refused: {exc}"), or_post=False)
            self.replies.fail(command, origin, f"`{command.text}` refused: {exc}")
            return
        self.replies.record(origin, "backup", name, made.status,
                            f"#{made.id} {made.name}: {made.status}" + (f" ({made.error})" if made.error else
                                                                         f", level {made.level}"),
                            {"backup_id": made.id, "kind": made.kind, "level": made.level,
                             "size_bytes": made.size_bytes, "sha256": made.sha256, "location": made.location,
                             "tables": list(tables)})
        live.finish(blocks.backup_message(name, made), status=made.status)

    def do_backups(self, command: Command, origin: Origin) -> None:
        """`/migrate backups [env]`: the catalogue, newest first."""
        from runbook import backup as backups

        name, _env = self.settings.environment(command.environment)
        found = backups.list_backups(self.store, name, limit=30)
        self.replies.record(origin, "backups", name, "ok", f"{len(found)} listed")
        self.replies.post(origin, blocks.backups_message(name, found))

    def reconcile_backups(self, *, settle_seconds: float = 30.0) -> list[int]:
        """Backup progress messages still showing a backup as running (or any state it left since):
        updated to its result, from the catalogue."""
        from datetime import timedelta

        from runbook import backup as backups
        from runbook.state.models import utcnow

        updated = []
        for item, channel, ts in backups.messages_behind(self.store, settled_before=utcnow() - timedelta(
                seconds=settle_seconds)):
            if self.replies.update(channel, ts, blocks.backup_message(item.environment, item)):
                backups.mark_message(self.store, item.id, item.status)
                updated.append(item.id)
        return updated


class BackupProgress:
    """The progress callback of a Slack backup: after `post_after` seconds it posts one message,
    remembers its ts in the catalogue, and updates it every `every` seconds; `finish` turns it into
    the result (or posts the result when the dump was quick)."""

    post_after = 3.0
    every = 1.0
    update_every = 3.0

    def __init__(self, replies: Replies, origin: Origin, environment: str, kind: str, tables: tuple[str, ...]):
        self.replies, self.origin, self.environment = replies, origin, environment
        self.kind, self.tables = kind, tables
        self.channel: str | None = None
        self.ts: str | None = None
        self.backup_id: int | None = None
        self._last_update = 0.0

    def __call__(self, progress: Any) -> None:
        import time

        from runbook.backup import remember_message

        if progress.elapsed < self.post_after:
            return
        message = blocks.backup_progress_message(self.environment, self.kind, self.tables, progress)
        if self.ts is None:
            # stateful: updated in place, so where the command's channel is closed to the bot it is
            # posted in slack.channel (and the user gets a pointer)
            self.channel, self.ts = self.replies.deliver(self.origin, message, stateful=True)
            self._last_update = time.monotonic()
            if self.ts and progress.backup_id is not None:
                self.backup_id = progress.backup_id
                remember_message(self.replies.store, progress.backup_id, self.channel, self.ts)
        elif time.monotonic() - self._last_update >= self.update_every and self.channel \
                and not self.replies.gateway.cooling(self.channel):
            self.replies.update(self.channel, self.ts, message)
            self._last_update = time.monotonic()

    def finish(self, message: "blocks.Message", *, or_post: bool = True, status: str | None = None) -> None:
        """`status`: the backup's, once its final view reached Slack (else the reconcile writes it)."""
        if self.ts is not None and self.channel is not None:
            if self.replies.update(self.channel, self.ts, message, final=True) and status and self.backup_id:
                from runbook.backup import mark_message

                mark_message(self.replies.store, self.backup_id, status)
        elif or_post:
            self.replies.post(self.origin, message)
