"""Every guard of a run decided once, in runbook/ops.py, proven by the sequences that used to get past
them (issue 12): real CLI processes, the sample app's own Alembic, real pg_dump/pg_restore 16 and
PostgreSQL.

* a: backup at 0001 -> migrate to 0002 -> rows written into what 0002 created -> rollback: the rollback
  takes its own backup at 0002 (the one at 0001 holds none of those rows), and restoring it brings them back;
* b: a run's backup survives the routine backups that follow it, and retention says why;
* c: a session idle in a transaction on the run's table closes the no-go gate before any migrator session
  exists; only an approver's override, with a reason, passes it, recorded as its own event.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import psycopg

from runbook import backup as backups
from runbook import migrate
from runbook.gate import GateOverride
from runbook.state import Store
from runbook.state.runs import RunStore
from tests.support.migrations import alembic_version, assert_no_secret, config_file, environment, PASSWORD, run_cli
from tests.support.configs import with_password
from tests.support.sample_app import REV_0001, REV_0002, REV_0003
from tests.support.sessions import Sessions


def _count(url: str, table: str) -> int | None:
    with psycopg.connect(url) as conn:
        if conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()[0] is None:
            return None
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def _store(tmp_path: Path) -> Store:
    return Store(f"sqlite:///{tmp_path / 'state.db'}")


def test_a_rollback_after_writes_is_protected_by_a_backup_that_holds_them(sample_db, pg_bin_dir, tmp_path):
    url = with_password(sample_db(REV_0001), PASSWORD)
    config = config_file(tmp_path, url, pg_bin_dir=pg_bin_dir)
    store = _store(tmp_path)

    assert run_cli(config, "backup").returncode == 0                          # §2 by hand, at 0001
    [at_0001] = backups.list_backups(store, "production")
    up = run_cli(config, "migrate", "--to", REV_0002, "--yes")                 # relies on it: same revision, fresh
    assert up.returncode == 0, up.stderr
    assert f"backup #{at_0001.id}, taken at {REV_0001}" in up.stderr and alembic_version(url) == [REV_0002]
    with psycopg.connect(url, autocommit=True) as conn:                    # the application writes into 0002's table
        conn.execute("INSERT INTO categories (name) SELECT 'category ' || g FROM generate_series(1, 7) g")
    assert _count(url, "categories") == 7

    back = run_cli(config, "rollback", "--yes", "--json")
    assert back.returncode == 0, back.stderr
    payload = json.loads(back.stdout)
    assert alembic_version(url) == [REV_0001] and _count(url, "categories") is None      # downgrade() dropped them
    assert "relied on" not in back.stderr
    assert f"was taken at {REV_0001}, not at {REV_0002} where production is now" in back.stderr
    protecting = backups.get_backup(store, "production", payload["backup_id"])
    assert payload["backup_taken"] and protecting.id != at_0001.id
    assert protecting.revision == [REV_0002] and protecting.row_counts["public.categories"] == 7

    # the rows the rollback dropped are in that backup: restoring it brings them back
    restored = run_cli(config, "restore", str(protecting.id), "--yes")
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert alembic_version(url) == [REV_0002] and _count(url, "categories") == 7
    # and the next run does not rely on a backup from before that restore, though it is at the same revision
    plan = run_cli(config, "rollback")
    assert plan.returncode == 2 and f"before the restore run" in plan.stdout and "a new one is taken first" in plan.stdout
    assert_no_secret(PASSWORD, up.stdout + up.stderr, back.stdout + back.stderr, restored.stdout, plan.stdout)


def test_retention_keeps_the_backup_that_protects_the_latest_run(sample_db, pg_bin_dir, tmp_path):
    url = with_password(sample_db(REV_0001), PASSWORD)
    config = config_file(tmp_path, url, pg_bin_dir=pg_bin_dir)
    config.write_text(config.read_text().replace('backups: {dir: "backups"}', 'backups: {dir: "backups", keep: 1}'))
    store = _store(tmp_path)

    run = run_cli(config, "migrate", "--to", REV_0002, "--yes", "--json")
    assert run.returncode == 0, run.stderr
    protecting = json.loads(run.stdout)["backup_id"]
    [latest_run] = RunStore(store).list(limit=1)
    assert latest_run.detail("protected_by") == protecting
    outputs = [run_cli(config, "backup") for _ in range(3)]                    # routine backups, keep: 1
    assert all(o.returncode == 0 for o in outputs), [o.stderr for o in outputs]
    kept = backups.get_backup(store, "production", protecting)
    assert kept.status == "verified" and Path(kept.location).is_file()
    assert f"retention kept #{protecting}: it protects the latest migrate run {latest_run.id[:8]}" in outputs[-1].stdout
    statuses = [b.status for b in backups.list_backups(store, "production")]
    assert statuses.count("expired") == 2                                   # the routine ones did expire
    assert run_cli(config, "restore", str(protecting)).returncode == 2         # still offered (plan, then exit 2)

    # a newer run with its own backup releases it
    again = run_cli(config, "rollback", "--yes", "--json")
    assert again.returncode == 0, again.stderr
    assert run_cli(config, "backup").returncode == 0
    assert backups.get_backup(store, "production", protecting).status == "expired"
    assert backups.get_backup(store, "production", json.loads(again.stdout)["backup_id"]).status == "verified"


def _idle_holder(sessions: Sessions, url: str):
    """A session idle in a transaction holding ACCESS SHARE on expenses, past the gate's one-second floor."""
    holder = sessions.open(application_name="nightly-report", autocommit=False)
    holder.execute("SELECT count(*) FROM expenses")
    time.sleep(1.2)          # the state the gate looks for is "idle for a second": nothing to poll for
    return holder


