"""The running bot: state store, Web API client, flows, the Bolt app, and its transports.

`Runtime.build` is what `runbook-bot serve`, the console demo and the tests use,
so all three run exactly the same wiring.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
from dataclasses import dataclass
from typing import Any

from runbook.config import ConfigError, Settings
from runbook.state import Store

log = logging.getLogger(__name__)

APPROVALS_EXPIRY_SECONDS = 30


@dataclass
class Runtime:
    settings: Settings
    store: Store
    client: Any
    flows: Any
    app: Any
    scheduler: Any = None       # bot.scheduler.WatchScheduler, started by serve() (start_scheduler)

    @classmethod
    def build(cls, settings: Settings, *, bot_token: str | None = None, api_url: str | None = None,
              signing_secret: str | None = None, workers: int = 4, warm: bool = True) -> "Runtime":
        """`warm` makes the one auth.test call now, so no user request ever waits for it (rule 1)."""
        from bot.app import build_app, make_client, warm_up
        from bot.flows import Flows, Redactor
        from bot.logs import known_secrets

        token = bot_token or os.environ.get("SLACK_BOT_TOKEN")
        if not token:
            raise ConfigError("SLACK_BOT_TOKEN is not set: the bot needs its xoxb- token to post messages")
        store = Store(settings.state_url)
        store.migrate()
        cls._reap_interrupted_runs(store)
        client = make_client(token, api_url or os.environ.get("SLACK_API_URL"))
        redactor = Redactor(settings, extra_secrets=known_secrets(settings) + (token, signing_secret or ""))
        flows = Flows(settings, store, client, redactor=redactor, max_workers=workers)
        app = build_app(settings, client, flows, signing_secret=signing_secret)
        if warm:
            warm_up(app)
        return cls(settings, store, client, flows, app, scheduler=cls._watch(settings, store, client, redactor, app))

    @staticmethod
    def _watch(settings: Settings, store: Store, client: Any, redactor: Any, app: Any) -> Any:
        """The watch's scheduler (issue 5), built here and started only by `start_scheduler`."""
        from bot.scheduler import WatchScheduler
        from bot.watch import WatchMetrics, WatchRunner

        runner = WatchRunner(settings, store, client, redactor=redactor, metrics=WatchMetrics(app.metrics.registry))
        return WatchScheduler(settings, runner)

    def start_scheduler(self) -> None:
        """Start the watch; raises bot.scheduler.SchedulerRefused (one line) when another owns it."""
        if self.settings.slack is None:
            log.warning("slack.channel is not configured: the watch has nowhere to send alerts and is not started")
            return
        self.scheduler.start()
        # Pending approvals past their time turn "expired" (and lose their buttons) within a minute.
        self.scheduler.every("approvals-expiry", APPROVALS_EXPIRY_SECONDS, self.flows.approvals.expire_due)

    @staticmethod
    def _reap_interrupted_runs(store: Store) -> list[Any]:
        """Runs whose process died are marked interrupted (with an event), never resumed (issue 4)."""
        from runbook.state.runs import RunStore

        reaped = RunStore(store).reap()
        for run in reaped:
            log.warning("%s run %s on %s was interrupted: %s", run.kind, run.id, run.environment, run.summary)
        return reaped

    def health(self) -> tuple[bool, dict[str, Any]]:
        ok = self.store.ping()
        return ok, {"state_database": "ok" if ok else "unreachable"}

    def wsgi(self, *, with_events: bool = True):
        from bot.http import make_wsgi_app

        return make_wsgi_app(self.app if with_events else None, health=self.health, metrics=self.app.metrics)

    def serve_http(self, host: str, port: int, *, background: bool = False):
        from bot.http import serve_http

        return serve_http(self.wsgi(), host, port, background=background)

    def close(self) -> None:
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=True)
        self.flows.shutdown(wait=True)
        shutdown = getattr(self.app, "shutdown", None)
        if callable(shutdown):
            shutdown(wait=False)
        self.store.close()


def serve(settings: Settings, *, mode: str, host: str, port: int) -> int:
    """`runbook-bot serve`: blocks until SIGTERM/SIGINT."""
    signing_secret = os.environ.get("SLACK_SIGNING_SECRET")
    if mode == "http" and not signing_secret:
        raise ConfigError("SLACK_SIGNING_SECRET is not set: HTTP mode verifies every request's signature")
    app_token = os.environ.get("SLACK_APP_TOKEN")
    if mode == "socket" and not app_token:
        raise ConfigError("SLACK_APP_TOKEN is not set: Socket Mode needs an xapp- token with connections:write")
    runtime = Runtime.build(settings, signing_secret=signing_secret)
    try:
        runtime.start_scheduler()
    except Exception:
        runtime.close()
        raise
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        if mode == "http":
            server = runtime.serve_http(host, port, background=True)
            log.info("serving Slack requests on http://%s:%s/slack/events", host, server.port)
            stop.wait()
            server.close()
        else:
            from bot.http import socket_mode_handler, socket_mode_health, make_wsgi_app, serve_http

            handler = socket_mode_handler(runtime.app, app_token)
            handler.connect()
            side = serve_http(make_wsgi_app(None, health=socket_mode_health(handler, runtime.health),
                                            metrics=runtime.app.metrics), host, port, background=True)
            log.info("Socket Mode connected; /health and /metrics on port %s", side.port)
            stop.wait()
            handler.close()
            side.close()
    finally:
        runtime.close()
    return 0
