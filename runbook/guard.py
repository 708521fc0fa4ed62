"""One operation at a time on a target: a session-level advisory lock (design rule 13).

Backups, restores and migrations (backup -> migrate -> validate) all take the same lock,
on a dedicated autocommit connection that lives as long as the operation: a session lock
survives the commits an operation makes elsewhere, and it is released when the
connection closes, so a crashed bot never leaves it behind.

    with guard.exclusive(target, "production", "backup") as held:
        ...                              # held.conn is the lock's own connection: leave it alone
        backup(..., lock=held)           # nested steps reuse the lock instead of taking it again

A second caller waits at most `wait_seconds` (polling pg_try_advisory_lock), then gets
OperationRunning: "another backup is running on production (pid 4242, 12 s)".
Advisory locks are scoped to one database, so the key is one constant.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import psycopg

from runbook.target import APPLICATION_PREFIX, Target, TargetError

# 64-bit key: the first 8 bytes of "RBOT-OPS" read as a signed integer; written as two int4 halves
# in pg_locks (classid = high, objid = low, objsubid = 1), which is how `holder` finds it.
OPERATION_LOCK_KEY = int.from_bytes(b"RBOT-OPS", "big", signed=True)
_KEY_HIGH = (OPERATION_LOCK_KEY >> 32) & 0xFFFFFFFF
_KEY_LOW = OPERATION_LOCK_KEY & 0xFFFFFFFF
LOCK_PURPOSE_PREFIX = "lock:"
DEFAULT_WAIT_SECONDS = 5.0


class OperationRunning(Exception):
    """Another backup, restore or migration holds the lock; one line naming it."""


@dataclass(frozen=True)
class LockHolder:
    pid: int
    operation: str          # "backup", "restore", "migrate", ... or "unknown" for a foreign holder
    application: str
    seconds: float          # how long the holder's session has held its current state


@dataclass
class Held:
    """The lock, held: its connection must stay open and unused until the operation ends."""

    conn: psycopg.Connection
    target: Target
    environment: str
    operation: str
    acquired_at: float


HOLDER_SQL = """
SELECT l.pid, coalesce(a.application_name, ''),
       extract(epoch FROM now() - coalesce(a.state_change, a.backend_start))::float8
  FROM pg_locks l
  LEFT JOIN pg_stat_activity a ON a.pid = l.pid
 WHERE l.locktype = 'advisory' AND l.granted
   AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
   AND l.classid = %(high)s::oid AND l.objid = %(low)s::oid AND l.objsubid = 1
 LIMIT 1
"""


def holder(conn: psycopg.Connection) -> LockHolder | None:
    """Who holds the operation lock on this database now (for refusals and /status), or None."""
    row = conn.execute(HOLDER_SQL, {"high": _KEY_HIGH, "low": _KEY_LOW}).fetchone()
    if row is None:
        return None
    pid, application, seconds = row
    prefix = f"{APPLICATION_PREFIX}/{LOCK_PURPOSE_PREFIX}"
    operation = application[len(prefix):] if application.startswith(prefix) else "unknown"
    return LockHolder(pid=pid, operation=operation or "unknown", application=application,
                      seconds=float(seconds or 0))


def describe_holder(found: LockHolder | None, environment: str) -> str:
    if found is None:
        return f"another backup, restore or migration is running on {environment}"
    what = found.operation if found.operation != "unknown" else "backup, restore or migration"
    return f"another {what} is running on {environment} (pid {found.pid}, {found.seconds:.0f} s)"


@contextmanager
def exclusive(target: Target, environment: str, operation: str, *,
              wait_seconds: float | None = None, poll_seconds: float = 0.1) -> Iterator[Held]:
    """Hold the operation lock for the body; OperationRunning after `wait_seconds` (default
    DEFAULT_WAIT_SECONDS); TargetError if unreachable."""
    wait_seconds = DEFAULT_WAIT_SECONDS if wait_seconds is None else wait_seconds
    with target.connect(LOCK_PURPOSE_PREFIX + operation, statement_timeout="10s") as conn:
        deadline = time.monotonic() + wait_seconds
        while True:
            got = conn.execute("SELECT pg_try_advisory_lock(%s)", [OPERATION_LOCK_KEY]).fetchone()[0]
            if got:
                break
            if time.monotonic() >= deadline:
                found = holder(conn)
                raise OperationRunning(describe_holder(found, environment)
                                       + "; try again when it has finished")
            time.sleep(poll_seconds)
        held = Held(conn=conn, target=target, environment=environment, operation=operation,
                    acquired_at=time.monotonic())
        try:
            yield held
        finally:
            try:
                conn.execute("SELECT pg_advisory_unlock(%s)", [OPERATION_LOCK_KEY])
            except psycopg.Error:
                pass  # the connection is going away: closing it releases the lock anyway


def current_holder(target: Target) -> LockHolder | None:
    """The holder seen from a short monitoring connection (TargetError when unreachable)."""
    with target.connect("status") as conn:
        return holder(conn)


__all__ = ["OperationRunning", "LockHolder", "Held", "exclusive", "holder", "current_holder",
           "describe_holder", "OPERATION_LOCK_KEY", "TargetError"]
