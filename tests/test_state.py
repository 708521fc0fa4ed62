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


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_state_database_at_0005_keeps_its_runs_and_gains_their_details(backend, request, tmp_path):
    from alembic import command
    from alembic.config import Config

    from runbook.state import store as store_module
    from runbook.state.runs import RunStore

    url = f"sqlite:///{tmp_path}/old.db" if backend == "sqlite" else request.getfixturevalue("pg_url")
    store = Store(url)
    cfg = Config()
    cfg.set_main_option("script_location", str(store_module.MIGRATIONS))
    with store.engine.connect() as conn:         # the database as the bot of 0005_runs left it, with a run
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0005_runs")
        conn.exec_driver_sql(
            "INSERT INTO runs (id, kind, environment, actor, state, host, pid, started_at, heartbeat_at) "
            "VALUES ('old0005run', 'migrate', 'production', 'U0ALICE01', 'running', 'bot-1', 4242, "
            "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)")
        conn.commit()
    try:
        assert not store._at_head()
        store.migrate()
        assert store._at_head()
        runs = RunStore(store)
        [old] = runs.list()
        assert (old.id, old.kind, old.state, old.pid, old.details) == ("old0005run", "migrate", "running", 4242, None)
        assert runs.set_details(old.id, monitor={"channel": "C0MONITOR1", "ts": "1.000100"})
        assert runs.set_details(old.id, backup_id=7)                      # merged, not replaced
        assert runs.get(old.id).details == {"monitor": {"channel": "C0MONITOR1", "ts": "1.000100"}, "backup_id": 7}
        fresh = runs.start(kind="restore", environment="production", actor="cli:ops", details={"backup_id": 8})
        assert runs.get(fresh.id).detail("backup_id") == 8 and not runs.set_details("no-such-run", x=1)
    finally:
        store.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_alerts_of_a_0008_database_count_as_shown_as_they_stand(backend, request, tmp_path):
    """0009 adds alerts.rendered: a message posted before it is taken to show its alert as it stands (the
    first polls after the upgrade do not re-edit every alert message ever posted); one never posted, nothing."""
    from alembic import command
    from alembic.config import Config

    from runbook.state import store as store_module
    from runbook.watch import AlertBook

    url = f"sqlite:///{tmp_path}/old.db" if backend == "sqlite" else request.getfixturevalue("pg_url")
    store = Store(url)
    cfg = Config()
    cfg.set_main_option("script_location", str(store_module.MIGRATIONS))
    with store.engine.connect() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0008_approval_claims")
        for key, state, reopened, ts in (("posted", "resolved", 2, "'1.000100'"), ("unposted", "open", 0, "NULL")):
            conn.exec_driver_sql(
                "INSERT INTO alerts (key, environment, kind, subject, since, state, opened_at, last_seen_at, "
                "reopened, peak_seconds, details, channel, ts) VALUES "
                f"('{key}', 'production', 'long_query', '42', '', '{state}', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, "
                f"{reopened}, 1.0, '{{}}', 'C0ALERTS01', {ts})")
        conn.commit()
    try:
        store.migrate()
        assert store._at_head()
        book = AlertBook(store)
        assert {a.key: a.rendered for a in book.alerts(open_only=False)} == {"posted": "resolved:2", "unposted": None}
        assert book.messages_behind("production", 10) == []
    finally:
        store.close()
