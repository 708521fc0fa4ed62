"""The two transports around one Bolt app (design rules 2 and 9).

HTTP: `make_wsgi_app(app, health=...)` is one WSGI app serving
    POST /slack/events   Slack's slash commands and interactions (signature always verified);
                         503 once the bot is draining (SIGTERM): it takes no new work
    GET  /health         JSON; 200 when health() says ok, else 503 (readiness: also 503 while draining)
    GET  /health?check=live   200 while the process serves at all (liveness: never kills a pod
                         that is draining or waiting for its state database)
    GET  /metrics        Prometheus text
and `serve_http(wsgi_app, host, port)` runs it under waitress (port 0 allowed).

Socket Mode: `socket_mode_handler(app, app_token)` wraps the same app; /health
and /metrics are still served on a small HTTP port (`make_wsgi_app(None, ...)`),
with the websocket's state folded into /health by `socket_mode_health`.
"""
from __future__ import annotations

import io
import json
import logging
import threading
from typing import Any, Callable, Iterable
from urllib.parse import parse_qs

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from slack_bolt import App
from slack_bolt.adapter.socket_mode import SocketModeHandler
from slack_bolt.adapter.wsgi import SlackRequestHandler

from bot.app import BotApp, Metrics

log = logging.getLogger("runbook_bot.http")

EVENTS_PATH = "/slack/events"
MAX_BODY_BYTES = 2 * 1024 * 1024     # Slack's payloads are far smaller; bigger bodies are refused (413)
HealthCheck = Callable[[], "tuple[bool, dict[str, Any]]"]
DRAINING_BODY = b'{"error": "runbook-bot is shutting down; try again in a minute"}'
UNSIGNED_BODY = b'{"error": "invalid or missing request signature"}'


def _always_ok() -> tuple[bool, dict[str, Any]]:
    return True, {}


class WsgiApp:
    """POST /slack/events, GET /health, GET /metrics, 404 for anything else."""

    def __init__(self, app: App | None, *, health: HealthCheck | None = None, metrics: Metrics | None = None,
                 events_path: str = EVENTS_PATH, draining: Callable[[], bool] | None = None) -> None:
        if app is not None:
            if not isinstance(app, BotApp) or not app.verifies_signatures:
                raise ValueError("HTTP mode needs SLACK_SIGNING_SECRET: Slack's requests are always verified")
        self.app = app
        self.slack = SlackRequestHandler(app, path=events_path) if app is not None else None
        self.events_path = events_path
        self.health = health or _always_ok
        self.draining = draining or (lambda: False)
        if metrics is None:
            metrics = app.metrics if isinstance(app, BotApp) else Metrics()
        self.metrics = metrics

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        method = environ.get("REQUEST_METHOD", "GET").upper()
        if path == self.events_path and self.slack is not None:
            if method != "POST":
                return _reply(start_response, 405, b"Method Not Allowed", "text/plain; charset=utf-8",
                              [("Allow", "POST")])
            if self.draining():
                return _reply(start_response, 503, DRAINING_BODY, "application/json", [("Retry-After", "30")])
            if not self._signed(environ):
                return _reply(start_response, 401, UNSIGNED_BODY, "application/json")
            return self.slack(environ, start_response)
        if path == "/health":
            if method not in ("GET", "HEAD"):
                return _reply(start_response, 405, b"Method Not Allowed", "text/plain; charset=utf-8",
                              [("Allow", "GET")])
            if parse_qs(environ.get("QUERY_STRING") or "").get("check") == ["live"]:
                return _reply(start_response, 200, json.dumps({"ok": True, "live": True,
                                                               "draining": bool(self.draining())}).encode(),
                              "application/json", [("Cache-Control", "no-store")])
            return self._health(start_response)
        if path == "/metrics":
            if method not in ("GET", "HEAD"):
                return _reply(start_response, 405, b"Method Not Allowed", "text/plain; charset=utf-8",
                              [("Allow", "GET")])
            return _reply(start_response, 200, generate_latest(self.metrics.registry), CONTENT_TYPE_LATEST)
        return _reply(start_response, 404, b"Not Found", "text/plain; charset=utf-8")

    def _signed(self, environ: dict[str, Any]) -> bool:
        """Verify the signature over the raw bytes before Bolt sees them (rule 9): Bolt parses the
        body first, so a malformed unsigned body would otherwise cost a 500 and a traceback in the
        log each. The bytes read are put back for Bolt, which verifies again."""
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        body = environ["wsgi.input"].read(min(max(length, 0), MAX_BODY_BYTES)) if length > 0 else b""
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        timestamp = environ.get("HTTP_X_SLACK_REQUEST_TIMESTAMP") or ""
        signature = environ.get("HTTP_X_SLACK_SIGNATURE") or ""
        if timestamp and signature and self.app.signature_verifier.is_valid(body, timestamp, signature):
            return True
        self.metrics.requests.labels(kind="unsigned").inc()
        log.warning("refused a request to %s: %s signature (%d bytes)", self.events_path,
                    "no" if not signature else "a bad or stale", len(body))
        return False

    def _health(self, start_response: Callable[..., Any]) -> Iterable[bytes]:
        try:
            ok, details = self.health()
            if self.draining():
                ok, details = False, {**(details or {}), "draining": True}
            payload = {"ok": bool(ok), **(details or {})}
        except Exception as exc:  # a failing check is a 503, never a stack trace
            log.error("health check failed (%s)", type(exc).__name__, exc_info=exc)
            ok, payload = False, {"ok": False, "error": "health check failed"}
        body = json.dumps(payload, default=str, sort_keys=True).encode()
        return _reply(start_response, 200 if ok else 503, body, "application/json",
                      [("Cache-Control", "no-store")])


