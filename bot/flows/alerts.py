"""§4's watch switch and §7 as commands: `/migrate watch on | off | status` and `/migrate escalate`
(bot/escalate.py posts and records the escalation)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from bot import blocks
from bot.commands import Command, escalate_args
from bot.flows.replies import Replies
from bot.origin import Origin
from runbook.config import Settings

if TYPE_CHECKING:        # bot.escalate imports nothing of bot.flows: this stays one way
    from bot.escalate import Escalator


class Alerts:
    def __init__(self, settings: Settings, replies: Replies, escalator: "Escalator"):
        self.settings = settings
        self.replies = replies
        self.store = replies.store
        self.escalator = escalator

    def handlers(self) -> dict[str, Callable[[Command, Origin], None]]:
        return {"watch": self.do_watch, "escalate": self.do_escalate}

    def do_watch(self, command: Command, origin: Origin) -> None:
        """`/migrate watch [env] on | off | status`: the pause switch lives in the state database."""
        from runbook.watch import AlertBook

        name, env = self.settings.environment(command.environment)
        verb = command.args[0] if command.args else "status"
        book = AlertBook(self.store)
        changed = None
        if verb in ("on", "off"):
            changed = book.set_paused(name, verb == "off", self.replies.actor(origin))
        self.replies.record(origin, "watch", name, "ok", verb if changed is not False else f"{verb} (unchanged)")
        self.replies.post(origin, blocks.watch_message(name, book.state(name), book.alerts(name),
                                                       env.watch.every_seconds, changed=changed))

    def do_escalate(self, command: Command, origin: Origin) -> None:
        """`/migrate escalate [env] [1 | 2 | 3] [reason]` (§7.2): 1 points to the runbook section that
        fits the current state; 2 tags the owner with the incident summary; 3 is the emergency (the
        owner and @here, pause the application, the pause hook). The escalator posts and records it."""
        name, _env = self.settings.environment(command.environment)
        level, reason = escalate_args(command.args)
        try:
            report = self.escalator.escalate(name, level, reason=reason, actor=self.replies.actor(origin),
                                             origin_channel=origin.channel_id)
        except ValueError as exc:
            self.replies.fail(command, origin, f"`{command.text}` refused: {exc}")
            return
        if report.ts is None:
            self.replies.reply_ephemeral(origin, blocks.error_message(
                f"The level {level} escalation was recorded, but its message was not posted "
                f"({report.slack_error or 'no channel'}): tell the owner another way."))
            return
        if report.file_error:
            self.replies.reply_ephemeral(origin, blocks.error_message(
                f"The level {level} escalation was posted, but its incident file could not be attached "
                f"({report.file_error}): `runbook-bot incident` prints it."))
        if origin.channel_id and report.channel != origin.channel_id:
            self.replies.reply_ephemeral(origin, blocks.escalation_pointer(report.channel, level, name))
