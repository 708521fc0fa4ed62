"""The state store: opens the bot's database, migrates it, records and reads events."""
from __future__ import annotations

import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from sqlalchemy import create_engine, event, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from runbook.state.models import EventRow
from runbook.state.records import HEAD, VERSION_TABLE, Event, StateError  # noqa: F401 (HEAD: re-exported)
from runbook.dsn import redact

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def _sqlalchemy_url(url: str) -> str:
    if url.startswith("postgresql://"):
        return "postgresql+psycopg://" + url[len("postgresql://"):]
    return url


class Store:
    """Thread-safe: every method opens its own short session."""

    _migrate_lock = threading.Lock()

    def __init__(self, url: str):
        self.url = url
        try:
            # On PostgreSQL the bot's own sessions name themselves, so a state database that is
            # also a monitored target never reports the bot's state traffic as activity.
            connect_args = {"application_name": "runbook-bot/state"} if url.startswith("postgresql") else {}
            self.engine: Engine = create_engine(_sqlalchemy_url(url), pool_pre_ping=True, connect_args=connect_args)
        except (SQLAlchemyError, ValueError) as exc:
            raise StateError(f"state_url is not usable: {redact(str(exc).splitlines()[0])}") from None
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def migrate(self) -> None:
        """Bring the state schema to head with the bot's own Alembic migrations.

        Already at head (every start but the first after an upgrade), Alembic is not even
        imported: one query decides, which keeps a CLI run quick.
        """
        if self._at_head():
            return
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        try:
            if self.engine.dialect.name == "sqlite":
                db = self.engine.url.database
                if db and db != ":memory:":
                    Path(db).parent.mkdir(parents=True, exist_ok=True)
            with self._migrate_lock, self.engine.connect() as conn:
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
                conn.commit()
        except SQLAlchemyError as exc:
            raise StateError(
                f"cannot open the state database: {redact(str(exc.orig if hasattr(exc, 'orig') else exc).splitlines()[0])}"
            ) from None
        except OSError as exc:
            raise StateError(f"cannot create the state database: {exc.strerror}") from None

    def _at_head(self) -> bool:
        try:
            return self.schema_revisions() == [HEAD]
        except StateError:
            return False  # migrate() reports the problem properly

    def schema_revisions(self) -> list[str] | None:
        """The state schema's revisions, None before the first migration; StateError (one redacted
        line) when the database cannot be reached. Reads only: `runbook-bot doctor` asks it."""
        try:
            with self.engine.connect() as conn:
                if not self.engine.dialect.has_table(conn, VERSION_TABLE):
                    return None
                return [row[0] for row in conn.exec_driver_sql(f"SELECT version_num FROM {VERSION_TABLE}")]
        except SQLAlchemyError as exc:
            raise StateError(f"cannot read the state database: "
                             f"{redact(str(getattr(exc, 'orig', None) or exc).splitlines()[0])}") from None

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A short session; a state database that cannot be reached (or drops the connection) is a
        StateError with one redacted line, which every surface knows how to say, never SQLAlchemy's
        OperationalError escaping to a generic handler."""
        try:
            with self._sessions() as session:
                yield session
        except (OperationalError, InterfaceError) as exc:
            first = str(getattr(exc, "orig", exc) or exc).strip().splitlines()
            raise StateError("the bot's state database is unreachable"
                             + (f" ({redact(first[0])[:200]})" if first else "") + "; try again in a moment") from None

    def ping(self) -> bool:
        try:
            with self.engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
            return True
        except SQLAlchemyError:
            return False

    def record(self, *, actor: str, action: str, environment: str | None, outcome: str,
               summary: str = "", details: dict[str, Any] | None = None,
               run_id: str | None = None) -> Event:
        row = EventRow(actor=actor, action=action, environment=environment, outcome=outcome,
                       summary=summary[:2000], details=details or {}, run_id=run_id)
        with self.session() as session, session.begin():
            session.add(row)
        return Event.of(row)

    def events(self, *, environment: str | None = None, action: str | None = None,
               limit: int = 50, run_id: str | None = None) -> list[Event]:
        query = select(EventRow).order_by(EventRow.id.desc()).limit(limit)
        if run_id is not None:
            query = query.where(EventRow.run_id == run_id)
        if environment is not None:
            query = query.where(EventRow.environment == environment)
        if action is not None:
            query = query.where(EventRow.action == action)
        with self.session() as session:
            return [Event.of(row) for row in session.scalars(query)]

    def last_event(self, environment: str, *, exclude_actions: tuple[str, ...] = ("help", "status")) -> Event | None:
        query = (select(EventRow).where(EventRow.environment == environment)
                 .where(EventRow.action.not_in(exclude_actions))
                 .order_by(EventRow.id.desc()).limit(1))
        with self.session() as session:
            row = session.scalars(query).first()
            return Event.of(row) if row else None

    def close(self) -> None:
        self.engine.dispose()


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets the scheduler and Slack listeners read while another thread writes.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