def _reply(start_response: Callable[..., Any], status: int, body: bytes, content_type: str,
           extra: list[tuple[str, str]] | None = None) -> list[bytes]:
    reason = {200: "OK", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}.get(status, "")
    headers = [("Content-Type", content_type), ("Content-Length", str(len(body)))] + (extra or [])
    start_response(f"{status} {reason}", headers)
    return [body]


def make_wsgi_app(app: App | None, *, health: HealthCheck | None = None, metrics: Metrics | None = None,
                  events_path: str = EVENTS_PATH, draining: Callable[[], bool] | None = None) -> WsgiApp:
    """One WSGI app; `app=None` serves only /health and /metrics (Socket Mode). `draining()` true:
    Slack's requests get 503 and /health says so (503), for the load balancer to stop sending."""
    return WsgiApp(app, health=health, metrics=metrics, events_path=events_path, draining=draining)


class HttpServer:
    """A waitress server; `.port` is the bound port, `.close()` stops it."""

    def __init__(self, server: Any, host: str) -> None:
        self.server = server
        self.host = host
        self.port: int = int(server.effective_port)
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def url(self) -> str:
        host = self.host if self.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
        return f"http://{host}:{self.port}"

    def run(self) -> None:
        """Serve in this thread until close()."""
        self.server.run()

    def start(self) -> "HttpServer":
        self._thread = threading.Thread(target=self.run, name=f"http-{self.port}", daemon=True)
        self._thread.start()
        return self

    def close(self, timeout: float = 5.0) -> None:
        if self._closed:
            return
        self._closed = True
        from waitress import wasyncore

        server = self.server
        server_map = server._map  # noqa: SLF001 (waitress keeps its socket map here)

        def stop_loop() -> None:  # runs on the loop's own thread: no race with poll()
            wasyncore.close_all(server_map)

        if self._thread is not None and self._thread.is_alive():
            try:
                server.trigger.pull_trigger(stop_loop)
            except OSError:
                # the loop woke for another reason and ran stop_loop (closing the trigger)
                # before the wake-up byte was written: it is stopping already
                pass
            self._thread.join(timeout)
        else:
            wasyncore.close_all(server_map)
        server.task_dispatcher.shutdown(timeout=timeout)

    def __enter__(self) -> "HttpServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve_http(wsgi_app: Callable[..., Any], host: str = "127.0.0.1", port: int = 0, *, threads: int = 8,
               background: bool = True) -> HttpServer:
    """waitress on host:port (0 picks a free port); started on a thread when `background`."""
    import waitress

    server = waitress.create_server(wsgi_app, host=host, port=port, threads=threads, ident="runbook-bot",
                                    channel_timeout=30, asyncore_loop_timeout=1, clear_untrusted_proxy_headers=True,
                                    max_request_body_size=MAX_BODY_BYTES)
    wrapped = HttpServer(server, host)
    log.info("HTTP on %s:%s", host, wrapped.port)
    if background:
        wrapped.start()
    return wrapped


