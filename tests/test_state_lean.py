"""The CLI precheck's state calls through the driver alone (runbook.state.lean): what it writes and reads
is what the SQLAlchemy Store writes and reads, on a real SQLite file and a real PostgreSQL database;
whatever it does not handle (a schema to migrate, a run to reap, no file yet) is left to the Store."""
from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import text

from runbook.state import StateError, Store
from runbook.state.lean import LeanStore
from runbook.state.models import BackupRow
from runbook.state.runs import RunStore
from tests.support.bots import free_port
from tests.support.migrations import assert_no_secret

PASSWORD = "L3an-S3cret"


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    url = f"sqlite:///{tmp_path}/state.db" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    s = Store(url)
    s.migrate()
    yield s
    s.close()


def backup_row(finished_at: datetime, *, status: str = "verified", kind: str = "full",
               environment: str = "production") -> BackupRow:
    return BackupRow(environment=environment, kind=kind, format="custom", reason="manual", status=status,
                     level="full", name="backup.dump", location="/backups/backup.dump", tables=[], row_counts={},
                     actor="U0ALICE01", started_at=finished_at - timedelta(seconds=5), finished_at=finished_at)


def test_what_each_writes_the_other_reads_alike(store):
    by_store = store.record(actor="U0ALICE01", action="risk.ack", environment="production", outcome="ok",
                            summary="reviewed", details={"revision": "0002", "file_sha256": "ab" * 32})
    store.record(actor="U0ALICE01", action="risk.ack", environment="staging", outcome="ok")
    lean = LeanStore.open(store.url)
    assert lean is not None
    try:
        assert lean.events(environment="production", action="risk.ack") == [by_store]
        by_lean = lean.record(actor="cli:ops", action="precheck", environment="production", outcome="no-go",
                              summary="x" * 2100, details={"checks": {"connectivity": "ok"}})
        assert lean.events(limit=1) == [by_lean] and len(by_lean.summary) == 2000
        assert lean.events(environment="production", limit=10) == [by_lean, by_store]
    finally:
        lean.close()
    assert store.events(limit=1) == [by_lean]       # the same id, instant, summary and details
    assert store.last_event("production") == by_lean


def test_the_sqlite_rows_it_writes_have_sqlalchemys_form(tmp_path):
    store = Store(f"sqlite:///{tmp_path}/state.db")
    store.migrate()
    store.record(actor="U0ALICE01", action="precheck", environment="production", outcome="go",
                 details={"checks": {"a": "ok"}})
    lean = LeanStore.open(store.url)
    lean.record(actor="cli:ops", action="precheck", environment="production", outcome="go",
                details={"checks": {"a": "ok"}})
    lean.close()
    with sqlite3.connect(tmp_path / "state.db") as conn:
        rows = conn.execute("SELECT typeof(at), length(at), details FROM events ORDER BY id").fetchall()
    assert rows[0] == rows[1] == ("text", 26, json.dumps({"checks": {"a": "ok"}}))


def test_the_newest_verified_full_backup(store):
    lean = LeanStore.open(store.url)
    try:
        assert lean.last_backup_at("production") is None
        finished = datetime(2026, 11, 24, 10, 0, 0, 123456, tzinfo=timezone.utc)
        with store.session() as session, session.begin():
            session.add(backup_row(finished))
            session.add(backup_row(finished + timedelta(hours=1), status="failed"))
            session.add(backup_row(finished + timedelta(hours=2), kind="schema"))
            session.add(backup_row(finished + timedelta(hours=3), environment="staging"))
        assert lean.last_backup_at("production") == finished
    finally:
        lean.close()
    from runbook.state.backups import last_backup_at

    assert last_backup_at(store, "production") == finished


def test_a_schema_to_migrate_or_a_run_to_reap_is_left_to_the_store(store):
    runs = RunStore(store)
    run = runs.start(kind="migrate", environment="production", actor="cli:ops")
    assert LeanStore.open(store.url) is None            # a run `running`: RunStore reaps it, with its event
    runs.finish(run.id, "succeeded")
    lean = LeanStore.open(store.url)
    assert lean is not None
    lean.close()
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE runbook_bot_alembic_version SET version_num = '0007_alert_episodes'"))
    assert LeanStore.open(store.url) is None            # Store.migrate brings it to head


def test_no_sqlite_file_yet_is_left_to_the_store(tmp_path):
    assert LeanStore.open(f"sqlite:///{tmp_path}/new/state.db") is None
    assert LeanStore.open(f"sqlite:///{tmp_path}/state.db") is None
    assert list(tmp_path.iterdir()) == []               # nothing created: Store.migrate makes it
    assert LeanStore.open("sqlite://") is None


def test_an_unreachable_postgresql_state_database_is_stores_one_line():
    url = f"postgresql://bot:{PASSWORD}@127.0.0.1:{free_port()}/state?connect_timeout=2"
    with pytest.raises(StateError) as failed:
        LeanStore.open(url)
    message = str(failed.value)
    assert message.startswith("cannot open the state database: ") and "\n" not in message
    assert_no_secret(PASSWORD, message)
    with pytest.raises(StateError) as by_store:
        Store(url).migrate()
    assert str(by_store.value) == message
