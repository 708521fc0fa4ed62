"""The running bot: state store, Web API client, flows, the Bolt app, and its transports.

`Runtime.build` is what `runbook-bot serve`, the console demo and the tests use,
so all three run exactly the same wiring.
"""
from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Any

from runbook.config import ConfigError, Settings
from runbook.state import Store

log = logging.getLogger(__name__)

APPROVALS_EXPIRY_SECONDS = 30
# /health answers within this, even when the state database hangs (bot.http.BoundedHealth).
HEALTH_TIMEOUT_SECONDS = 3.0
# How often a running bot looks for runs another replica left behind when it died (their heartbeat
# goes stale after runbook.state.runs.STALE_AFTER_SECONDS).
RUNS_REAPER_SECONDS = 30
# How often one replica (the scheduler's leader, one claim per slot) brings every stored message that is
# behind the state database up to date: updates Slack lost (an outage) are made again (issue 13 §3).
RECONCILE_SECONDS = 30
RECONCILE_JOB = "messages-reconcile"
# A row changed this recently is left to whoever changed it: it is still updating its message.
RECONCILE_SETTLE_SECONDS = 30.0


@dataclass
class Runtime:
    settings: Settings
    store: Store
    client: Any
    flows: Any
    app: Any
    scheduler: Any = None       # bot.scheduler.WatchScheduler, started by serve() (start_scheduler)
    # Set on SIGTERM (bot/shutdown.py): /health and Slack's requests answer 503 from then on.
    draining: threading.Event = field(default_factory=threading.Event)

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
        reaped = cls._reap_interrupted_runs(store, settings)
        cls._sweep_interrupted_backups(settings, store)
        cls._drop_rehearsal_leftovers(settings, store)
        client = make_client(token, api_url or os.environ.get("SLACK_API_URL"))
        redactor = Redactor(settings, extra_secrets=known_secrets(settings) + (token, signing_secret or ""))
        flows = Flows(settings, store, client, redactor=redactor, max_workers=workers)
        flows.migrations.announce_interrupted(reaped)      # posted once: only the reaper sees them
        flows.migrations.follow_up_left_after_run()
        cls._close_not_started(flows)
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
        # A replica that died mid-run is noticed by the others too, and said once (conditional reap).
        self.scheduler.every("runs-reaper", RUNS_REAPER_SECONDS, self.reap_interrupted_runs)
        # Messages Slack did not take (a 5xx outage past the client's retries) catch up with the database.
        self.scheduler.every(RECONCILE_JOB, RECONCILE_SECONDS, self.reconcile_messages)

    def reap_interrupted_runs(self) -> list[Any]:
        """Runs whose process died: marked interrupted (never resumed), posted once by whoever reaped them;
        requests whose run finished but whose process died before closing them, closed as the run ended;
        approved requests whose execution never started, closed."""
        reaped = self._reap_interrupted_runs(self.store, self.settings)
        self.flows.migrations.announce_interrupted(reaped)
        self.flows.migrations.follow_up_left_after_run()
        self._close_not_started(self.flows)
        self._sweep_interrupted_backups(self.settings, self.store)
        return reaped

    @staticmethod
    def _close_not_started(flows: Any) -> list[str]:
        """Approved requests whose process died before their run started (runbook.state.approvals decides):
        closed in place, once. Never raises: it runs at start and on the reaper's tick."""
        try:
            return flows.approvals.close_not_started()
        except Exception as exc:  # the next tick retries
            log.error("closing approved requests that never started failed: %s", flows.redactor(repr(exc)))
            return []

    def reconcile_messages(self, *, slot: Any = None, settle_seconds: float = RECONCILE_SETTLE_SECONDS) -> Any:
        """One replica per slot (the scheduler's leader, then a job_claims row): every stored message whose
        row changed since it was last rendered is updated by its stored ts (Flows.reconcile). None when
        another replica has the slot."""
        from bot.watch import replica_identity, slot_of
        from runbook.state.models import utcnow
        from runbook.watch import AlertBook

        leader = getattr(self.scheduler, "leader", None)
        if leader is not None and not leader.is_leader():
            return None
        slot = slot or slot_of(utcnow(), RECONCILE_SECONDS)
        if not AlertBook(self.store).claim(RECONCILE_JOB, slot, replica_identity()):
            return None
        return self.flows.reconcile(settle_seconds=settle_seconds)

    @staticmethod
    def _reap_interrupted_runs(store: Store, settings: Settings | None = None) -> list[Any]:
        """Runs whose process died are marked interrupted (with an event), never resumed (issue 4). A
        rehearsal's copy is dropped instead (issue 16): it touched no target, so nothing is announced."""
        from runbook import rehearse
        from runbook.state.runs import RunStore

        reaped = RunStore(store).reap()
        for run in reaped:
            log.warning("%s run %s on %s was interrupted: %s", run.kind, run.id, run.environment, run.summary)
        rehearsals = [run for run in reaped if run.kind == rehearse.KIND]
        if rehearsals and settings is not None:
            try:
                for dropped in rehearse.drop_scratch_of(settings, rehearsals):
                    log.warning("dropped %s, the copy of an interrupted rehearsal", dropped)
            except Exception as exc:   # a rehearsal server that is down must not stop the bot; the next start retries
                log.error("could not drop the copies of interrupted rehearsals: %s", type(exc).__name__)
        return [run for run in reaped if run.kind != rehearse.KIND]

    @staticmethod
    def _drop_rehearsal_leftovers(settings: Settings, store: Store) -> None:
        """At start: every rbrehearse_* database whose rehearsal is no longer running (issue 16)."""
        from runbook import rehearse

        try:
            for dropped in rehearse.drop_leftovers(settings, store):
                log.warning("dropped %s, the copy of a rehearsal that is no longer running", dropped)
        except Exception as exc:
            log.error("could not look for leftover rehearsal copies: %s", type(exc).__name__)

    @staticmethod
    def _sweep_interrupted_backups(settings: Settings, store: Store) -> list[int]:
        """Backups whose process died mid-dump: failed, their partial archives removed (runbook.backup)."""
        from runbook.backup import sweep_interrupted

        swept: list[int] = []
        for name, env in settings.environments.items():
            try:
                found = sweep_interrupted(name, env, store)
            except Exception as exc:  # the reaper must keep going; the next tick retries
                log.error("sweeping %s's interrupted backups failed: %s", name, type(exc).__name__)
                continue
            if found:
                log.warning("backup(s) %s of %s were interrupted: marked failed, partial archives removed",
                            ", ".join(f"#{i}" for i in found), name)
            swept += found
        return swept

    def stop_scheduler(self) -> None:
        """No scheduled run starts any more; the leader's session closes, and its advisory lock with it."""
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=True)

    def health(self) -> tuple[bool, dict[str, Any]]:
        ok = self.store.ping()
        return ok, {"state_database": "ok" if ok else "unreachable"}

    def bounded_health(self):
        from bot.http import BoundedHealth

        return BoundedHealth(self.health, HEALTH_TIMEOUT_SECONDS, on_timeout={"state_database": "timeout"})

    def wsgi(self, *, with_events: bool = True):
        from bot.http import make_wsgi_app

        return make_wsgi_app(self.app if with_events else None, health=self.bounded_health(),
                             metrics=self.app.metrics, draining=self.draining.is_set)

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
    """`runbook-bot serve`: blocks until SIGTERM/SIGINT, then shuts down gracefully (bot/shutdown.py)."""
    from bot.shutdown import Signals, drain, exit_now, grace_seconds

    signing_secret = os.environ.get("SLACK_SIGNING_SECRET")
    if mode == "http" and not signing_secret:
        raise ConfigError("SLACK_SIGNING_SECRET is not set: HTTP mode verifies every request's signature")
    app_token = os.environ.get("SLACK_APP_TOKEN")
    if mode == "socket" and not app_token:
        raise ConfigError("SLACK_APP_TOKEN is not set: Socket Mode needs an xapp- token with connections:write")
    grace = grace_seconds()
    runtime = Runtime.build(settings, signing_secret=signing_secret)
    try:
        runtime.start_scheduler()
    except Exception:
        runtime.close()
        raise
    signals = Signals().install()
    handler = None
    try:
        if mode == "http":
            server = runtime.serve_http(host, port, background=True)
            log.info("serving Slack requests on http://%s:%s/slack/events", host, server.port)
        else:
            from bot.http import make_wsgi_app, serve_http, socket_mode_handler, socket_mode_health

            handler = socket_mode_handler(runtime.app, app_token)
            handler.connect()
            server = serve_http(make_wsgi_app(None, health=socket_mode_health(handler, runtime.bounded_health()),
                                              metrics=runtime.app.metrics, draining=runtime.draining.is_set),
                                host, port, background=True)
            log.info("Socket Mode connected; /health and /metrics on port %s", server.port)
        signals.stop.wait()
        log.info("stopping: no new work; running work has %g s to finish", grace)
        runtime.draining.set()
        if handler is not None:
            handler.close()           # Slack sends to the other connections from now on
        drained = drain(runtime, grace, signals.hurry)
        server.close()
        if not drained.finished:
            exit_now(0)               # the interrupted work's threads would hold the interpreter's exit
    finally:
        runtime.close()
    return 0