# --------------------------------------------------------------------------
# Socket Mode

def socket_mode_handler(app: App, app_token: str, *, concurrency: int = 10,
                        ping_interval: float = 10) -> SocketModeHandler:
    """The built-in slack_sdk Socket Mode client around the same app (not yet connected).

    The xapp token opens the socket through app.client (apps.connections.open, so
    SLACK_API_URL applies); request signatures are not used in this mode.
    """
    if not app_token or not app_token.startswith("xapp-"):
        raise ValueError("Socket Mode needs an app-level token (SLACK_APP_TOKEN, xapp-...)")
    return SocketModeHandler(app, app_token=app_token, concurrency=concurrency, ping_interval=ping_interval)


class BoundedHealth:
    """A health check that answers within `timeout` seconds, whatever the check does.

    A state database that stopped answering (a partition, a black-holed host) can hold a
    connect or a query for minutes: the check runs on its own thread, one at a time, and a caller
    that would wait longer gets a 503 with "timeout". Probes keep coming every few seconds, so
    without this they would pile up on the HTTP server's threads and starve Slack's requests.
    """

    def __init__(self, check: HealthCheck, timeout: float = 3.0, *,
                 on_timeout: dict[str, Any] | None = None) -> None:
        self.check = check
        self.timeout = timeout
        self.on_timeout = on_timeout or {"error": "health check timed out"}
        self._lock = threading.Lock()
        self._probe: _Probe | None = None

    def __call__(self) -> tuple[bool, dict[str, Any]]:
        with self._lock:
            if self._probe is None or self._probe.done.is_set():
                self._probe = _Probe(self.check)
            probe = self._probe
        if not probe.done.wait(self.timeout):
            return False, dict(self.on_timeout)
        return probe.result


class _Probe:
    """One run of a health check on its own thread; `result` once `done` is set."""

    def __init__(self, check: HealthCheck) -> None:
        self.done = threading.Event()
        self.result: tuple[bool, dict[str, Any]] = (False, {"error": "health check failed"})
        threading.Thread(target=self._run, args=(check,), name="health-check", daemon=True).start()

    def _run(self, check: HealthCheck) -> None:
        try:
            self.result = check()
        except Exception as exc:  # reported as a 503, never a stack trace
            log.error("health check failed (%s)", type(exc).__name__, exc_info=exc)
        finally:
            self.done.set()


def socket_mode_health(handler: SocketModeHandler, health: HealthCheck | None = None) -> HealthCheck:
    """`health` plus the websocket: not ok while disconnected."""
    inner = health or _always_ok

    def check() -> tuple[bool, dict[str, Any]]:
        ok, details = inner()
        connected = bool(handler.client.is_connected())
        return ok and connected, {**(details or {}), "socket_mode_connected": connected}

    return check


__all__ = ["BoundedHealth", "EVENTS_PATH", "HttpServer", "WsgiApp", "make_wsgi_app", "serve_http",
           "socket_mode_handler", "socket_mode_health"]
