"""Driving the real Bolt app offline: signed requests, a recording flows, a running bot.

Signed requests sign exactly the bytes they send (HMAC-SHA256 over
"v0:{timestamp}:{body}"), so the bot's RequestVerification runs for real.
`RecordingFlows` stands in for bot.flows.Flows on the Slack-surface tests; give it
`inner=` a real Flows and the same tests run against the engine.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import urlencode

from runbook.config import Settings

SIGNING_SECRET = "test-signing-secret-0123456789abcdef"
BOT_TOKEN = "xoxb-local-test"
APP_TOKEN = "xapp-1-local-test"
TEAM_ID = "T0LOCAL"
USER_ID = "U0TESTER1"
CHANNEL_ID = "C0RUNBOOK1"


def settings(*environments: str, channel: str = CHANNEL_ID, command_channels: list[str] | None = None) -> Settings:
    """A valid Settings with the named environments (default: production); `command_channels`: where
    `/migrate` may be typed besides the default (slack.channel and DMs)."""
    names = environments or ("production",)
    return Settings.model_validate({
        "state_url": "sqlite:///:memory:",
        "slack": {"channel": channel, **({"command_channels": command_channels} if command_channels else {})},
        "environments": {
            name: {"database_url": f"postgresql://runbook@127.0.0.1:1/{name}", "app_dir": str(Path.cwd())}
            for name in names
        },
    })


# --------------------------------------------------------------------------
# signing and posting

def signature_headers(body: bytes, *, timestamp: int | None = None, secret: str = SIGNING_SECRET) -> dict[str, str]:
    ts = str(int(time.time()) if timestamp is None else timestamp)
    digest = hmac.new(secret.encode(), f"v0:{ts}:".encode() + body, hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": f"v0={digest}"}


@dataclass
class HttpAnswer:
    status: int
    headers: dict[str, str]
    body: bytes
    elapsed: float

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.body)


def http_request(url: str, *, data: bytes | None = None, headers: dict[str, str] | None = None,
                 method: str | None = None, timeout: float = 10) -> HttpAnswer:
    request = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
            return HttpAnswer(response.status, {k.lower(): v for k, v in response.headers.items()}, body,
                              time.perf_counter() - started)
    except urllib.error.HTTPError as error:
        body = error.read()
        return HttpAnswer(error.code, {k.lower(): v for k, v in error.headers.items()}, body,
                          time.perf_counter() - started)


def signed_post(url: str, body: bytes, *, timestamp: int | None = None, secret: str = SIGNING_SECRET,
                content_type: str = "application/x-www-form-urlencoded", signature: str | None = None,
                timeout: float = 10) -> HttpAnswer:
    headers = {"Content-Type": content_type, **signature_headers(body, timestamp=timestamp, secret=secret)}
    if signature is not None:
        headers["X-Slack-Signature"] = signature
    return http_request(url, data=body, headers=headers, method="POST", timeout=timeout)


def slash_command_payload(text: str, *, command: str = "/migrate", user_id: str = USER_ID,
                          channel_id: str = CHANNEL_ID, response_url: str | None = None,
                          trigger_id: str | None = None) -> dict[str, str]:
    payload = {
        "token": "legacy-verification-token-unused",
        "team_id": TEAM_ID,
        "team_domain": "local",
        "channel_id": channel_id,
        "channel_name": "runbook",
        "user_id": user_id,
        "user_name": "tester",
        "command": command,
        "text": text,
        "api_app_id": "A0RUNBOOK",
        "is_enterprise_install": "false",
        "trigger_id": trigger_id or f"{int(time.time())}.{uuid.uuid4().int % 10**12}.{uuid.uuid4().hex[:16]}",
    }
    if response_url:
        payload["response_url"] = response_url
    return payload


def slash_command_body(text: str, **kwargs: Any) -> bytes:
    return urlencode(slash_command_payload(text, **kwargs)).encode()


def block_actions_payload(action_id: str, value: str, *, user_id: str = USER_ID, channel_id: str = CHANNEL_ID,
                          message_ts: str = "1700000000.000100", response_url: str | None = None) -> dict[str, Any]:
    return {
        "type": "block_actions",
        "team": {"id": TEAM_ID, "domain": "local"},
        "user": {"id": user_id, "username": "tester", "team_id": TEAM_ID},
        "api_app_id": "A0RUNBOOK",
        "token": "legacy-verification-token-unused",
        "trigger_id": f"{int(time.time())}.1.{uuid.uuid4().hex[:16]}",
        "channel": {"id": channel_id, "name": "runbook"},
        "container": {"type": "message", "message_ts": message_ts, "channel_id": channel_id},
        "message": {"type": "message", "ts": message_ts, "text": "request", "blocks": []},
        "response_url": response_url or "",
        "actions": [{"type": "button", "action_id": action_id, "block_id": "b1", "value": value,
                     "action_ts": f"{time.time():.6f}", "text": {"type": "plain_text", "text": "Approve"}}],
    }


def block_actions_body(action_id: str, value: str, **kwargs: Any) -> bytes:
    return urlencode({"payload": json.dumps(block_actions_payload(action_id, value, **kwargs))}).encode()


# --------------------------------------------------------------------------
# waiting

from tests.support.waiting import wait_for  # noqa: E402,F401  (re-exported for the Slack tests)


# --------------------------------------------------------------------------
# a recording flows

@dataclass
class Submitted:
    command: Any
    origin: Any
    thread: str
    at: float


class RecordingFlows:
    """Records submit() calls; the Flows interface the Slack side uses.

    - `environments`: what environment_names() answers (ignored when `inner` is given);
    - `work`: optional callable(command, origin) run on this object's own executor,
      as the real Flows does with its bounded executor;
    - `inner`: a real bot.flows.Flows to delegate to after recording.
    """

    def __init__(self, environments: list[str] | None = None, *, work: Callable[[Any, Any], None] | None = None,
                 inner: Any = None, fail_with: Exception | None = None) -> None:
        self._environments = list(environments or ["production"])
        self._work = work
        self._inner = inner
        self._fail_with = fail_with
        self._cond = threading.Condition()
        self.submitted: list[Submitted] = []
        self.homes: list[Submitted] = []          # submit_home(user_id): Submitted(None, user_id, ...)
        self.finished: list[Any] = []
        self.executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="recording-flows")

    def environment_names(self) -> list[str]:
        if self._inner is not None:
            return list(self._inner.environment_names())
        return list(self._environments)

    def submit(self, command: Any, origin: Any) -> None:
        with self._cond:
            self.submitted.append(Submitted(command, origin, threading.current_thread().name, time.monotonic()))
            self._cond.notify_all()
        if self._fail_with is not None:
            raise self._fail_with
        if self._inner is not None:
            self._inner.submit(command, origin)
        if self._work is not None:
            self.executor.submit(self._run, command, origin)

    def submit_home(self, user_id: str) -> None:
        """`app_home_opened` for `user_id` (bot.flows.Flows.submit_home)."""
        with self._cond:
            self.homes.append(Submitted(None, user_id, threading.current_thread().name, time.monotonic()))
            self._cond.notify_all()
        if self._inner is not None:
            self._inner.submit_home(user_id)

    def wait_for_home(self, count: int = 1, timeout: float = 5.0) -> list[Submitted]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.homes) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"flows.submit_home called {len(self.homes)} times, expected {count}")
                self._cond.wait(left)
            return list(self.homes)

    def _run(self, command: Any, origin: Any) -> None:
        self._work(command, origin)
        with self._cond:
            self.finished.append(command)
            self._cond.notify_all()

    def wait_for_submit(self, count: int = 1, timeout: float = 5.0) -> list[Submitted]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.submitted) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"flows.submit called {len(self.submitted)} times, expected {count}")
                self._cond.wait(left)
            return list(self.submitted)

    def wait_for_finished(self, count: int = 1, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.finished) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("background work did not finish")
                self._cond.wait(left)

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)


# --------------------------------------------------------------------------
# the bot under test: production factory, production WSGI app, real HTTP server

@dataclass
class RunningBot:
    app: Any
    client: Any
    server: Any
    flows: Any
    health_state: dict[str, Any] = field(default_factory=lambda: {"ok": True, "details": {"state_db": "ok"}})

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def events_url(self) -> str:
        return self.server.url + "/slack/events"

    def command(self, text: str, **kwargs: Any) -> HttpAnswer:
        """A correctly signed `/migrate <text>`."""
        return signed_post(self.events_url, slash_command_body(text, **kwargs))


@contextmanager
def running_bot(local_slack: Any, flows: Any, *, environments: tuple[str, ...] = ("production",),
                warm: bool = True, signing_secret: str = SIGNING_SECRET,
                command_channels: list[str] | None = None) -> Iterator[RunningBot]:
    from bot.app import build_app, make_client, warm_up
    from bot.http import make_wsgi_app, serve_http

    client = make_client(BOT_TOKEN, base_url=local_slack.url)
    app = build_app(settings(*environments, command_channels=command_channels), client, flows,
                    signing_secret=signing_secret)
    state: dict[str, Any] = {"ok": True, "details": {"state_db": "ok"}}
    if warm:
        warm_up(app)
    wsgi = make_wsgi_app(app, health=lambda: (state["ok"], state["details"]))
    server = serve_http(wsgi, "127.0.0.1", 0)
    bot = RunningBot(app, client, server, flows, state)
    try:
        yield bot
    finally:
        server.close()
        app.shutdown(wait=True)


# --------------------------------------------------------------------------
# fixtures (import them into a test module to use them)

import pytest  # noqa: E402


@pytest.fixture
def local_slack(request):
    from bot.localslack import LocalSlack

    # The bot was invited where the README's set-up says: the configured channel (a test module's
    # own CHANNEL when it configures one) and the channel its commands are typed in; nowhere else.
    joined = {CHANNEL_ID, getattr(request.module, "CHANNEL", CHANNEL_ID)}
    with LocalSlack(joined=tuple(joined)) as slack:
        yield slack


@pytest.fixture
def log_lines():
    """Every log line of the test as the bot's redacting handler writes it (a StringIO)."""
    import io
    import logging

    from bot.logs import install_redacting_handler

    stream = io.StringIO()
    handler = install_redacting_handler(None, logging.DEBUG, stream=stream)
    yield stream
    logging.getLogger().removeHandler(handler)