def test_the_no_go_gate_refuses_a_cli_run_before_any_migrator_session(sample_db, pg_bin_dir, tmp_path):
    url = with_password(sample_db(REV_0001), PASSWORD)
    config = config_file(tmp_path, url, pg_bin_dir=pg_bin_dir, migration={"lock_timeout": "1s", "retries": 0})
    store = _store(tmp_path)
    with Sessions(url) as sessions:
        holder = _idle_holder(sessions, url)
        refused = run_cli(config, "migrate", "--yes")
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert "no-go gate is closed on the tables it touches" in refused.stdout
        assert f"pid {holder.info.backend_pid} (nightly-report) is idle in a transaction" in refused.stdout
        assert "AccessShareLock on expenses" in refused.stdout
        assert "rated HIGH and not acknowledged" in refused.stdout          # the live lock makes 0002 HIGH
        assert alembic_version(url) == [REV_0001] and "Traceback" not in refused.stderr
        assert backups.list_backups(store, "production") == []             # refused before the backup
        holder.execute("SELECT 1")                                           # the holder was never blocked
        [run] = RunStore(store).list(limit=1)
        assert run.state == "refused"
        assert not [e for e in store.events(limit=100) if e.action in ("migrate.step", "migrate.start")]
        assert "rbmigrate" not in Path(run.log_path).read_text().split("refused:")[0].split("PGOPTIONS")[0]

        # an override (the CLI stands for an approver) passes it, recorded with its reason; the run then meets
        # the lock it was warned about, times out and changes nothing
        over = run_cli(config, "migrate", "--yes", "--override-gate", "reporting window, DBA on call")
        assert over.returncode == 1 and "lock timeout" in over.stdout and alembic_version(url) == [REV_0001]
        assert "gate OVERRIDDEN (recorded)" in over.stdout
        [event] = store.events(action="migrate.gate_override")
        assert event.outcome == "overridden" and event.actor.startswith("cli:")
        assert event.details["reason"] == "reporting window, DBA on call" and event.details["gate_reasons"]
    fine = run_cli(config, "migrate", "--to", REV_0002, "--yes")                # the holder is gone: the gate opens
    assert fine.returncode == 0, fine.stdout + fine.stderr
    assert alembic_version(url) == [REV_0002]


def test_the_gate_closes_a_rollback_on_its_tables_only(sample_db, tmp_path):
    url = sample_db(REV_0002)
    settings, name, env = environment(tmp_path, url, migration={"lock_timeout": "1s", "retries": 0})
    store = Store(settings.state_url)
    store.migrate()
    with Sessions(url) as sessions:
        holder = sessions.open(application_name="monthly-report", autocommit=False)
        holder.execute("SELECT count(*) FROM incomes")              # incomes: not a table 0002's downgrade touches
        time.sleep(1.2)
        elsewhere = migrate.downgrade(name, env, store=store, validate_after=False, target=REV_0001)
        assert elsewhere.outcome == "succeeded", elsewhere.error
        assert elsewhere.gate.open and "categories" in elsewhere.gate.tables
        holder.rollback()
        migrate.upgrade(name, env, store=store, target=REV_0002, validate_after=False,
                        gate_override=GateOverride("cli:test", "setting the scene"))
        holder_pid = _idle_holder(sessions, url).info.backend_pid
        blocked = migrate.downgrade(name, env, store=store, target=REV_0001)
    assert blocked.outcome == "refused" and not blocked.steps and alembic_version(url) == [REV_0002]
    assert f"pid {holder_pid} (nightly-report) is idle in a transaction" in blocked.error
    assert migrate.result_to_json(blocked)["gate"]["open"] is False


def test_a_gate_override_is_for_approvers_only(sample_db, tmp_path):
    from runbook import ops

    url = sample_db(REV_0001)
    settings, name, env = environment(tmp_path, url)
    approver = env.approvals.approvers[0]
    ops.authorise_override(settings, name, GateOverride(approver, "window agreed"))
    ops.authorise_override(settings, name, GateOverride("cli:ops", "window agreed"))
    for who, reason, said in (("U0NOBODY01", "because", "may override the no-go gate (`override REASON` on run or rollback) on production"),
                              (approver, "   ", "needs a reason"),
                              (approver, "x" * 301, "longer than 300 characters")):
        try:
            ops.authorise_override(settings, name, GateOverride(who, reason))
        except ops.Refused as exc:
            assert said in str(exc)
        else:
            raise AssertionError(f"{who} overrode the gate")
    store = Store(settings.state_url)
    store.migrate()
    try:
        ops.run(settings, store, name, "upgrade", target="head", expected_current=[REV_0001], actor="U0NOBODY01",
                run_id="r" * 16, gate_override=GateOverride("U0NOBODY01", "because"))
    except ops.Refused as exc:
        assert "Only the approvers" in str(exc) and "nothing was done" in str(exc)
    else:
        raise AssertionError("an unauthorised override ran")
    assert alembic_version(url) == [REV_0001] and RunStore(store).list(limit=1) == []
