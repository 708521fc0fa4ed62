"""Restores are runs (kind "restore"): what every reader of the runs table makes of one.

The promotion gate (a restore is never evidence; one that took the source below a revision
withdraws it), the escalation levels (a failed restore is level 2 on its own, an interrupted one
is not escalated; its runbook sections are §6.2/§6.3), the Slack renderings of interrupted runs and
of the status, and the CLI's status, restore and incident over a real restore. Real state databases
(SQLite and the CLI's), real PostgreSQL, pg_dump and pg_restore for the CLI; no Slack at all.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psycopg

from bot import blocks
from bot import migration_blocks as mblocks
from runbook import escalation as levels
from runbook import promotion
from runbook.precheck import project_of
from runbook.state import Store
from runbook.state.runs import RunStore
from tests.support.configs import settings_for, with_password, write_config
from tests.support.sample_app import ALEMBIC_ARGV, APP_DIR, REV_0002, REV_0003

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "Rest0re-Run-Secret"


def staged_settings(tmp_path: Path):
    """production promoted from staging (the sample app on both); nothing connects to them here."""
    return settings_for(tmp_path, "postgresql://bot@127.0.0.1:1/production", extra_env="\n".join([
        "    promote_from: staging",
        "  staging:",
        "    database_url: 'postgresql://bot@127.0.0.1:1/staging'",
        f"    app_dir: {json.dumps(str(APP_DIR))}",
        f"    alembic: {json.dumps(ALEMBIC_ARGV)}",
    ]))


def sqlite_store(tmp_path: Path) -> Store:
    store = Store(f"sqlite:///{tmp_path / 'state.db'}")
    store.migrate()
    return store


def finished_restore(runs: RunStore, state: str, *, before: list[str], after: list[str], backup_id: int = 7,
                     error: str | None = None, environment: str = "staging"):
    run = runs.start(kind="restore", environment=environment, actor="U0ALICE001", from_revision=", ".join(before),
                     details={"backup_id": backup_id, "mode": "full", "tables": []})
    runs.finish(run.id, state, summary=error or "restored", result={
        "outcome": state, "error": error, "from": before, "to": after, "backup_id": backup_id, "mode": "full"})
    return runs.get(run.id)


def test_a_restore_is_not_promotion_evidence_and_one_that_took_the_source_below_withdraws_it(tmp_path):
    settings = staged_settings(tmp_path)
    production = settings.environments["production"]
    project = project_of(settings.environments["staging"])
    store = sqlite_store(tmp_path)
    runs = RunStore(store)

    # a restore that brought staging to 0003 is no evidence: nothing validated it there
    finished_restore(runs, "succeeded", before=[REV_0002], after=[REV_0003])
    refused = promotion.check(store, "production", production, REV_0003, project)
    assert not refused.allowed and "the bot has no successful migration of staging on record" in refused.reason

    applied = runs.start(kind="migrate", environment="staging", actor="U0ALICE001")
    runs.finish(applied.id, "succeeded", result={"outcome": "succeeded", "from": [REV_0002], "to": [REV_0003],
                                                 "validation": {"passed": True}})
    assert promotion.check(store, "production", production, REV_0003, project).evidence_run_id == applied.id

    # a table restore (the revision stays) and a failed restore (rolled back whole) change nothing
    finished_restore(runs, "succeeded", before=[REV_0003], after=[REV_0003])
    finished_restore(runs, "failed", before=[REV_0003], after=[REV_0003], error="psql: lock timeout")
    assert promotion.check(store, "production", production, REV_0003, project).allowed

    # a full restore of an older backup takes staging below 0003: the evidence is gone
    undone = finished_restore(runs, "succeeded", before=[REV_0003], after=[REV_0002], backup_id=9)
    check = promotion.check(store, "production", production, REV_0003, project)
    assert not check.allowed
    assert f"{REV_0003} was undone by a restore of backup #9 on staging (run {undone.id}" in check.reason
    assert f"`/migrate run staging {REV_0003}`" in check.reason
    assert promotion.check(store, "production", production, REV_0002, project).allowed   # still applied there


def test_a_failed_restore_is_level_2_an_interrupted_one_is_not_escalated_and_both_point_to_the_restore_sections(
        tmp_path):
    settings = staged_settings(tmp_path)
    store = sqlite_store(tmp_path)
    runs = RunStore(store, host="bot-1")
    failed = finished_restore(runs, "failed", before=[REV_0003], after=[REV_0003], environment="production",
                              error="the restore failed and was rolled back, production is unchanged")
    assert levels.automatic_level(failed) == (
        2, "the restore of backup #7 failed: the restore failed and was rolled back, production is unchanged")
    situation = levels.assess(settings, store, "production")
    assert situation.sections == ("6.2", "7") and situation.run_id == failed.id
    assert situation.why.startswith(f"restore run {failed.id} of backup #7 failed: the restore failed")

    tables = runs.start(kind="restore", environment="production", actor="U0ALICE001", from_revision=REV_0003,
                        details={"backup_id": 8, "mode": "tables", "tables": ["public.expenses"]})
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with store.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE runs SET pid = ?, step = 'safety backup' WHERE id = ?", (dead.pid, tables.id))
    [interrupted] = runs.reap()
    assert levels.automatic_level(interrupted) is None
    situation = levels.assess(settings, store, "production")
    assert situation.sections == ("6.3", "7") and situation.run_id == interrupted.id
    assert situation.why.startswith(f"restore run {interrupted.id} of backup #8 was interrupted: interrupted during "
                                    "'safety backup'")


def test_interrupted_runs_and_the_status_render_a_restore_as_a_restore(tmp_path):
    store = sqlite_store(tmp_path)
    runs = RunStore(store, host="bot-1")
    migration = runs.start(kind="migrate", environment="production", actor="U0ALICE001", from_revision=REV_0002,
                           target_revision=REV_0003)
    restore = runs.start(kind="restore", environment="production", actor="U0ALICE001", from_revision=REV_0003,
                         details={"backup_id": 8, "mode": "tables", "tables": ["public.expenses", "public.incomes"]})
    runs.interrupt_own("the bot was stopped (SIGTERM)")
    restore, migration = runs.get(restore.id), runs.get(migration.id)

    only = mblocks.interrupted_runs_message([restore])
    text = json.dumps(only.blocks, ensure_ascii=False)
    assert only.text == "1 interrupted run found at start; not resumed"
    assert ("*restore* of backup #8, 2 tables (`public.expenses`, `public.incomes`) on `production` by <@U0ALICE001>"
            f" · revision before {REV_0003}") in text
    assert "A restore is not resumed either" in text and "anywhere between two revisions" not in text
    both = json.dumps(mblocks.interrupted_runs_message([migration, restore], when="at shutdown").blocks,
                      ensure_ascii=False)
    assert "anywhere between two revisions" in both and "A restore is not resumed either" in both
    assert f"*migrate* on `production` by <@U0ALICE001> · {REV_0002} → {REV_0003}" in both

    line = blocks.run_status_line(restore)
    assert line.startswith(f"*Last run*: restore `{restore.id}` by <@U0ALICE001> · *interrupted* (step `starting`)")
    assert line.endswith("interrupted during 'starting': the bot was stopped (SIGTERM)")     # no CLI advice
    assert restore.summary.endswith("a restore is one transaction, so unless it reached its COMMIT the database is "
                                    "as it was; check it (runbook-bot status) and restore again if needed")
    status = blocks.status_message("production", None, None, restore)
    assert blocks.run_status_line(restore) in [b["text"]["text"] for b in status.blocks if b["type"] == "section"]


def cli(config: Path, *args: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in __import__("os").environ.items() if not k.startswith("SLACK_")}
    return subprocess.run([sys.executable, "-m", "bot.cli", "--config", str(config), *args], cwd=ROOT, env=environ,
                          capture_output=True, text=True, timeout=300)


def test_the_cli_restore_is_a_run_that_status_and_incident_show(sample_db, pg_bin_dir, tmp_path):
    url = with_password(sample_db(REV_0003), PASSWORD)
    config = write_config(tmp_path, url, state_url=f"sqlite:///{tmp_path}/state.db",
                          backups_dir=str(tmp_path / "backups"),
                          extra_env=f"    pg_bin_dir: {json.dumps(str(pg_bin_dir))}")
    made = cli(config, "backup", "--json")
    assert made.returncode == 0, made.stderr
    backup_id = json.loads(made.stdout)["id"]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DELETE FROM expenses WHERE id > 10")

    restored = cli(config, "restore", str(backup_id), "--yes", "--json")
    assert restored.returncode == 0, restored.stderr
    answer = json.loads(restored.stdout)
    store = Store(f"sqlite:///{tmp_path}/state.db")
    try:
        [run] = RunStore(store).list()
        assert (run.kind, run.state, run.step, run.approval_id) == ("restore", "succeeded", "restore", answer["request"])
        assert run.actor.startswith("cli:") and answer["run_id"] == run.id
    finally:
        store.close()

    status = cli(config, "status", "--json")
    assert status.returncode == 0, status.stderr
    last = json.loads(status.stdout)["last_run"]
    assert (last["id"], last["kind"], last["state"]) == (run.id, "restore", "succeeded")
    assert f"  last run: restore {run.id} by {run.actor}, succeeded (started " in cli(config, "status").stdout

    incident = cli(config, "incident")                  # the latest run: the restore
    assert incident.returncode == 0, incident.stderr
    assert incident.stdout.startswith("# Incident summary: restore on production (succeeded)")
    assert f"| Run | `{run.id}` (restore, succeeded) |" in incident.stdout
    # the target is the backup's revision as text, never a Python list (issue 12 §2 j)
    assert f"| Revision | `{REV_0003}` → `{REV_0003}`; reached `{REV_0003}` |" in incident.stdout
    assert "['" not in incident.stdout
    assert f"the whole database from backup #{backup_id}; revision {REV_0003} before, {REV_0003} after" \
        in incident.stdout
    assert "the backup this restore restores" in incident.stdout
    for done in (made, restored, status, incident):
        assert PASSWORD not in done.stdout + done.stderr
