"""The one way the bot's flows talk to Slack's Web API (design rule 19):
redact -> validate (and fit the total text budget) -> call -> handle the error -> log.

Every failure comes back as one `SlackFailure` line, as it is: Slack refusing (`not_in_channel`,
`msg_blocks_too_long`, ...), a rate limit that outlasted the client's retries (with its
Retry-After), an upload to the separate upload URL failing (`SlackRequestError`) or the network.
Nothing here raises for a Slack problem; callers decide what the user is told.

`response_url`s are answered here too, within Slack's allowance of 5 uses in 30 minutes per URL:
the gateway counts the uses (in memory: a response_url belongs to one command, handled by the one
replica that received it) and refuses a sixth rather than letting Slack drop it silently.
"""
from __future__ import annotations

import logging
import threading
import time
import urllib.error
from dataclasses import dataclass
from typing import Any, Callable

from slack_sdk.errors import SlackApiError, SlackClientError, SlackRequestError

from bot import blocks

log = logging.getLogger(__name__)

# Slack's answers that mean "the bot cannot post here" (rather than "this message is wrong"):
# the command's channel is then answered through its response_url (README, Slack set-up).
UNREACHABLE = frozenset({"not_in_channel", "channel_not_found", "messages_tab_disabled", "is_archived",
                         "user_not_in_channel", "cannot_dm_bot", "restricted_action"})

RESPONSE_URL_USES = 5                 # Slack: a response_url takes 5 posts ...
RESPONSE_URL_WINDOW = 30 * 60.0       # ... within 30 minutes of the command


@dataclass(frozen=True)
class SlackFailure:
    """Why a call did not do what was asked, in one line."""

    error: str                        # Slack's error code, "ratelimited", "upload failed", "network error"
    detail: str = ""                  # a few words more (an exception's type), never a token or body
    retry_after: float | None = None  # seconds, when Slack said when to come back

    @property
    def unreachable(self) -> bool:
        return self.error in UNREACHABLE

    @property
    def rate_limited(self) -> bool:
        return self.error in ("ratelimited", "rate_limited")

    @property
    def answered(self) -> bool:
        """Slack's Web API answered (with an error code); False when the call never got an answer."""
        return self.error not in ("network error", "client error", "request failed")

    @property
    def network(self) -> bool:
        """Slack was not reached at all (past the client's retries): the next call would most likely
        wait out its own timeout too."""
        return self.error == "network error"

    def __str__(self) -> str:
        return f"{self.error} ({self.detail})" if self.detail else self.error


@dataclass(frozen=True)
class Posted:
    """chat.postMessage's outcome: `ts` when the message is in Slack (even if its files are not)."""

    channel: str
    ts: str | None
    failure: SlackFailure | None = None          # the message itself was not posted
    file_failure: SlackFailure | None = None     # the message was posted, a file of it was not


def failure_of(exc: BaseException) -> SlackFailure:
    """Any exception of a Web API call as a one-line failure (never its message: it may hold a URL)."""
    if isinstance(exc, SlackApiError):
        response = exc.response
        error = str(response.get("error") or f"HTTP {getattr(response, 'status_code', '?')}")
        retry_after = None
        if getattr(response, "status_code", None) == 429 or error == "ratelimited":
            headers = getattr(response, "headers", {}) or {}
            raw = headers.get("Retry-After") or headers.get("retry-after")
            try:
                retry_after = float(raw[0] if isinstance(raw, list) else raw)
            except (TypeError, ValueError):
                retry_after = 1.0
            error = "ratelimited"
        return SlackFailure(error, retry_after=retry_after)
    if isinstance(exc, SlackRequestError):     # files_upload_v2's upload to its separate URL, among others
        return SlackFailure("request failed", type(exc).__name__)
    if isinstance(exc, urllib.error.HTTPError):  # the upload URL answering an error status
        return SlackFailure("request failed", f"HTTP {exc.code}")
    if isinstance(exc, SlackClientError):
        return SlackFailure("client error", type(exc).__name__)
    if isinstance(exc, blocks.BlockError):
        return SlackFailure("invalid message", str(exc)[:200])
    return SlackFailure("network error", type(exc).__name__)   # URLError, timeouts, resets


class SlackCallFailed(Exception):
    """For a caller that cannot go on without the call (the start-up's auth.test), or stops the rest of
    its work when Slack is unreachable (the watch): the failure, raised."""

    def __init__(self, what: str, failure: SlackFailure):
        super().__init__(f"{what}: {failure}")
        self.failure = failure


