"""§3, §5 and §6.1 as commands: `/migrate run`, `rollback`, `rehearse`, `validate`. Each is handed to the
migration desk (bot/migrations.py), which asks for approval, runs, watches and validates through runbook.ops."""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from bot import blocks
from bot.commands import Command
from bot.flows.replies import Replies
from bot.origin import Origin
from runbook.config import Settings

if TYPE_CHECKING:        # bot.migrations imports nothing of bot.flows: this stays one way
    from bot.migrations import Migrations


class Runs:
    def __init__(self, settings: Settings, replies: Replies, migrations: "Migrations"):
        self.settings = settings
        self.replies = replies
        self.migrations = migrations

    def handlers(self) -> dict[str, Callable[[Command, Origin], None]]:
        return {"run": self.do_run, "rollback": self.do_rollback, "rehearse": self.do_rehearse,
                "validate": self.do_validate}

    def do_run(self, command: Command, origin: Origin) -> None:
        """`/migrate run [env] [head | +1 | REV]` (§3): resolved against the scripts, refused up front in
        one line or asked for approval; bot/migrations.py runs it once approved, watched live."""
        from bot.commands import migration_args

        self._ask_migration(command, origin, "upgrade", *migration_args(command.args, "run"))

    def do_rollback(self, command: Command, origin: Origin) -> None:
        """`/migrate rollback [env] [-1 | REV]` (§6.1): an irreversible downgrade is refused before anyone
        is asked (pointing to `/migrate restore`); otherwise the same approval and supervised run."""
        from bot.commands import migration_args

        self._ask_migration(command, origin, "downgrade", *migration_args(command.args, "rollback"))

    def _ask_migration(self, command: Command, origin: Origin, direction: str, typed: str,
                       override: str | None) -> None:
        from bot.migrations import Refused

        name, _env = self.settings.environment(command.environment)
        try:
            request = self.migrations.request(name, direction, typed, self.replies.actor(origin), command.text,
                                              origin.channel_id, override=override)
        except Refused as exc:
            self.replies.fail(command, origin, str(exc))
            return
        if origin.channel_id and request.channel != origin.channel_id:
            self.replies.reply_ephemeral(origin, blocks.approval_pointer(request.channel, command.action, name))

    def do_rehearse(self, command: Command, origin: Origin) -> None:
        """`/migrate rehearse [env] [head | +1 | REV]` (issue 16): the pending range on a restored copy, on
        this executor like every long command (bot.migrations.Migrations.rehearse, which the "Rehearse
        first" button of an approval request runs too)."""
        from bot.commands import rehearse_args

        name, _env = self.settings.environment(command.environment)
        self.migrations.rehearse(name, rehearse_args(command.args), origin)

    def do_validate(self, command: Command, origin: Origin) -> None:
        """`/migrate validate [env]` (§5): the report; a failure gets the §6.5 recommendation in its thread."""
        name, _env = self.settings.environment(command.environment)
        self.migrations.validate(name, origin)
