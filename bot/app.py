"""One Bolt app factory for both transports (design §1, rules 1, 2, 8, 9).

`build_app(settings, client, flows)` registers every listener. The `/migrate`
listener is thin: it parses the text (pure), acks at once, and hands the command
to `flows.submit`, which schedules the work on the bot's own bounded executor.
Nothing touches the database or the Web API before the ack; the one `auth.test`
Bolt needs is made by `warm_up(app)` at start-up, not on a user's first request.

No network at import time, and none in `build_app` either.
"""
from __future__ import annotations

import json
import logging
import os
import re
import secrets
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram
from slack_bolt import App, BoltRequest, BoltResponse
from slack_bolt.context.ack import Ack
from slack_bolt.middleware.authorization.single_team_authorization import SingleTeamAuthorization
from slack_sdk import WebClient
from slack_sdk.http_retry import default_retry_handlers
from slack_sdk.signature import SignatureVerifier
from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler, ServerErrorRetryHandler

from bot import blocks
from bot.approvals import ACTION_PATTERN as APPROVAL_ACTIONS, Click
from bot.gateway import SlackCallFailed, SlackFailure, SlackGateway
from bot.migration_blocks import ACTION_PATTERN as MIGRATION_ACTIONS
from bot.logs import install_log_redaction
from bot.commands import ACTIONS, Command, CommandError, parse

log = logging.getLogger("runbook_bot.slack")

SLASH_COMMAND = "/migrate"
DEFAULT_LISTENER_THREADS = 16
RATE_LIMIT_RETRIES = 2
# 500, 503 from Slack: retried with backoff (slack_sdk's handler), then reported like any failure.
SERVER_ERROR_RETRIES = 2
SLACK_API_URL_ENV = "SLACK_API_URL"
SIGNING_SECRET_ENV = "SLACK_SIGNING_SECRET"

GENERIC_FAILURE = "Something went wrong on the bot's side; it has been logged. Try again, or see `/migrate help`."


class FlowsLike(Protocol):
    """What the Slack side needs from bot.flows.Flows."""

    def submit(self, command: Command, origin: Any) -> None: ...

    def environment_names(self) -> list[str]: ...


