"""Connections to a target database: timeouts, application_name, DSN redaction.

Every connection the bot opens names itself `runbook-bot/<purpose>` so the
checks can leave the bot's own sessions out of what they report.
"""
from __future__ import annotations

import os
import socket
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import psycopg

# The DSN text helpers live apart so the state store can redact without importing psycopg.
from runbook.dsn import describe, password_of, redact, without_password  # noqa: F401

APPLICATION_PREFIX = "runbook-bot"

# Monitoring and validation queries must never queue behind a lock themselves.
MONITOR_STATEMENT_TIMEOUT = "5s"
MONITOR_LOCK_TIMEOUT = "100ms"

# TCP keepalives on every connection: a peer that vanished (a partition, a dead host) is noticed
# within idle + interval * count = 25 s instead of the kernel's two hours. Ignored on unix sockets.
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3}


class TargetError(Exception):
    """The target database could not be reached or answered with an error; the text is redacted."""


def application_name(purpose: str) -> str:
    return f"{APPLICATION_PREFIX}/{purpose}"


@dataclass(frozen=True)
class Target:
    """Where and how to connect; built from an Environment by the caller."""

    dsn: str
    connect_timeout: float = 5.0

    @property
    def label(self) -> str:
        return describe(self.dsn)

    def scrub(self, text: str) -> str:
        return redact(text, password_of(self.dsn))

    @contextmanager
    def connect(
        self,
        purpose: str,
        *,
        statement_timeout: str = MONITOR_STATEMENT_TIMEOUT,
        lock_timeout: str = MONITOR_LOCK_TIMEOUT,
        autocommit: bool = True,
        deadline_seconds: float | None = None,
    ) -> Iterator[psycopg.Connection]:
        """A short-lived connection with its own timeouts; errors become redacted TargetErrors.

        `deadline_seconds`: how long the block may use the connection once connected. statement_timeout
        is the server's and a server that never sees the query (a partition after the handshake)
        never enforces it, so past the deadline the connection is abandoned from this side: its
        socket is shut down, the statement in flight fails at once, and the block gets a
        TargetError saying so. It also sets tcp_user_timeout, so unacknowledged writes give up too.
        """
        options = f"-c statement_timeout={statement_timeout} -c lock_timeout={lock_timeout}"
        limits: dict[str, int] = dict(KEEPALIVES)
        if deadline_seconds is not None:
            limits["tcp_user_timeout"] = max(1000, round(deadline_seconds * 1000))
        try:
            conn = psycopg.connect(
                self.dsn,
                connect_timeout=max(1, round(self.connect_timeout)),
                application_name=application_name(purpose),
                options=options,
                autocommit=autocommit,
                **limits,
            )
        except psycopg.Error as exc:
            raise TargetError(f"cannot connect to {self.label}: {self._reason(exc)}") from None
        watchdog = _Watchdog(conn, deadline_seconds) if deadline_seconds is not None else None
        try:
            yield conn
        except psycopg.Error as exc:
            if watchdog is not None and watchdog.fired:
                raise TargetError(f"{self.label}: no answer within {deadline_seconds:g} s "
                                  "(connection abandoned by the client)") from None
            raise TargetError(f"{self.label}: {self._reason(exc)}") from None
        finally:
            if watchdog is not None:
                watchdog.stop()
            conn.close()

    def _reason(self, exc: psycopg.Error) -> str:
        text = str(exc).strip().splitlines()
        first = next((line for line in text if line.strip()), exc.__class__.__name__)
        return self.scrub(first.strip())


class _Watchdog:
    """Shuts a connection's socket down when its deadline passes.

    shutdown() on a duplicate of the socket's descriptor wakes whoever waits on it (libpq sees the
    connection end and psycopg raises) without closing the descriptor under that thread's feet;
    the connection itself is closed by its owner as usual. `stop()` and the timer share a lock, so
    the socket is never touched once its owner has moved on to closing it.
    """

    def __init__(self, conn: psycopg.Connection, seconds: float) -> None:
        self.conn = conn
        self.fd = conn.pgconn.socket          # read now, in the owner's thread
        self.fired = False
        self._lock = threading.Lock()
        self._stopped = False
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        with self._lock:
            if self._stopped or self.conn.closed:
                return
            self.fired = True
            try:
                with socket.socket(fileno=os.dup(self.fd)) as sock:
                    sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
        self._timer.cancel()