REAL_FLOWS_ENV = "RUNBOOK_SLACK_TESTS_FLOWS"


def real_flows(local_slack: Any, state_dir: Path, *environments: str,
               command_channels: list[str] | None = None) -> RecordingFlows:
    """A RecordingFlows around the engine's bot.flows.Flows, posting to `local_slack`."""
    from bot.app import make_client
    from bot.flows import Flows, Redactor
    from runbook.state import Store

    config = settings(*environments, command_channels=command_channels).model_copy(update={"state_url": f"sqlite:///{state_dir / 'state.db'}"})
    store = Store(config.state_url)
    store.migrate()
    engine = Flows(config, store, make_client(BOT_TOKEN, local_slack.url), redactor=Redactor(config))
    recorder = RecordingFlows(inner=engine)
    closing = recorder.close

    def close() -> None:
        closing()
        engine.shutdown(wait=True)
        store.close()

    recorder.close = close  # type: ignore[method-assign]
    return recorder


@pytest.fixture
def flows(local_slack, tmp_path):
    """The flows the Slack surface talks to: a recorder by default; with
    RUNBOOK_SLACK_TESTS_FLOWS=real, the engine's Flows behind the same recorder."""
    import os

    if os.environ.get(REAL_FLOWS_ENV) == "real":
        recorder = real_flows(local_slack, tmp_path)
    else:
        recorder = RecordingFlows(["production"])
    yield recorder
    recorder.close()