class Metrics:
    """Prometheus metrics of the Slack surface, in a registry of their own."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.commands = Counter(
            "runbook_bot_commands", "Slash commands received, by action ('invalid' when rejected)",
            ["action"], registry=self.registry)
        self.requests = Counter(
            "runbook_bot_slack_requests", "Requests from Slack, by kind", ["kind"], registry=self.registry)
        self.ack_seconds = Histogram(
            "runbook_bot_ack_seconds", "From the request entering Bolt's middleware to ack(), by kind",
            ["kind"], registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0))
        self.submit_failures = Counter(
            "runbook_bot_submit_failures", "Commands acked but not accepted by flows.submit",
            registry=self.registry)

    def command(self, action: str) -> None:
        self.commands.labels(action=action if action in ACTIONS else "invalid").inc()


class BotApp(App):
    """A slack_bolt.App that also carries what the transports need."""

    metrics: Metrics
    flows: Any
    settings: Any
    verifies_signatures: bool
    signature_verifier: SignatureVerifier     # bot.http checks every request with it before Bolt parses it
    listener_executor: ThreadPoolExecutor

    def shutdown(self, wait: bool = True) -> None:
        """Stop taking listener work; running listeners finish when `wait`."""
        self.listener_executor.shutdown(wait=wait, cancel_futures=not wait)

    @property
    def registered(self) -> list[tuple[str, Any]]:
        """Every listener registered, as (kind, constraint): ("command", "/migrate"), ("action",
        re.compile("^approval_")), ... The Slack app manifest is generated from it (bot/manifest.py)."""
        return self.__dict__.setdefault("_registered", [])


def _recording(kind: str) -> Any:
    register = getattr(App, kind)

    def recorded(self: BotApp, constraint: Any = "", *args: Any, **kwargs: Any) -> Any:
        self.registered.append((kind, constraint))
        return register(self, constraint, *args, **kwargs)

    recorded.__name__ = recorded.__qualname__ = kind
    recorded.__doc__ = register.__doc__
    return recorded


# Every way to register a listener goes through the record, so the manifest cannot miss one.
LISTENER_KINDS = ("command", "action", "block_action", "shortcut", "global_shortcut", "message_shortcut", "view",
                  "view_submission", "view_closed", "options", "block_suggestion", "event", "message", "function",
                  "attachment_action", "dialog_submission", "dialog_suggestion", "dialog_cancellation")
for _kind in LISTENER_KINDS:
    setattr(BotApp, _kind, _recording(_kind))


# --------------------------------------------------------------------------
# Web API client

def make_client(token: str | None, base_url: str | None = None, *, timeout: int = 30,
                rate_limit_retries: int = RATE_LIMIT_RETRIES) -> WebClient:
    """A WebClient that retries 429s (rule 8), Slack's 5xx and dropped connections (a short Slack outage
    must not leave a request reading "running"), and honours SLACK_API_URL."""
    base_url = base_url or os.environ.get(SLACK_API_URL_ENV) or WebClient.BASE_URL
    if not base_url.endswith("/"):
        base_url += "/"
    handlers = default_retry_handlers() + [RateLimitErrorRetryHandler(max_retry_count=rate_limit_retries),
                                           ServerErrorRetryHandler(max_retry_count=SERVER_ERROR_RETRIES)]
    return WebClient(token=token, base_url=base_url, timeout=timeout, retry_handlers=handlers)


# --------------------------------------------------------------------------
# observation: kind and ack latency, never tokens or bodies

def request_kind(body: Any) -> str:
    if not isinstance(body, dict):
        return "unknown"
    if "command" in body:
        return "slash_command"
    kind = body.get("type")
    if isinstance(kind, str) and re.fullmatch(r"[a-z_]{1,40}", kind):
        return kind
    return "unknown"


class _TimedAck(Ack):
    """Ack that records the latency from the middleware to the first ack() call."""

    def __init__(self, kind: str, started: float, metrics: Metrics, fields: dict[str, str]) -> None:
        super().__init__()
        self._kind, self._started, self._metrics, self._fields = kind, started, metrics, fields

    def __call__(self, *args: Any, **kwargs: Any) -> BoltResponse:
        # Measured and logged before the response is set: once it is, Bolt answers Slack and the
        # request is over, so anything after would race whoever reads the log.
        if self.response is None:
            latency = time.perf_counter() - self._started
            self._metrics.ack_seconds.labels(kind=self._kind).observe(latency)
            log.info("ack kind=%s latency_ms=%.1f %s", self._kind, latency * 1000,
                     " ".join(f"{k}={v}" for k, v in self._fields.items()))
        return super().__call__(*args, **kwargs)


_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def _safe(value: Any) -> str | None:
    """Only ID-shaped values reach the log (never tokens, URLs or free text)."""
    return value if isinstance(value, str) and _SAFE_ID.match(value) and not value.startswith("xox") else None


def _observer(metrics: Metrics):
    def observe_request(request: Any, body: Any, next: Any) -> Any:  # noqa: A002 (bolt injects by this name)
        started = time.perf_counter()
        kind = request_kind(body)
        metrics.requests.labels(kind=kind).inc()
        fields: dict[str, str] = {}
        if isinstance(body, dict):
            command = body.get("command")
            if isinstance(command, str) and re.fullmatch(r"/[a-z0-9_-]{1,32}", command):
                fields["command"] = command
            user, channel = user_and_channel(body)
            for key, value in (("user", user), ("channel", channel)):
                if _safe(value):
                    fields[key] = value
        retry = (request.headers.get("x-slack-retry-num") or [None])[0]
        if _safe(retry) and retry != "0":
            fields["retry"] = retry
        fields["mode"] = "socket" if request.mode == "socket_mode" else "http"
        request.context["ack"] = _TimedAck(kind, started, metrics, fields)
        return next()

    return observe_request


# --------------------------------------------------------------------------
# the app

def _signing_secret(explicit: str | None) -> tuple[str, bool]:
    secret = explicit or os.environ.get(SIGNING_SECRET_ENV)
    if secret:
        return secret, True
    # Socket Mode needs none. A random one makes any HTTP request fail verification,
    # and bot.http refuses to serve an app without a real secret.
    return secrets.token_hex(32), False


def build_app(settings: Any, client: WebClient, flows: FlowsLike, *, signing_secret: str | None = None,
              metrics: Metrics | None = None, listener_threads: int = DEFAULT_LISTENER_THREADS,
              command: str = SLASH_COMMAND) -> BotApp:
    """The Bolt app with every listener registered. No network here (rule 2).

    `signing_secret` defaults to $SLACK_SIGNING_SECRET; without one the app still
    serves Socket Mode, but bot.http.make_wsgi_app refuses it (rule 9).
    """
    install_log_redaction()
    secret, real_secret = _signing_secret(signing_secret)
    metrics = metrics or Metrics()
    executor = ThreadPoolExecutor(max_workers=listener_threads, thread_name_prefix="slack-listener")
    app = BotApp(
        name="runbook-bot",
        client=client,
        signing_secret=secret,
        token_verification_enabled=False,
        request_verification_enabled=True,
        listener_executor=executor,
        before_authorize=_observer(metrics),
        process_before_response=False,
    )
    app.metrics = metrics
    app.flows = flows
    app.settings = settings
    app.verifies_signatures = real_secret
    app.signature_verifier = SignatureVerifier(secret)
    app.listener_executor = executor

    @app.command(command)
    def on_migrate(ack: Ack, body: dict[str, Any], respond: Any, request: BoltRequest) -> None:
        _handle_migrate(app, ack, body, respond, request)

    # Buttons (approvals) register their app.action(...) listeners HERE, before the
    # fallback below: Bolt gives a request to the first listener that matches.
    @app.action(APPROVAL_ACTIONS)
    def on_approval_click(ack: Ack, body: dict[str, Any], respond: Any) -> None:
        ack()  # first: the click is decided on Flows' executor (database, usergroups, chat.update)
        _hand_over_click(app, body, respond, "submit_click", "an approval click")

    # "Back up first" and the recommended action after a failed run or validation (bot/migrations.py).
    @app.action(MIGRATION_ACTIONS)
    def on_migration_click(ack: Ack, body: dict[str, Any], respond: Any) -> None:
        ack()  # first: the click is checked and acted on on Flows' executor
        _hand_over_click(app, body, respond, "submit_migration_click", "a migration button")

    # Fallback: a click nobody handles is still acked (no error icon in Slack) and logged.
    @app.action(re.compile(r".*"))
    def on_unhandled_action(ack: Ack, body: dict[str, Any]) -> None:
        ack()
        action = ((body.get("actions") or [{}])[0] or {}).get("action_id")
        log.warning("block action %s has no handler", _safe(action) or "?")

    # The App Home tab (issue 14 §4). Bolt acks an Events API request before the listener runs
    # (auto-acknowledgement), so nothing here precedes the ack; the Home is read and published on
    # Flows' executor, never on this listener pool.
    @app.event("app_home_opened")
    def on_app_home_opened(event: dict[str, Any]) -> None:
        user = event.get("user")
        if event.get("tab") != "home" or not _safe(user):
            return                         # the Messages tab needs nothing from the bot
        submit = getattr(app.flows, "submit_home", None)
        if submit is None:
            log.warning("the App Home was opened, but these flows publish no Home tab")
            return
        try:
            submit(user)
        except Exception as exc:           # Busy: the Home is simply not refreshed this time
            app.metrics.submit_failures.inc()
            log.warning("the Home tab of %s was not refreshed: %s", user, _refusal(exc) or type(exc).__name__)

    @app.error
    def on_error(error: Exception, body: Any, response: BoltResponse | None, respond: Any = None) -> Any:
        log.error("unhandled error in a Slack listener (%s)", type(error).__name__, exc_info=error)
        if response is not None:
            # not acked yet: answer with one generic line, never the exception
            return BoltResponse(status=200, body=json.dumps({"response_type": "ephemeral", "text": GENERIC_FAILURE}),
                                headers={"content-type": "application/json;charset=utf-8"})
        if respond is not None:
            try:
                respond(text=GENERIC_FAILURE, response_type="ephemeral", replace_original=False)
            except Exception as exc:  # the error path must not raise
                log.warning("could not tell the user about the failure (%s)", type(exc).__name__)
        return None

    return app


def _handle_migrate(app: BotApp, ack: Ack, body: dict[str, Any], respond: Any,
                    request: BoltRequest | None = None) -> None:
    flows = app.flows
    text = body.get("text") or ""
    try:
        command = parse(text, list(flows.environment_names()))
    except CommandError as exc:
        app.metrics.command("invalid")
        message = blocks.error_message(str(exc))
        ack(text=message.text)
        return
    app.metrics.command(command.action)
    origin = make_origin(body, request)
    wrong_channel = None
    if command.action != "help" and getattr(app.settings, "slack", None) is not None:
        from bot.flows import channel_refusal

        wrong_channel = channel_refusal(app.settings, origin.channel_id)
    if command.action == "help":  # answered in the ack itself; the flow only records the event
        ack(**blocks.help_message(ACTIONS).as_kwargs())
    elif wrong_channel is not None:  # said in the ack (the bot may not even be in that channel); Flows records it
        ack(text=blocks.error_message(wrong_channel).text)
    else:
        ack(text=blocks.working_text(command.text))
    try:
        flows.submit(command, origin)
    except Exception as exc:
        _report_submit_failure(app, exc, command.action, respond, origin.response_url)


def _hand_over_click(app: BotApp, body: dict[str, Any], respond: Any, submit_name: str, what: str) -> None:
    """A button click, acked already: parsed without I/O and handed to `flows.<submit_name>` (Flows' executor)."""
    click = Click.of(body)
    submit = getattr(app.flows, submit_name, None)
    if submit is None:
        log.warning("%s (%s), but these flows take no such clicks", what, _safe(click.action_id) or "?")
        return
    try:
        submit(click)
    except Exception as exc:
        _report_submit_failure(app, exc, what, respond, click.response_url)


def _report_submit_failure(app: BotApp, exc: Exception, what: str, respond: Any, response_url: str | None) -> None:
    """Acked, but the work was not accepted: one line to the user by response_url, the cause to the log."""
    app.metrics.submit_failures.inc()
    reason = _refusal(exc)
    if reason is None:
        log.error("flows.submit failed for %s (%s)", what, type(exc).__name__, exc_info=exc)
    else:
        log.warning("flows.submit refused %s: %s", what, reason)
    if respond is not None and response_url:
        try:
            respond(text=blocks.error_message(reason or GENERIC_FAILURE).text, response_type="ephemeral",
                    replace_original=False)
        except Exception as inner:
            log.warning("could not report the refusal (%s)", type(inner).__name__)


def _refusal(exc: Exception) -> str | None:
    """The one-line reason of a deliberate refusal (bot.flows.Busy), meant for the user; else None."""
    busy = getattr(sys.modules.get("bot.flows"), "Busy", None)
    if isinstance(busy, type) and isinstance(exc, busy) and str(exc):
        return blocks.one_line(str(exc), 300)
    return None


def user_and_channel(body: dict[str, Any]) -> tuple[Any, Any]:
    """Slash commands carry user_id/channel_id; interactions carry user/channel objects."""
    user = body.get("user_id")
    if not user and isinstance(body.get("user"), dict):
        user = body["user"].get("id")
    channel = body.get("channel_id")
    if not channel and isinstance(body.get("channel"), dict):
        channel = body["channel"].get("id")
    return user, channel


_SIGNATURE = re.compile(r"^v0=([0-9a-f]{64})$")


def request_key(body: dict[str, Any], request: BoltRequest | None = None) -> str | None:
    """What identifies one delivery of a request: its signature over HTTP (a replay of the same
    signed bytes carries the same one), else its trigger_id (Socket Mode: no signatures)."""
    if request is not None:
        signature = (request.headers.get("x-slack-signature") or [""])[0]
        match = _SIGNATURE.match(signature or "")
        if match:
            return "sig:" + match.group(1)
    trigger = body.get("trigger_id")
    return "trigger:" + trigger[:64] if isinstance(trigger, str) and trigger else None


def make_origin(body: dict[str, Any], request: BoltRequest | None = None) -> Any:
    from bot.origin import Origin

    user, channel = user_and_channel(body)
    return Origin(user_id=user or "", channel_id=channel or None, response_url=body.get("response_url") or None,
                  trigger_id=body.get("trigger_id") or None, source="slack",
                  request_key=request_key(body, request))


def warm_up(app: App) -> dict[str, Any]:
    """Call auth.test once at start-up so no user request waits on it (rule 1).

    Bolt's single-workspace authorization otherwise calls auth.test lazily on the
    first request, before that request's ack.
    """
    result = SlackGateway(app.client).token_identity()
    if isinstance(result, SlackFailure):
        raise SlackCallFailed("Slack's auth.test at start-up", result)
    for middleware in app._middleware_list:  # noqa: SLF001 (documented public class, set its public attribute)
        if isinstance(middleware, SingleTeamAuthorization):
            middleware.auth_test_result = result
    return {k: result.get(k) for k in ("team_id", "user_id", "bot_id")}


__all__ = ["BotApp", "Metrics", "build_app", "make_client", "make_origin", "request_kind", "warm_up",
           "SLASH_COMMAND", "GENERIC_FAILURE"]
