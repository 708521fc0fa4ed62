"""The bot's own state database: migrated at start, append-only events, SQLite and PostgreSQL."""
from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from runbook.state import StateError, Store


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/state.db"
    else:
        url = request.getfixturevalue("pg_url")
    s = Store(url)
    s.migrate()
    yield s
    s.close()


def test_migrate_is_idempotent_and_records_events(store):
    store.migrate()
    first = store.record(actor="U0ALICE01", action="precheck", environment="production", outcome="go",
                         details={"pending": ["0002"]})
    store.record(actor="cli:ops", action="status", environment="production", outcome="ok")
    store.record(actor="U0ALICE01", action="precheck", environment="staging", outcome="no-go")
    events = store.events(environment="production")
    assert [e.action for e in events] == ["status", "precheck"]
    assert events[1].id == first.id and events[1].details == {"pending": ["0002"]}
    assert events[1].at.tzinfo is not None
    last = store.last_event("production")
    assert last.action == "precheck" and last.actor == "U0ALICE01"  # status is not an event worth showing


def test_events_are_append_only(store):
    store.record(actor="U0ALICE01", action="precheck", environment="production", outcome="go")
    for statement in ("UPDATE events SET outcome = 'no-go'", "DELETE FROM events"):
        with pytest.raises(DBAPIError, match="append-only"):
            with store.engine.begin() as conn:
                conn.execute(text(statement))
    assert store.events()[0].outcome == "go"


def test_unusable_state_url_is_one_line():
    store = Store("postgresql://bot:Sup3rSecret@127.0.0.1:1/state?connect_timeout=2")
    with pytest.raises(StateError) as caught:
        store.migrate()
    assert "\n" not in str(caught.value) and "Sup3rSecret" not in str(caught.value)


def test_head_constant_matches_the_migration_scripts():
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from runbook.state import store as store_module

    cfg = Config()
    cfg.set_main_option("script_location", str(store_module.MIGRATIONS))
    assert ScriptDirectory.from_config(cfg).get_heads() == [store_module.HEAD]


def test_a_state_database_behind_head_is_upgraded(tmp_path):
    url = f"sqlite:///{tmp_path}/old.db"
    store = Store(url)
    with store.engine.begin() as conn:  # a database whose version row is missing gets migrated
        conn.exec_driver_sql("CREATE TABLE unrelated (id integer)")
    store.migrate()
    assert store._at_head()
    store.record(actor="cli:ops", action="precheck", environment="production", outcome="go")
