"""Before any command runs: typed where commands are taken, not a replay of a request that was run
already, and by someone allowed to. runbook.authz decides the permission; this asks it and answers."""
from __future__ import annotations

import logging
from typing import Callable

from bot import approvals, blocks
from bot.commands import Command
from bot.flows.replies import Replies
from bot.origin import Origin
from runbook import authz
from runbook.config import Settings

log = logging.getLogger(__name__)


def channel_refusal(settings: Settings, channel_id: str | None) -> "blocks.Mrkdwn | None":
    """None when `/migrate` may be typed in `channel_id` (slack.command_channels: channel IDs and
    `dm`; default slack.channel and DMs); else the one line saying where to go instead. Pure: the
    ack gives the line at once, and Flows records the refusal."""
    if settings.slack is None:
        return None          # no channel configured: the bot answers wherever it is asked
    allowed = settings.slack.allowed_command_channels
    if channel_id in allowed or ("dm" in allowed and (channel_id or "").startswith("D")):
        return None
    places = [blocks.channel(c) for c in allowed if c != "dm"]
    if "dm" in allowed:
        places.append(blocks.Mrkdwn("a direct message with the bot"))
    if not places:
        return blocks.mrkdwn("`/migrate` is not taken in any channel (see slack.command_channels); nothing was done.")
    listed = ", ".join(places[:-1]) + " or " + places[-1] if len(places) > 1 else places[0]
    return blocks.mrkdwn("`/migrate` is not taken in this channel: use it in {}. Nothing was done.",
                         blocks.Mrkdwn(listed))


class Admission:
    """`members_of`: expands a Slack user group (the approvals service's, which caches it)."""

    def __init__(self, settings: Settings, replies: Replies, members_of: Callable[[str], list[str]]):
        self.settings = settings
        self.replies = replies
        self.members_of = members_of

    def admitted(self, command: Command, origin: Origin) -> bool:
        """Before any command runs: typed where commands are taken, not a replay of a request that
        was run already, and by someone allowed to (runbook.authz decides). A refusal is one line
        (the channel refusal was the ack's already) and an event."""
        name = self.settings.environment(command.environment)[0] if command.environment else None
        if origin.source == "slack" and command.action != "help":
            where = channel_refusal(self.settings, origin.channel_id)
            if where is not None:
                self.replies.record(origin, command.action, name, "unauthorised", where,
                                    {"channel": origin.channel_id, "command": command.text})
                return False
        if command.changes_state and origin.request_key:
            from runbook.state.replays import first_delivery

            if not first_delivery(self.replies.store, origin.request_key, claimed_by=self.replies.actor(origin)):
                log.warning("ignored a replayed request: %s by %s", command.text[:200], origin.user_id[:40])
                self.replies.record(origin, command.action, name, "replayed",
                                    f"a replay of `{command.text}` was ignored")
                return False
        permission = command.permission
        if permission is None or name is None:
            return True
        try:
            if authz.allowed(self.settings, name, permission, self.replies.actor(origin),
                             members_of=self.members_of):
                return True
            line = blocks.Mrkdwn(authz.refusal_line(self.settings, name, permission, mention=blocks.mention,
                                                    escape=blocks.escape))
        except approvals.Refusal as exc:       # a user group Slack would not expand
            line = exc.text
        self.replies.record(origin, command.action, name, "unauthorised", line, {"permission": permission})
        self.replies.reply_ephemeral(origin, blocks.error_message(line))
        return False

    def admits(self, command: Command, origin: Origin) -> bool:
        """Whether `command` from `origin` passes what every typed command passes (`admitted`: the channel,
        replays, runbook.authz). A button that runs what a command runs ("Rehearse first",
        bot/migrations.py) is held to the same rules through this; a refusal is answered and recorded here
        (the channel's too, which for a typed command the ack answered already)."""
        if self.admitted(command, origin):
            return True
        where = channel_refusal(self.settings, origin.channel_id) if origin.source == "slack" else None
        if where is not None:
            self.replies.reply_ephemeral(origin, blocks.error_message(where))
        return False
