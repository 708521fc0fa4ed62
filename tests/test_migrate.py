"""Issue 4, the engine: supervised alembic upgrade/downgrade on the real sample app and PostgreSQL.

Every run's password is checked to be absent from the result, its log file and the events."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import psycopg
import pytest

from runbook import migrate, rollback
from runbook.gate import GateOverride
from runbook.revisions import AlembicProject
from runbook.state import Store
from runbook.state.runs import RunStore
from tests.support.migrations import (alembic_version, app_copy, assert_no_secret, config_file,
                                     environment, PASSWORD, run_cli)
from tests.support.configs import with_password
from tests.support.sample_app import ALEMBIC_ARGV, REV_0001, REV_0002, REV_0003
from tests.support.sessions import Sessions
from tests.support.waiting import wait_for

ROOT = Path(__file__).resolve().parent.parent


def _columns(url: str, table: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return [r[0] for r in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = %s ORDER BY ordinal_position",
            [table])]


def _table_exists(url: str, table: str) -> bool:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT to_regclass(%s) IS NOT NULL", [table]).fetchone()[0]


def _store(settings) -> Store:
    store = Store(settings.state_url)
    store.migrate()
    return store


def _no_secret_anywhere(result: migrate.MigrationResult, store: Store) -> None:
    events = store.events(limit=200)
    runs = RunStore(store).list(limit=50)
    assert_no_secret(PASSWORD, json.dumps(migrate.result_to_json(result)), result.summary(),
                     [(e.summary, e.details) for e in events], [(r.summary, r.result) for r in runs],
                     files=(Path(result.log_path),))


# Lets a test reach what happens behind the no-go gate (lock timeouts, retries): tests/test_run_guards.py
# shows the gate closing on the same sessions.
OVERRIDE = GateOverride("cli:test", "the test holds this lock on purpose")


def test_upgrade_to_head_validates_records_and_logs(sample_db, tmp_path):
    url = with_password(sample_db(REV_0001), PASSWORD)
    settings, name, env = environment(tmp_path, url, validation={"tables": ["expenses", "incomes"],
                                                                 "required_columns": {"expenses": ["date", "amount"]}})
    store = _store(settings)
    seen: list[migrate.Progress] = []

    result = migrate.upgrade(name, env, store=store, actor="cli:ops", on_progress=seen.append)

    assert result.outcome == "succeeded" and result.ok
    assert result.from_revisions == [REV_0001] and result.to_revisions == [REV_0003] == alembic_version(url)
    assert result.planned_steps == [REV_0003] and result.steps_done == [REV_0003] and result.attempts == 1
    assert result.validation is not None and result.validation.passed
    counts = next(c for c in result.validation.checks if c.name == "row counts")
    assert "expenses 50 -> 50" in counts.detail
    assert set(result.touched_tables) >= {"categories", "expenses"}
    assert result.recommendation is None
    assert {p.phase for p in seen} >= {"checking", "migrating", "validating", "done"}
    log_text = Path(result.log_path).read_text()
    assert "Running upgrade 0001_expenses_incomes -> 0002_categories" in log_text
    assert "application_name=rbmigrate/" + result.run_id in log_text
    assert "Running upgrade" in result.log_tail
    run = RunStore(store).get(result.run_id)
    assert run.state == "succeeded" and run.from_revision == REV_0001 and run.target_revision == REV_0003
    assert run.log_path == result.log_path
    actions = [(e.action, e.outcome) for e in store.events(limit=20) if e.run_id == result.run_id]
    assert ("migrate.start", "started") in actions and ("migrate.step", "ok") in actions
    assert actions[0] == ("migrate", "succeeded")
    _no_secret_anywhere(result, store)


def test_upgrade_to_a_named_revision_and_nothing_to_do(sample_db, tmp_path):
    url = sample_db(REV_0001)
    settings, name, env = environment(tmp_path, url)
    result = migrate.upgrade(name, env, target="0002")      # a unique prefix, resolved against the scripts
    assert result.outcome == "succeeded" and result.target == REV_0002 and alembic_version(url) == [REV_0002]
    assert result.validation.passed and result.validation.expected == [REV_0002]

    again = migrate.upgrade(name, env, target=REV_0002)
    assert again.outcome == "nothing to do" and again.ok and again.attempts == 0

    behind = migrate.upgrade(name, env, target=REV_0001)
    assert behind.outcome == "refused" and "that is a rollback" in behind.error

    unknown = migrate.upgrade(name, env, target="9999_nope")
    assert unknown.outcome == "refused" and "unknown revision '9999_nope'" in unknown.error
    assert alembic_version(url) == [REV_0002]


def test_step_by_step_runs_one_revision_per_subprocess(sample_db, tmp_path):
    url = sample_db(REV_0001)
    settings, name, env = environment(tmp_path, url, migration={"step_by_step": True})
    store = _store(settings)
    seen: list[migrate.Progress] = []
    result = migrate.upgrade(name, env, store=store, on_progress=seen.append, progress_every=0.0)
    assert result.outcome == "succeeded"
    assert result.planned_steps == [REV_0002, REV_0003] == result.steps_done
    assert [s.version_after for s in result.steps] == [[REV_0002], [REV_0003]]
    assert Path(result.log_path).read_text().count("attempt 1: ") == 2
    migrating = [p for p in seen if p.phase == "migrating"]
    assert {(p.step, p.step_index, p.step_count) for p in migrating} >= {(REV_0002, 1, 2), (REV_0003, 2, 2)}
    steps = [e for e in store.events(limit=20) if e.action == "migrate.step"]
    assert len(steps) == 2 and all(e.outcome == "ok" for e in steps)


def test_lock_timeout_retries_name_the_root_blocker_and_leave_the_database_unchanged(sample_db, tmp_path):
    url = with_password(sample_db(REV_0001), PASSWORD)
    settings, name, env = environment(tmp_path, url, migration={"lock_timeout": "1s", "retries": 2})
    store = _store(settings)
    reports: list[migrate.BlockerReport] = []
    with Sessions(url) as sessions:
        holder = sessions.open(application_name="nightly-report", autocommit=False)
        holder.execute("SELECT count(*) FROM expenses")        # ACCESS SHARE until the transaction ends
        result = migrate.upgrade(name, env, store=store, on_blocker=reports.append, backoff_seconds=0.05,
                                 gate_override=OVERRIDE)
        holder_pid = holder.info.backend_pid

        assert result.outcome == "failed" and result.attempts == 3, result.error
        assert "lock timeout" in result.error and "database is at 0001_expenses_incomes" in result.error
        assert len(reports) == len(result.blockers) == 3
        for report in reports:
            assert report.root_pid == holder_pid and report.application == "nightly-report"
            assert report.state == "idle in transaction" and report.xact_seconds is not None
            assert "SELECT count(*) FROM expenses" in report.query
            assert report.lock_mode == "AccessExclusiveLock" and report.relation == "expenses"
        assert [r.retry_in_seconds is not None for r in reports] == [True, True, False]
        # Each attempt was one transaction: nothing of 0002 is left behind.
        assert alembic_version(url) == [REV_0001]
        assert not _table_exists(url, "categories") and "category_id" not in _columns(url, "expenses")
        assert result.recommendation.action == "none"
    blocked = [e for e in store.events(limit=50) if e.action == "migrate.blocked"]
    assert len(blocked) == 3 and all(f"pid {holder_pid}" in e.summary for e in blocked)
    _no_secret_anywhere(result, store)


def test_a_retry_succeeds_once_the_blocker_is_gone(sample_db, tmp_path):
    url = sample_db(REV_0001)
    settings, name, env = environment(tmp_path, url, migration={"lock_timeout": "500ms", "retries": 3})
    with Sessions(url) as sessions:
        holder = sessions.open(autocommit=False)
        holder.execute("SELECT count(*) FROM expenses")
        # The first report is the cue for the "person" holding the lock to let go.
        result = migrate.upgrade(name, env, on_blocker=lambda report: holder.rollback(), backoff_seconds=0.05,
                                 gate_override=OVERRIDE)
    assert result.outcome == "succeeded" and result.attempts == 2 and len(result.blockers) == 1
    assert result.steps[0].attempts == 2 and alembic_version(url) == [REV_0003]


FAILING = ("0004_divide_by_zero", "op.execute('SELECT 1/0')", "pass")
REVERSIBLE = ("0004_incomes_note", "op.add_column('incomes', sa.Column('note', sa.Text()))",
              "op.drop_column('incomes', 'note')")


def test_a_failing_revision_stops_at_the_last_good_revision_step_by_step(sample_db, tmp_path):
    url = sample_db(REV_0001)
    app = app_copy(tmp_path, [FAILING])
    settings, name, env = environment(tmp_path, url, app_dir=app, migration={"step_by_step": True},
                                      validation={"tables": ["expenses"]})
    store = _store(settings)
    result = migrate.upgrade(name, env, store=store)
    assert result.outcome == "failed" and result.attempts == 3      # one per step, no retry of a real error
    assert "division by zero" in result.error and "0004_divide_by_zero" in result.error
    assert result.steps_done == [REV_0002, REV_0003] and alembic_version(url) == [REV_0003]
    assert result.to_revisions == [REV_0003] and result.validation is None
    # 0002-0003 applied, 0003 cannot be undone: restore the tables they touched.
    rec = result.recommendation
    assert rec.action == "table_restore" and rec.tables == ["categories", "expenses"]
    assert rec.undo == [REV_0003, REV_0002]
    assert any(s.question == "Migration is reversible?" and s.answer == "no" and "0003" in s.evidence
               for s in rec.walk)
    assert RunStore(store).get(result.run_id).state == "failed"
    assert "division by zero" in result.log_tail


def test_a_failing_revision_in_one_transaction_leaves_nothing_to_undo(sample_db, tmp_path):
    url = sample_db(REV_0003)
    app = app_copy(tmp_path, [REVERSIBLE, ("0005_divide_by_zero", "op.execute('SELECT 1/0')", "pass")])
    settings, name, env = environment(tmp_path, url, app_dir=app)
    result = migrate.upgrade(name, env)
    assert result.outcome == "failed" and alembic_version(url) == [REV_0003]
    assert "note" not in _columns(url, "incomes")              # 0004 went down with 0005's transaction
    assert result.recommendation.action == "none"
    assert "nothing to roll back" in result.recommendation.headline


def test_a_failing_revision_after_a_reversible_one_recommends_a_downgrade(sample_db, tmp_path):
    url = sample_db(REV_0003)
    app = app_copy(tmp_path, [REVERSIBLE, ("0005_divide_by_zero", "op.execute('SELECT 1/0')", "pass")])
    settings, name, env = environment(tmp_path, url, app_dir=app, migration={"step_by_step": True})
    result = migrate.upgrade(name, env)
    assert result.outcome == "failed" and alembic_version(url) == ["0004_incomes_note"]
    rec = result.recommendation
    assert rec.action == "downgrade" and rec.target_revision == REV_0003 and rec.undo == ["0004_incomes_note"]

    # The recommended downgrade, through the same supervisor.
    back = migrate.downgrade(name, env, target=rec.target_revision)
    assert back.outcome == "succeeded" and alembic_version(url) == [REV_0003] and "note" not in _columns(url, "incomes")


def test_an_irreversible_rollback_is_refused_up_front(sample_db, tmp_path):
    url = sample_db("head")
    settings, name, env = environment(tmp_path, url)
    with pytest.raises(rollback.IrreversibleDowngrade) as refused:
        rollback.check_downgrade(name, env, "-1")
    text = str(refused.value)
    assert "0003_backfill_categories is irreversible" in text and "NotImplementedError" in text
    assert "restore" in text and "\n" not in text
    # The run itself refuses too, before touching anything.
    result = migrate.downgrade(name, env, target=REV_0001)
    assert result.outcome == "refused" and "irreversible" in result.error and result.attempts == 0
    assert alembic_version(url) == [REV_0003]


def test_a_reversible_rollback_runs_under_the_same_supervision(sample_db, tmp_path):
    url = sample_db(REV_0002)
    settings, name, env = environment(tmp_path, url)
    plan = rollback.check_downgrade(name, env, "-1")
    assert plan.target == REV_0001 and [r.revision for r in plan.undo] == [REV_0002]
    result = migrate.downgrade(name, env)
    assert result.outcome == "succeeded" and result.to_revisions == [REV_0001] == alembic_version(url)
    assert not _table_exists(url, "categories")
    assert result.validation.passed and result.validation.expected == [REV_0001]


def test_a_rollback_validates_row_counts_against_before_the_run_as_a_migration_does(sample_db, tmp_path):
    """Issue 12 §2 h: the rollback of 0002 compares each configured table with its count before the
    run; categories, which the undone revision created and its downgrade drops, is reported as
    dropped by the rollback (not as missing)."""
    url = sample_db(REV_0002)
    settings, name, env = environment(tmp_path, url, validation={"tables": ["expenses", "incomes", "categories"]})
    with psycopg.connect(url) as conn:
        categories = conn.execute("SELECT count(*) FROM categories").fetchone()[0]
    result = migrate.downgrade(name, env)
    assert result.outcome == "succeeded" and alembic_version(url) == [REV_0001]
    [counts] = [c for c in result.validation.checks if c.name == "row counts"]
    assert counts.status == "pass", counts.detail
    assert counts.detail == (f"expenses 50 -> 50; incomes {_rows(url, 'incomes')} -> {_rows(url, 'incomes')}; "
                             f"categories dropped by the rollback ({categories} rows before)")
    assert result.validation.passed, [(c.name, c.detail) for c in result.validation.failed]


def test_rows_a_rollback_deletes_are_data_loss_as_after_a_migration(sample_db, tmp_path):
    """A downgrade that deletes rows of a table its revision never touched: the rollback's
    validation flags the loss with the counts before and after (today's code said "no count from
    before the run to compare with" and passed)."""
    app = app_copy(tmp_path, [("0004_incomes_note", "op.add_column('incomes', sa.Column('note', sa.Text()))",
                                "op.execute('DELETE FROM expenses WHERE id > 40')\n"
                                "op.drop_column('incomes', 'note')")])
    url = sample_db(REV_0003)
    settings, name, env = environment(tmp_path, url, app_dir=app, validation={"tables": ["expenses"]})
    assert migrate.upgrade(name, env).outcome == "succeeded"
    result = migrate.downgrade(name, env)
    assert alembic_version(url) == [REV_0003]
    assert result.outcome == "validation failed" and result.validation.data_loss
    [counts] = [c for c in result.validation.failed if c.name == "row counts"]
    assert counts.detail == "data loss: expenses 50 -> 40 (-10)" and counts.tables == ("expenses",)


def _rows(url: str, table: str) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def test_refused_while_a_pg_dump_is_connected(sample_db, tmp_path, pg_bin_dir):
    url = sample_db(REV_0001)
    settings, name, env = environment(tmp_path, url)
    with Sessions(url) as sessions:
        locker = sessions.open(autocommit=False)
        locker.execute("LOCK TABLE incomes IN ACCESS EXCLUSIVE MODE")   # keeps the real pg_dump connected
        dump = subprocess.Popen([str(pg_bin_dir / "pg_dump"), "-f", os.devnull, "-d", url],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_for(lambda: sessions.observe("SELECT 1 FROM pg_stat_activity WHERE application_name = 'pg_dump' "
                                              "AND wait_event_type = 'Lock'"), 20, what="pg_dump to wait")
            result = migrate.upgrade(name, env)
            assert result.outcome == "refused" and "a pg_dump is connected" in result.error
            assert result.attempts == 0 and alembic_version(url) == [REV_0001]
        finally:
            locker.rollback()
            assert dump.wait(timeout=60) == 0           # the dump was left alone and finished
    assert migrate.upgrade(name, env).outcome == "succeeded"


def test_refused_when_the_revision_changed_since_approval(sample_db, tmp_path):
    url = sample_db(REV_0002)
    settings, name, env = environment(tmp_path, url)
    store = _store(settings)
    result = migrate.upgrade(name, env, expected_current=[REV_0001], store=store)
    assert result.outcome == "refused" and result.attempts == 0
    assert "is at 0002_categories, not at 0001_expenses_incomes as approved" in result.error
    assert alembic_version(url) == [REV_0002]
    assert RunStore(store).get(result.run_id).state == "refused"


SLOW = ("0004_slow", "op.execute('SELECT pg_sleep(30)')", "pass")


def _migrator_sessions(url: str, query_like: str = "%") -> list[tuple]:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute("SELECT pid, application_name FROM pg_stat_activity WHERE application_name LIKE "
                            "'rbmigrate/%%' AND query LIKE %s", [query_like]).fetchall()


def test_two_concurrent_migrations_one_is_refused_by_the_advisory_lock(sample_db, tmp_path):
    url = sample_db(REV_0003)
    app = app_copy(tmp_path, [("0004_pause", "op.execute('SELECT pg_sleep(1.5)')", "pass")])
    settings, name, env = environment(tmp_path, url, app_dir=app)
    first: list[migrate.MigrationResult] = []
    runner = threading.Thread(target=lambda: first.append(migrate.upgrade(name, env)))
    runner.start()
    try:
        wait_for(lambda: _migrator_sessions(url, "%pg_sleep%"), 20, what="the first migration to run")
        second = migrate.upgrade(name, env)
    finally:
        runner.join(timeout=60)
    assert second.outcome == "refused" and "another migrate is running on production" in second.error
    assert first[0].outcome == "succeeded" and alembic_version(url) == ["0004_pause"]


def test_hard_timeout_cancels_the_backend_and_stops_the_process(sample_db, tmp_path):
    url = sample_db(REV_0003)
    settings, name, env = environment(tmp_path, url, app_dir=app_copy(tmp_path, [SLOW]))
    result = migrate.upgrade(name, env, timeout_seconds=1.5)
    assert result.outcome == "failed" and result.timed_out
    assert "did not finish within 1.5 s" in result.error and alembic_version(url) == [REV_0003]
    assert "cancelling the migrator's backend" in Path(result.log_path).read_text()
    wait_for(lambda: not _migrator_sessions(url), 10, what="the migrator's session to end")


def test_killed_mid_run_is_marked_interrupted_at_the_next_start(sample_db, tmp_path, pg_bin_dir):
    url = with_password(sample_db(REV_0003), PASSWORD)
    config = config_file(tmp_path, url, app_dir=app_copy(tmp_path, [SLOW]), pg_bin_dir=pg_bin_dir)
    proc = subprocess.Popen([sys.executable, "-m", "bot.cli", "--config", str(config), "migrate", "--yes"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: _migrator_sessions(url, "%pg_sleep%"), 60, what="the migration to reach pg_sleep")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    # The tether took alembic down with the CLI; its backend notices and rolls back.
    wait_for(lambda: not _migrator_sessions(url), 15, what="the orphaned migrator session to end")
    assert alembic_version(url) == [REV_0003]

    status = run_cli(config, "status")                 # the next start
    assert status.returncode == 0, status.stderr
    assert "was interrupted" in status.stderr and "not resumed" in status.stderr.lower()
    store = Store(f"sqlite:///{tmp_path / 'state.db'}")
    run = RunStore(store).list(limit=1)[0]
    assert run.state == "interrupted" and run.kind == "migrate" and run.step.startswith("upgrade 0004_slow")
    assert any(e.outcome == "interrupted" and e.run_id == run.id for e in store.events(limit=20))
    assert "was interrupted" not in run_cli(config, "status").stderr      # reaped once
    assert_no_secret(PASSWORD, status.stdout, status.stderr, run.summary, files=(Path(run.log_path),))


def test_cli_migrate_and_rollback_need_yes_and_record_it(sample_db, tmp_path, pg_bin_dir):
    url = with_password(sample_db(REV_0001), PASSWORD)
    config = config_file(tmp_path, url, validation={"tables": ["expenses"]}, pg_bin_dir=pg_bin_dir)

    bare = run_cli(config, "migrate")                                   # the plan approvers would read, exit 2
    assert bare.returncode == 2 and len(bare.stderr.strip().splitlines()) == 1
    assert "--yes" in bare.stderr and alembic_version(url) == [REV_0001]
    assert bare.stdout.startswith(f"Migration of production: {REV_0001} -> {REV_0003}")
    assert "CREATE TABLE categories" in bare.stdout and "has no verified full backup" in bare.stdout

    bad = run_cli(config, "migrate", "--to", "zzz", "--yes")               # refused before anything is recorded
    assert bad.returncode == 1 and "unknown revision 'zzz'" in bad.stderr and "Traceback" not in bad.stderr
    assert bad.stdout == "" and len(bad.stderr.strip().splitlines()) == 1

    done = run_cli(config, "migrate", "--to", REV_0002, "--yes", "--json")
    assert done.returncode == 0, done.stderr
    payload = json.loads(done.stdout)
    assert payload["backup_taken"] and "  backup: #1 verified (full)" in done.stderr     # §2 first, like Slack
    assert payload["outcome"] == "succeeded" and payload["to"] == [REV_0002] and payload["validation"]["passed"]

    back = run_cli(config, "rollback", "--yes")
    assert back.returncode == 0, back.stdout + back.stderr
    assert "Rollback production: SUCCEEDED" in back.stdout and alembic_version(url) == [REV_0001]

    run_cli(config, "migrate", "--yes")
    irreversible = run_cli(config, "rollback", "--yes")
    assert irreversible.returncode == 1 and "irreversible" in irreversible.stderr
    assert len(irreversible.stderr.strip().splitlines()) == 1 and alembic_version(url) == [REV_0003]

    at_head = run_cli(config, "migrate", "--yes")
    assert at_head.returncode == 0 and "nothing to do: production is already at" in at_head.stderr

    # --yes is an approval like a click in Slack: a request approved by the CLI user, then its run
    store = Store(f"sqlite:///{tmp_path / 'state.db'}")
    approvals = [e for e in store.events(limit=50) if e.outcome == "approved"]
    assert [e.action for e in reversed(approvals)] == ["migrate", "rollback", "migrate"]
    assert all(e.actor.startswith("cli:") and e.details["via"] == "--yes" for e in approvals)
    runs = RunStore(store).list(limit=10)
    assert len(runs) == 3 and all(r.approval_id in {e.run_id for e in approvals} for r in runs)
    for out in (bare, bad, done, back, irreversible, at_head):
        assert_no_secret(PASSWORD, out.stdout, out.stderr)


def test_cli_migrate_reports_an_unreachable_database_in_one_line(tmp_path):
    url = "postgresql://ops:" + PASSWORD + "@127.0.0.1:1/nowhere"
    config = config_file(tmp_path, url)
    out = run_cli(config, "migrate", "--yes")
    assert out.returncode == 2 and PASSWORD not in out.stdout + out.stderr
    assert "Traceback" not in out.stderr


def test_the_migrator_session_is_visible_to_activity(sample_db, tmp_path):
    """Its application_name is not runbook-bot/..., so the §4 monitor shows (and blames) it."""
    url = sample_db(REV_0001)
    settings, name, env = environment(tmp_path, url, migration={"lock_timeout": "2s", "retries": 0})
    seen: list[migrate.Progress] = []
    with Sessions(url) as sessions:
        holder = sessions.open(autocommit=False)
        holder.execute("SELECT count(*) FROM expenses")
        holder_pid = holder.info.backend_pid
        result = migrate.upgrade(name, env, on_progress=seen.append, progress_every=0.0, gate_override=OVERRIDE)
    waiting = [p for p in seen if p.waiting_on_lock]
    assert waiting and waiting[0].migrator_pid and waiting[0].blocked_by == (holder_pid,)
    assert waiting[0].blocker is not None and waiting[0].blocker.root_pid == holder_pid
    assert result.blockers[0].migrator_pid == waiting[0].migrator_pid


def test_plan_is_checked_against_the_scripts(tmp_path):
    project = AlembicProject(ROOT / "examples" / "home_budget", ALEMBIC_ARGV)
    up = migrate.plan(project, [REV_0001], "upgrade", "head", step_by_step=True)
    assert up.steps == [REV_0002, REV_0003] and up.expected_after == [[REV_0002], [REV_0003]]
    down = migrate.plan(project, [REV_0003], "downgrade", "base", step_by_step=True)
    assert down.steps == [REV_0002, REV_0001, "base"] and down.expected_after[-1] == []
    assert migrate.plan(project, [REV_0003], "downgrade", "base", step_by_step=False).steps == ["base"]


def test_the_backup_runs_first_under_the_same_lock(sample_db, tmp_path, pg_bin_dir):
    """backup -> migrate -> validate is one run holding one advisory lock (design rule 13)."""
    from runbook import backup, guard

    url = sample_db(REV_0001)
    settings, name, env = environment(tmp_path, url)
    env = env.model_copy(update={"pg_bin_dir": pg_bin_dir})
    store = _store(settings)
    holders: list[guard.LockHolder | None] = []

    def back_up(held: guard.Held, current: list[str]) -> backup.Backup:
        assert current == [REV_0001]       # the revision read under the lock
        holders.append(guard.current_holder(held.target))
        return backup.backup(name, env, store, lock=held, reason="migrate")

    result = migrate.upgrade(name, env, target=REV_0002, store=store, before=back_up)
    assert result.outcome == "succeeded" and alembic_version(url) == [REV_0002]
    assert holders[0] is not None and holders[0].operation == "migrate"
    assert result.backup.status == "verified" and result.backup.revision == [REV_0001]

    def broken(held: guard.Held, current: list[str]):
        raise backup.BackupError("disk full")

    failed = migrate.upgrade(name, env, before=broken)
    assert failed.outcome == "failed" and "the backup before the migration failed: disk full" in failed.error
    assert failed.attempts == 0 and alembic_version(url) == [REV_0002]


def test_propose_shows_what_approvers_approve_and_refuses_up_front(sample_db, tmp_path):
    url = sample_db(REV_0001)
    settings, name, env = environment(tmp_path, url)
    up = migrate.propose(name, env)
    assert up.refusal is None and up.current == [REV_0001] and up.target == REV_0003
    assert [r.revision for r in up.revisions] == [REV_0002, REV_0003] and not up.revisions[1].reversible
    assert "CREATE TABLE categories" in up.sql_preview and "expenses" in up.touched_tables
    down = migrate.propose(name, env, direction="downgrade")
    # a rollback shows the downgrade() SQL of what it undoes, never the upgrade SQL
    assert down.refusal is None and down.target == "base" and "DROP TABLE expenses" in down.sql_preview
    assert "CREATE TABLE" not in down.sql_preview
    migrate.upgrade(name, env, validate_after=False)
    refused = migrate.propose(name, env, direction="downgrade", target=REV_0001)
    assert refused.refusal.startswith("cannot roll back production: 0003_backfill_categories is irreversible")
    assert migrate.propose(name, env).refusal == "nothing to do: production is already at 0003_backfill_categories"


def test_migration_logs_stay_local_when_backups_go_to_a_url(tmp_path):
    from runbook.config import parse_settings
    from runbook.migrate import default_log_dir

    config = tmp_path / "runbook-bot.yaml"
    config.write_text("environments:\n  production:\n    database_url: postgresql://x/y\n    app_dir: .\n"
                      f"    backups: {{dir: 's3://bucket/backups', staging_dir: '{tmp_path}/stage'}}\n")
    env = parse_settings(config.read_text(), source=config).environments["production"]
    assert default_log_dir(env) == tmp_path / "stage" / "migration-logs"
    local = parse_settings(config.read_text().replace("s3://bucket/backups", "dumps"), source=config)
    assert default_log_dir(local.environments["production"]) == tmp_path / "dumps" / "migration-logs"
