"""What a command leaves behind: its event in the state database and its answer in Slack (posted through
bot/gateway.py, moved or sent through the response_url where the bot cannot post, updated in place,
ephemeral). Every command handler answers through this; bot/migrations.py and bot/live_run.py through the
Flows they are given, which hands their calls on to it."""
from __future__ import annotations

import logging
import time
from typing import Any

from bot import blocks
from bot.commands import Command
from bot.gateway import Posted, SlackGateway
from bot.origin import Origin
from bot.redaction import Redactor
from runbook.config import ConfigError, Settings
from runbook.state import Store

log = logging.getLogger(__name__)


class Replies:
    # a final update (a run's or a backup's last word) outlasts this many rate limits before it gives up
    FINAL_UPDATE_ATTEMPTS = 6

    def __init__(self, settings: Settings, store: Store, gateway: SlackGateway, redactor: Redactor):
        self.settings = settings
        self.store = store
        self.gateway = gateway
        self.redactor = redactor

    # -- the event ------------------------------------------------------------------------

    def actor(self, origin: Origin) -> str:
        return origin.user_id

    def record(self, origin: Origin, action: str, environment: str | None, outcome: str,
               summary: str = "", details: dict[str, Any] | None = None):
        return self.store.record(actor=self.actor(origin), action=action, environment=environment,
                                 outcome=outcome, summary=self.redactor(summary),
                                 details=self.redactor.tree(details or {}))

    def fail(self, command: Command, origin: Origin, text: str) -> None:
        """A command that did not happen: one line to the user, an event with outcome error."""
        text = self.redactor(text)
        try:
            self.record(origin, command.action, command.environment, "error", text)
        except Exception as exc:  # the state database may be what failed: the user still gets the one line
            log.error("could not record an event: %s", self.redactor(str(exc)))
        self.reply_ephemeral(origin, blocks.error_message(text))

    # -- posting --------------------------------------------------------------------------

    def channel_for(self, origin: Origin) -> str:
        if origin.channel_id:
            return origin.channel_id
        if self.settings.slack is not None:
            return self.settings.slack.channel
        raise ConfigError("slack.channel is not configured and the command came from no channel")

    def post(self, origin: Origin, message: "blocks.Message", thread_ts: str | None = None, *,
             stateful: bool = False) -> str | None:
        """Post a durable message (and its files) in the command's channel; returns its ts, or None
        when it could not go there (see `deliver`)."""
        channel, ts = self.deliver(origin, message, thread_ts=thread_ts, stateful=stateful)
        return ts if channel == self.channel_for(origin) else None

    def deliver(self, origin: Origin, message: "blocks.Message", *, thread_ts: str | None = None,
                stateful: bool = False) -> tuple[str | None, str | None]:
        """Post in the command's channel; where the bot cannot post (not invited, a private channel,
        a DM), the answer goes another way (design rule 19, README "Slack set-up"):
        - a stateful message (updated later, or with a thread others act in: `stateful`), or one with
          files (a response_url carries none), goes to `slack.channel`, and the user gets a one-line
          pointer to it through the command's response_url;
        - any other answer goes through the response_url itself, seen only by the user.
        Returns (channel, ts) of the durable message, (None, None) when there is none."""
        channel = self.channel_for(origin)
        posted = self.gateway.post(channel, message, thread_ts=thread_ts)
        if posted.ts is not None or posted.failure is None or not posted.failure.unreachable \
                or thread_ts is not None or not origin.channel_id:
            self._file_failed(origin, posted)
            return (posted.channel, posted.ts) if posted.ts is not None else (None, None)
        home = self.settings.slack.channel if self.settings.slack is not None else None
        if (stateful or message.files) and home and home != channel:
            moved = self.gateway.post(home, message)
            if moved.ts is not None:
                self._file_failed(origin, moved)
                self.respond(origin, blocks.moved_pointer(home, message.text), why=str(posted.failure))
                return moved.channel, moved.ts
        self.respond(origin, message, why=str(posted.failure))
        return None, None

    def _file_failed(self, origin: Origin, posted: Posted) -> None:
        """The message is in Slack but a file of it is not: the user hears it as it is."""
        if posted.ts is not None and posted.file_failure is not None:
            self.reply_ephemeral(origin, blocks.error_message(
                f"The message was posted, but its file could not be attached ({posted.file_failure}); "
                "the bot's log has the details."))

    def update(self, channel: str, ts: str, message: "blocks.Message", *, final: bool = False) -> bool:
        """Replace a posted message in place (chat.update by its stored ts); False if it did not
        happen (a rate limit included: `gateway.cooling(channel)` then says for how long). A `final`
        update is the state people are left with: it waits out Slack's Retry-After and tries again
        rather than being dropped."""
        for _ in range(self.FINAL_UPDATE_ATTEMPTS if final else 1):
            if final:
                time.sleep(self.gateway.cooling(channel))
            failure = self.gateway.update(channel, ts, message)
            if failure is None:
                return True
            if not failure.rate_limited:
                return False
        if final:
            log.error("undeliverable: the final state of message %s in %s was not written (rate limited "
                      "%d times)", ts, channel, self.FINAL_UPDATE_ATTEMPTS)
        return False

    def reply_ephemeral(self, origin: Origin, message: "blocks.Message") -> None:
        """Transient feedback only the user sees: an ephemeral in the command's channel, else (the bot
        is not there, or the command came from a DM) through the command's response_url."""
        if origin.source != "slack":
            self.gateway.prepare(message, attach=False)     # still checked: the CLI shares these renderers
            return
        failure = None
        if origin.channel_id:
            failure = self.gateway.ephemeral(origin.channel_id, origin.user_id, message)
            if failure is None or not failure.unreachable:
                return
        self.respond(origin, message, why=str(failure) if failure else "the command came from no channel")

    def respond(self, origin: Origin, message: "blocks.Message", *, why: str) -> bool:
        """Through the command's response_url (5 uses in 30 minutes: a command needs at most two,
        its answer or a pointer, and an error after a pointer). When that fails too, one line in the
        log says what was lost: nothing else can reach the user."""
        failure = self.gateway.respond(origin.response_url, message) if origin.response_url else None
        if origin.response_url and failure is None:
            return True
        log.error("undeliverable: a reply to %s in %s could not be posted (%s) nor sent through the "
                  "response_url (%s): %s", origin.user_id or "?", origin.channel_id or "no channel", why,
                  failure or "the command has none", self.redactor(blocks.one_line(message.text, 120)))
        return False


def post_message(client: Any, redactor: Redactor, channel: str, message: "blocks.Message", *,
                 thread_ts: str | None = None, broadcast: bool = False) -> Posted:
    """Post a durable message through the gateway (redacted, validated, within the text budget) and
    upload its files into its thread. `Posted.ts` is set once the message is in Slack, even when a
    file of it failed (`Posted.file_failure`); `Posted.failure` says why it is not.
    `broadcast`: a thread reply also shown in the channel."""
    return SlackGateway(client, redactor).post(channel, message, thread_ts=thread_ts, broadcast=broadcast)
