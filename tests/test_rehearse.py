"""Issue 16, the engine: the pending range rehearsed on a restored copy of the real sample app's database,
with real alembic subprocesses, pg_restore and PostgreSQL. The target is never written; the copy is
always dropped."""
from __future__ import annotations

import json
import time
from pathlib import Path

import psycopg
import pytest

from runbook import backup as backups
from runbook import rehearse
from runbook.state import Store
from runbook.state.runs import RunStore
from tests.support.configs import with_password
from tests.support.migrations import PASSWORD, app_copy, assert_no_secret, environment
from tests.support.sample_app import REV_0001, REV_0002, REV_0003

# The rewrite of a few thousand rows takes milliseconds, less than the sampler's period on a loaded
# machine; the sleep (same transaction) keeps the ACCESS EXCLUSIVE lock held long enough to be seen.
VOLATILE = ("0004_volatile",
            "op.add_column('expenses', sa.Column('token', sa.Text(), nullable=False, "
            "server_default=sa.text('md5(random()::text)')))\nop.execute('SELECT pg_sleep(0.3)')",
            "op.drop_column('expenses', 'token')")
BROKEN = ("0004_broken", "op.execute('ALTER TABLE expenses ADD COLUMN amount integer')", "pass")


def _store(settings) -> Store:
    store = Store(settings.state_url)
    store.migrate()
    return store


