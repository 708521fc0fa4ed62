"""The few state-store calls a CLI precheck makes, through the database driver alone (issue 18).

Loading SQLAlchemy and the state models costs a fresh process about 0.25 s of CPU, more than the
precheck's own work and as much as a third of the app's Alembic render it runs beside; on two
cores that CPU slows the render, and a warm precheck waited for it outright. A precheck needs
only: is the schema at head, is any run left `running` (to reap), the newest events of one action,
the newest verified full backup, and one event appended. When the store is an existing SQLite
file or a PostgreSQL database at head with no run to reap, runbook.state.sidecar answers these
here with sqlite3 or psycopg; otherwise (a first start, a schema to migrate, a run to reap, a
URL this module does not read) `LeanStore.open` returns None and the sidecar uses the real Store.

It writes what Store.record writes, in the same form (SQLite: SQLAlchemy's text datetimes, JSON
as json.dumps; PostgreSQL: timestamptz, json), and tests/test_state_lean.py reads each side's
rows back through the other.
"""
from __future__ import annotations

import json
import os
import re
from datetime import datetime
from typing import Any, Callable

from runbook.dsn import libpq_url, redact
from runbook.state.records import HEAD, RUNNING, VERSION_TABLE, Event, StateError, as_utc, utcnow

_EVENT_COLUMNS = "id, at, actor, action, environment, outcome, summary, details, run_id"
_SQLITE_URL = re.compile(r"^sqlite:///(?P<path>[^?]+)$")
_POSTGRES_URL = re.compile(r"^postgres(ql)?(\+psycopg)?://")


class LeanStore:
    """An open connection to a state database at head with no run to reap."""

    def __init__(self, conn, *, sqlite: bool, closing: Callable[[], None]):
        self._conn, self.sqlite, self._close = conn, sqlite, closing
        self._mark = "?" if sqlite else "%s"

    @classmethod
    def open(cls, url: str) -> "LeanStore | None":
        """The store through its driver, or None when the real Store must open it (see the module's
        docstring). StateError (one redacted line, Store's words) when a PostgreSQL state database
        cannot be reached: trying again through SQLAlchemy would only wait as long once more."""
        found = _SQLITE_URL.match(url)
        if found:
            lean = cls._sqlite_store(found["path"])
        elif _POSTGRES_URL.match(url):
            lean = cls._postgres_store(url)
        else:
            return None
        if lean is None:
            return None
        try:
            if lean._ready():
                return lean
        except Exception:  # noqa: BLE001 - whatever is odd about it, the real Store decides and says
            pass
        lean.close()
        return None

    @classmethod
    def _sqlite_store(cls, path: str) -> "LeanStore | None":
        import sqlite3

        if path == ":memory:" or not os.path.isfile(path):
            return None                 # created (and its directory) by Store.migrate
        try:
            conn = sqlite3.connect(path, timeout=5.0, isolation_level=None)
            # As Store's connections (runbook.state.store._sqlite_pragmas) are set up.
            for pragma in ("PRAGMA journal_mode=WAL", "PRAGMA busy_timeout=5000", "PRAGMA foreign_keys=ON"):
                conn.execute(pragma)
        except sqlite3.Error:
            return None
        return cls(conn, sqlite=True, closing=conn.close)

    @classmethod
    def _postgres_store(cls, url: str) -> "LeanStore | None":
        import psycopg

        try:
            conn = psycopg.connect(libpq_url(url), application_name="runbook-bot/state", autocommit=True)
        except psycopg.OperationalError as exc:
            first = str(exc).strip().splitlines()
            raise StateError(f"cannot open the state database: {redact(first[0] if first else '')}") from None
        except (psycopg.Error, ValueError):
            return None
        return cls(conn, sqlite=False, closing=conn.close)

    def _ready(self) -> bool:
        """At head, and no run `running` (reaping one is RunStore's work, with its events)."""
        versions = [row[0] for row in self._conn.execute(f"SELECT version_num FROM {VERSION_TABLE}")]
        if versions != [HEAD]:
            return False
        running = self._conn.execute(f"SELECT count(*) FROM runs WHERE state = {self._mark}", (RUNNING,))
        return running.fetchone()[0] == 0

    # -- what the sidecar answers -----------------------------------------------------------------

    def events(self, *, environment: str | None = None, action: str | None = None, limit: int = 50) -> list[Event]:
        """As Store.events: newest first."""
        where, params = [], []
        for column, value in (("environment", environment), ("action", action)):
            if value is not None:
                where.append(f"{column} = {self._mark}")
                params.append(value)
        sql = (f"SELECT {_EVENT_COLUMNS} FROM events" + (" WHERE " + " AND ".join(where) if where else "")
               + f" ORDER BY id DESC LIMIT {self._mark}")
        rows = self._read(sql, (*params, int(limit)))
        return [Event(row[0], self._datetime(row[1]), row[2], row[3], row[4], row[5], row[6],
                      dict(self._json(row[7]) or {}), row[8]) for row in rows]

    def last_backup_at(self, environment: str) -> datetime | None:
        """As runbook.state.backups.last_backup_at: the newest verified full backup's end."""
        rows = self._read(f"SELECT finished_at FROM backups WHERE environment = {self._mark} AND status = 'verified' "
                          f"AND kind = 'full' ORDER BY id DESC LIMIT 1", (environment,))
        return self._datetime(rows[0][0]) if rows else None

    def record(self, *, actor: str, action: str, environment: str | None, outcome: str, summary: str = "",
               details: dict[str, Any] | None = None) -> Event:
        """As Store.record (summary cut at 2000 characters, `at` now in UTC)."""
        at, summary, details = utcnow(), summary[:2000], details or {}
        values = (self._stored_datetime(at), actor, action, environment, outcome, summary,
                  self._stored_json(details))
        marks = ", ".join([self._mark] * len(values))
        rows = self._read(f"INSERT INTO events (at, actor, action, environment, outcome, summary, details) "
                          f"VALUES ({marks}) RETURNING id", values)
        return Event(rows[0][0], at, actor, action, environment, outcome, summary, dict(details), None)

    def close(self) -> None:
        self._close()

    # -- the two drivers' forms -------------------------------------------------------------------

    def _read(self, sql: str, params: tuple) -> list[tuple]:
        try:
            return list(self._conn.execute(sql, params).fetchall())
        except Exception as exc:  # noqa: BLE001 - sqlite3.Error or psycopg.Error: Store.session's words
            first = str(exc).strip().splitlines()
            raise StateError("the bot's state database is unreachable"
                             + (f" ({redact(first[0])[:200]})" if first else "") + "; try again in a moment") from None

    def _datetime(self, value: Any) -> datetime | None:
        if value is None:
            return None
        return as_utc(datetime.fromisoformat(value) if isinstance(value, str) else value)

    def _stored_datetime(self, value: datetime) -> Any:
        # SQLAlchemy's SQLite DATETIME: text, naive (everything stored is UTC), always microseconds.
        return f"{value:%Y-%m-%d %H:%M:%S}.{value.microsecond:06d}" if self.sqlite else value

    def _json(self, value: Any) -> Any:
        return json.loads(value) if isinstance(value, (str, bytes)) else value

    def _stored_json(self, value: dict[str, Any]) -> Any:
        if self.sqlite:
            return json.dumps(value)
        from psycopg.types.json import Json

        return Json(value)