class _NoSecrets:
    """The redactor of a gateway whose calls carry no message (doctor, start-up): failures hold no secret."""

    def __call__(self, text: str) -> str:
        return text

    def message(self, message: "blocks.Message") -> "blocks.Message":
        return message


# What a call may raise that is Slack's or the network's doing (anything else is a bug and propagates).
CALL_ERRORS = (SlackClientError, OSError, blocks.BlockError)


class SlackGateway:
    def __init__(self, client: Any, redactor: Callable[[str], str] | Any = None, *,
                 webhook_factory: Callable[[str], Any] | None = None, clock: Callable[[], float] = time.monotonic,
                 log_failures: bool = True):
        """`redactor`: bot.redaction.Redactor (None only for calls that post nothing); `log_failures=False` for a
        caller that reports every failure itself (doctor: one check line each)."""
        self.client = client
        self.redactor = redactor if redactor is not None else _NoSecrets()
        self._log_failures = log_failures
        self._webhook_factory = webhook_factory
        self._clock = clock
        self._lock = threading.Lock()
        self._response_uses: dict[str, list[float]] = {}
        self._cooling: dict[str, float] = {}          # channel -> monotonic time its rate limit ends

    # -- preparing -------------------------------------------------------------------------

    def prepare(self, message: "blocks.Message", *, attach: bool = True) -> "blocks.Message":
        """Redacted, within the total text budget (the rest in an attached file, or cut when the
        call cannot carry files), and validated: BlockError for a message Slack would refuse."""
        message = self.redactor.message(message)
        return blocks.validate(blocks.fit_text_budget(message, attach=attach))

    # -- calls -----------------------------------------------------------------------------

    def post(self, channel: str, message: "blocks.Message", *, thread_ts: str | None = None,
             broadcast: bool = False) -> Posted:
        """Post a durable message and upload its files into its thread (the thread it went in, or its
        own). A file that fails leaves the message posted: `file_failure` says so."""
        message = self.prepare(message)
        try:
            response = self.client.chat_postMessage(channel=channel, text=message.text, blocks=message.blocks,
                                                    thread_ts=thread_ts, unfurl_links=False,
                                                    **({"reply_broadcast": True} if broadcast and thread_ts else {}))
        except CALL_ERRORS as exc:
            failure = self._failed("chat.postMessage", channel, exc)
            return Posted(channel, None, failure)
        ts = response.get("ts")
        file_failure = None
        for upload in message.files:
            file_failure = self.upload(channel, thread_ts or ts, upload) or file_failure
        return Posted(response.get("channel") or channel, ts, None, file_failure)

    def upload(self, channel: str, thread_ts: str | None, upload: "blocks.FileUpload") -> SlackFailure | None:
        """files_upload_v2 into a thread; its three steps fail as Slack errors or as a request error."""
        content = self.redactor(upload.content) if isinstance(upload.content, str) else upload.content
        try:
            self.client.files_upload_v2(channel=channel, thread_ts=thread_ts, title=self.redactor(upload.title),
                                        filename=upload.filename, content=content)
            return None
        except CALL_ERRORS as exc:
            return self._failed(f"files_upload_v2 {upload.filename}", channel, exc)

    def update(self, channel: str, ts: str, message: "blocks.Message") -> SlackFailure | None:
        """chat.update by the stored ts. A rate limit that outlasts the client's own retries marks the
        channel cooling for Retry-After seconds (see `cooling`)."""
        message = self.prepare(message, attach=False)
        try:
            self.client.chat_update(channel=channel, ts=ts, text=message.text, blocks=message.blocks)
            return None
        except CALL_ERRORS as exc:
            failure = self._failed("chat.update", channel, exc)
            if failure.rate_limited:
                with self._lock:
                    self._cooling[channel] = self._clock() + (failure.retry_after or 1.0)
            return failure

    def cooling(self, channel: str) -> float:
        """Seconds left of a rate limit Slack put on updates in `channel` (0 when none): periodic
        updates wait it out instead of being sent into another 429."""
        with self._lock:
            return max(0.0, self._cooling.get(channel, 0.0) - self._clock())

    def ephemeral(self, channel: str, user: str, message: "blocks.Message") -> SlackFailure | None:
        message = self.prepare(message, attach=False)
        try:
            self.client.chat_postEphemeral(channel=channel, user=user, text=message.text, blocks=message.blocks)
            return None
        except CALL_ERRORS as exc:
            return self._failed("chat.postEphemeral", channel, exc)

    def group_members(self, group: str) -> list[str] | SlackFailure:
        """usergroups.users.list: the user IDs in a user group (S…), or why Slack could not say."""
        try:
            response = self.client.usergroups_users_list(usergroup=group)
        except CALL_ERRORS as exc:
            return self._failed("usergroups.users.list", group, exc)
        users = response.get("users")
        return list(users) if isinstance(users, list) else []

    def token_identity(self) -> Any:
        """auth.test: the client's response as it is (Bolt keeps it, see bot.app.warm_up), or a SlackFailure."""
        try:
            return self.client.auth_test()
        except CALL_ERRORS as exc:
            return self._failed("auth.test", None, exc)

    def channel_info(self, channel: str) -> dict[str, Any] | SlackFailure:
        """conversations.info: what Slack says of `channel` (its `channel` object), or a SlackFailure."""
        try:
            response = self.client.conversations_info(channel=channel)
        except CALL_ERRORS as exc:
            return self._failed("conversations.info", channel, exc)
        found = response.get("channel")
        return found if isinstance(found, dict) else {}

    def publish_home(self, user_id: str, message: "blocks.Message") -> SlackFailure | None:
        """views.publish: `message`'s blocks as the user's App Home tab (redacted, validated as a view:
        100 blocks, no files; its text is only logged)."""
        message = self.redactor.message(message)
        try:
            view = blocks.validate(message, view=True)
            self.client.views_publish(user_id=user_id, view={"type": "home", "blocks": view.blocks})
            return None
        except CALL_ERRORS as exc:
            return self._failed("views.publish", user_id, exc)

    def respond(self, response_url: str, message: "blocks.Message") -> SlackFailure | None:
        """An ephemeral answer through the command's response_url (no files: they cannot go there),
        counting its uses: the sixth within 30 minutes is refused here ("response_url used up")."""
        message = self.prepare(message, attach=False)
        now = self._clock()
        with self._lock:
            uses = [t for t in self._response_uses.get(response_url, []) if now - t < RESPONSE_URL_WINDOW]
            if len(uses) >= RESPONSE_URL_USES:
                self._response_uses[response_url] = uses
                failure = SlackFailure("response_url used up", f"{RESPONSE_URL_USES} uses in 30 minutes")
                log.error("Slack response_url not used: %s", failure)
                return failure
            uses.append(now)
            self._response_uses[response_url] = uses
        try:
            answer = self._webhook(response_url).send(text=message.text, blocks=message.blocks or None,
                                                      response_type="ephemeral", replace_original=False)
        except CALL_ERRORS as exc:
            return self._failed("response_url", None, exc)
        if answer.status_code != 200:
            failure = SlackFailure("response_url refused", f"HTTP {answer.status_code} {str(answer.body)[:40]}")
            log.error("Slack refused a response_url post: %s", failure)
            return failure
        return None

    def response_uses_left(self, response_url: str | None) -> int:
        if not response_url:
            return 0
        now = self._clock()
        with self._lock:
            used = [t for t in self._response_uses.get(response_url, []) if now - t < RESPONSE_URL_WINDOW]
        return RESPONSE_URL_USES - len(used)

    # -- internals -------------------------------------------------------------------------

    def _webhook(self, url: str) -> Any:
        if self._webhook_factory is not None:
            return self._webhook_factory(url)
        from slack_sdk.webhook import WebhookClient

        handlers = getattr(self.client, "retry_handlers", None)
        return WebhookClient(url, timeout=getattr(self.client, "timeout", 30), retry_handlers=handlers)

    def _failed(self, what: str, channel: str | None, exc: BaseException) -> SlackFailure:
        failure = failure_of(exc)
        if self._log_failures:
            where = f" for {channel}" if channel and channel[:1] in "UWS" else f" in {channel}" if channel else ""
            log.error("Slack: %s%s failed: %s", what, where, self.redactor(str(failure)))
        return failure


__all__ = ["CALL_ERRORS", "Posted", "RESPONSE_URL_USES", "RESPONSE_URL_WINDOW", "SlackCallFailed", "SlackFailure",
           "SlackGateway", "UNREACHABLE", "failure_of"]