def _scratch_databases(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return [r[0] for r in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'rbrehearse%'")]


def _target_facts(url: str) -> dict:
    """Revision, rows per table, and the target's write counters (after a flush: reference/rehearsal.md)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_force_next_flush()")
        time.sleep(0)      # the flush happens at this session's next report; the other sessions are gone
        version = [r[0] for r in conn.execute("SELECT version_num FROM alembic_version")]
        rows = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("expenses", "incomes")}
        columns = [r[0] for r in conn.execute("SELECT column_name FROM information_schema.columns "
                                              "WHERE table_name = 'expenses' ORDER BY 1")]
        return {"version": version, "rows": rows, "columns": columns}


def _writes(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_force_next_flush()")
        conn.execute("SELECT pg_stat_clear_snapshot()")
        return conn.execute("SELECT tup_inserted + tup_updated + tup_deleted FROM pg_stat_database "
                            "WHERE datname = current_database()").fetchone()[0]


def _settle(url: str) -> None:
    """VACUUM ANALYZE first: autoanalyze's own catalog writes would otherwise show up in the counters."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")


def test_rehearsal_passes_up_down_up_and_leaves_the_target_untouched(sample_db, tmp_path, pg_bin_dir):
    url = with_password(sample_db(REV_0001, seed_rows=200), PASSWORD)
    settings, name, env = environment(tmp_path, url, pg_bin_dir=pg_bin_dir,
                                      validation={"tables": ["expenses", "incomes"]})
    store = _store(settings)
    backups.backup(name, env, store)          # at 0001: the one the rehearsal restores
    _settle(url)
    before, writes_before = _target_facts(url), _writes(url)

    result = rehearse.rehearse(name, env, store, target=REV_0002, settings=settings, actor="cli:test")

    assert result.outcome == "passed", result.error
    assert [r.revision for r in result.revisions] == [REV_0002]
    assert all(r.ok and r.downgrade_ok for r in result.revisions)
    assert result.upgrade_again_ok is True
    assert result.validation is not None and result.validation.passed
    assert not result.backup_taken
    # 0002 adds a table and a column (catalog only: its locks last milliseconds, between two samples at
    # times; the rewrite test below holds one long enough to be seen every time)
    second = result.revisions[0]
    assert second.rewrites == [] and second.size_change_bytes > 0          # the new categories table
    assert "categories" in second.size_by_table
    # the target: same revision, same rows, no write
    assert _target_facts(url) == before
    assert _writes(url) == writes_before
    assert _scratch_databases(url) == []
    # recorded as a run of kind rehearse, hidden from what reads the target's history
    runs = RunStore(store)
    assert [r.kind for r in runs.list(environment=name, kinds=(rehearse.KIND,))] == [rehearse.KIND]
    assert runs.list(environment=name) == []
    data = rehearse.to_json(result)
    assert {"backup_id", "revisions", "total_seconds", "validation", "outcome", "error"} <= set(data)
    assert {"revision", "seconds", "locks", "rewrites", "size_change_bytes", "downgrade_ok"} <= set(
        data["revisions"][0])
    assert_no_secret(PASSWORD, json.dumps(data), rehearse.render_text(result), [r.summary for r in runs.list(
        kinds=(rehearse.KIND,))], [e.summary for e in store.events(limit=50)], files=(Path(result.log_path),))


def test_an_irreversible_revision_stops_the_way_down_and_is_reported(sample_db, tmp_path, pg_bin_dir):
    url = sample_db(REV_0002)
    settings, name, env = environment(tmp_path, url, pg_bin_dir=pg_bin_dir)
    store = _store(settings)

    result = rehearse.rehearse(name, env, store, settings=settings)

    assert result.outcome == "passed", result.error
    (report,) = result.revisions
    assert report.ok and not report.reversible and report.downgrade_ok is None
    assert result.upgrade_again_ok is None
    assert any("irreversible" in note for note in result.notes)
    assert "irreversible" in rehearse.revision_line(report)
    assert _scratch_databases(url) == []


def test_a_volatile_default_is_reported_as_a_rewrite_under_access_exclusive(sample_db, tmp_path, pg_bin_dir):
    app = app_copy(tmp_path, [VOLATILE])
    url = sample_db(REV_0003, seed_rows=3000)
    settings, name, env = environment(tmp_path, url, app_dir=app, pg_bin_dir=pg_bin_dir)
    store = _store(settings)

    result = rehearse.rehearse(name, env, store, settings=settings)      # no backup at 0003: takes one

    assert result.outcome == "passed", result.error
    assert result.backup_taken
    (report,) = result.revisions
    assert report.rewrites == ["expenses"]
    first = report.locks[0]
    assert (first.relation, first.mode) == ("expenses", "ACCESS EXCLUSIVE")
    assert report.size_change_bytes > 0 and report.wal_bytes and report.wal_bytes > 0
    line = rehearse.revision_line(report)
    assert "ACCESS EXCLUSIVE on expenses" in line and "table rewritten: expenses" in line, line
    assert report.downgrade_ok is True
    assert _scratch_databases(url) == []


def test_a_failing_revision_is_reported_with_its_error_and_the_copy_dropped(sample_db, tmp_path, pg_bin_dir):
    app = app_copy(tmp_path, [BROKEN])
    url = sample_db(REV_0003)
    settings, name, env = environment(tmp_path, url, app_dir=app, pg_bin_dir=pg_bin_dir)
    store = _store(settings)
    _settle(url)
    before, writes_before = _target_facts(url), _writes(url)

    result = rehearse.rehearse(name, env, store, settings=settings)

    assert result.outcome == "failed"
    (report,) = result.revisions
    assert not report.ok and "already exists" in (report.error or ""), report.error
    assert "0004_broken" in rehearse.render_text(result) and "FAILED" in rehearse.render_text(result)
    assert _scratch_databases(url) == []
    assert _target_facts(url) == before
    assert _writes(url) == writes_before
    run = RunStore(store).get(result.run_id)
    assert run.state == "failed" and run.result["outcome"] == "failed"


def test_a_named_backup_at_another_revision_is_refused(sample_db, tmp_path, pg_bin_dir):
    url = sample_db(REV_0001)
    settings, name, env = environment(tmp_path, url, pg_bin_dir=pg_bin_dir)
    store = _store(settings)
    made = backups.backup(name, env, store)
    from tests.support.sample_app import upgrade
    upgrade(url, REV_0002)

    result = rehearse.rehearse(name, env, store, backup_id=made.id, settings=settings)

    assert result.outcome == "refused"
    assert f"backup {made.id} was taken at {REV_0001}" in result.error
    assert _scratch_databases(url) == []


def test_leftover_scratch_databases_of_dead_rehearsals_are_dropped(sample_db, tmp_path, pg_bin_dir):
    url = sample_db(REV_0001)
    settings, name, env = environment(tmp_path, url, pg_bin_dir=pg_bin_dir)
    store = _store(settings)
    runs = RunStore(store)
    dead = runs.start(kind=rehearse.KIND, environment=name, actor="test", run_id="deadbeef00000001",
                      details={"scratch": rehearse.scratch_name("deadbeef00000001")})
    runs.finish(dead.id, "failed")
    alive = runs.start(kind=rehearse.KIND, environment=name, actor="test", run_id="a11ve00000000002",
                       details={"scratch": rehearse.scratch_name("a11ve00000000002")})
    with psycopg.connect(url, autocommit=True) as conn:
        for run_id in (dead.id, alive.id, "0000unknown00003"):
            conn.execute(f"CREATE DATABASE {rehearse.scratch_name(run_id)}")
    try:
        dropped = rehearse.drop_leftovers(settings, store)
        assert dropped == [rehearse.scratch_name(dead.id)]
        assert sorted(_scratch_databases(url)) == sorted([rehearse.scratch_name(alive.id),
                                                          rehearse.scratch_name("0000unknown00003")])
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            for name_ in _scratch_databases(url):
                conn.execute(f"DROP DATABASE IF EXISTS {name_} WITH (FORCE)")


def test_the_latest_rehearsal_of_a_range_is_voided_by_a_file_edit(sample_db, tmp_path, pg_bin_dir):
    app = app_copy(tmp_path, [VOLATILE])
    url = sample_db(REV_0003)
    settings, name, env = environment(tmp_path, url, app_dir=app, pg_bin_dir=pg_bin_dir)
    store = _store(settings)
    from runbook.precheck import project_of

    assert rehearse.latest_for(store, name, project_of(env), [REV_0003], "0004_volatile") is None
    result = rehearse.rehearse(name, env, store, settings=settings)
    assert result.passed, result.error

    match = rehearse.latest_for(store, name, project_of(env), [REV_0003], "0004_volatile")
    assert match is not None and match.passed and match.run_id == result.run_id
    # a rollback of the same range matches it too (its way down was rehearsed)
    assert rehearse.latest_for(store, name, project_of(env), ["0004_volatile"], REV_0003).run_id == result.run_id
    path = app / "alembic" / "versions" / "0004_volatile.py"
    path.write_text(path.read_text() + "\n# edited\n")
    match = rehearse.latest_for(store, name, project_of(env), [REV_0003], "0004_volatile")
    assert match is not None and not match.valid and match.voided_by == ["0004_volatile"]
    assert "void" in rehearse.match_line(match)


@pytest.mark.parametrize("revision", [REV_0003])
def test_nothing_to_rehearse_at_head(sample_db, tmp_path, pg_bin_dir, revision):
    url = sample_db(revision)
    settings, name, env = environment(tmp_path, url, pg_bin_dir=pg_bin_dir)
    result = rehearse.rehearse(name, env, _store(settings), settings=settings)
    assert result.outcome == "nothing to do"
    assert _scratch_databases(url) == []
