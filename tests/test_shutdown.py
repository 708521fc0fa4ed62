"""Graceful shutdown (issue 8), on real `runbook-bot serve --http` processes running a real, slow
migration: a revision with pg_sleep in a copy of the sample app, approved over signed HTTP.

SIGTERM -> /health 503 (draining) and Slack's requests 503 at once; the migration either finishes
within the grace period (run succeeded) or is marked interrupted when the grace runs out (its
transaction rolled back); never left "running". The locks go (the target's operation lock, the
scheduler's leader lock), and the process exits 0.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import psycopg
import pytest

from bot.scheduler import LEADER_LOCK_KEY
from runbook.state import Store
from runbook.state.approvals import ApprovalStore
from runbook.state.runs import RunStore
from tests.support.bots import BOT_TOKEN, approve_migration, bots, pg_state_url, start_bot  # noqa: F401  (fixtures)
from tests.support.configs import config_text
from tests.support.migrations import app_copy
from tests.support.sample_app import APP_DIR, REV_0003
from tests.support.slack import SIGNING_SECRET, local_slack, slash_command_body  # noqa: F401
from tests.support.waiting import wait_for

# A bot process is stopped and timed: run alone, after the parallel part of `make test`.
pytestmark = pytest.mark.serial

CHANNEL = "C0SHUTDOWN"
REQUESTER, ALICE = "U0REQUEST1", "U0ALICE001"
SLOW = "0004_slow"


def slow_revision(seconds: int) -> tuple[str, str, str]:
    return (SLOW,
            f"""
            op.execute("CREATE TABLE slow_marker (id serial PRIMARY KEY)")
            op.execute("SELECT pg_sleep({seconds})")
            op.execute("INSERT INTO slow_marker DEFAULT VALUES")
            """,
            "op.execute('DROP TABLE slow_marker')")


GATE = 740_404       # an advisory lock the test holds: the gated revision waits on it


def gated_revision() -> tuple[str, str, str]:
    """A revision that runs until the test lets go of GATE: no race between SIGTERM and its end."""
    return (SLOW,
            f"""
            op.execute("CREATE TABLE slow_marker (id serial PRIMARY KEY)")
            op.execute("SET LOCAL lock_timeout = '120s'")     # the run's 2 s lock_timeout is not for the gate
            op.execute("SELECT pg_sleep(0), pg_advisory_xact_lock({GATE})")
            op.execute("INSERT INTO slow_marker DEFAULT VALUES")
            """,
            "op.execute('DROP TABLE slow_marker')")


def write_config(tmp_path: Path, target: str, state_url: str, pg_bin_dir: Path, app_dir: Path) -> Path:
    extra = (f"    pg_bin_dir: {json.dumps(str(pg_bin_dir))}\n    migration: {{lock_timeout: 2s, retries: 0}}\n"
             "    watch: {every_seconds: 5}")
    text = config_text(target, channel=CHANNEL, approvers=(ALICE,), state_url=state_url,
                       backups_dir=str(tmp_path / "backups"), approvals={"required": 1}, extra_env=extra)
    path = tmp_path / "runbook-bot.yaml"
    path.write_text(text.replace(json.dumps(str(APP_DIR)), json.dumps(str(app_dir))))
    return path


def query(url: str, sql: str, params: tuple = ()) -> list[tuple]:
    with psycopg.connect(url, autocommit=True, application_name="test-observer") as conn:
        return conn.execute(sql, params).fetchall()


def migrator_sleeping(target: str) -> bool:
    return bool(query(target, "SELECT 1 FROM pg_stat_activity WHERE application_name LIKE 'rbmigrate/%%' "
                              "AND state = 'active' AND query LIKE '%%pg_sleep%%'"))


def advisory_locks(url: str) -> list[tuple]:
    return query(url, "SELECT pid, classid, objid FROM pg_locks WHERE locktype = 'advisory' "
                      "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())")


def leader_lock(url: str) -> list[tuple]:
    return query(url, "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objid = %s", (LEADER_LOCK_KEY,))


def start_migration(bot, store: Store, target: str):
    """`/migrate run`, approved: returns the approval request once the migration sleeps in its revision."""
    request = approve_migration(bot, store, requester=REQUESTER, approver=ALICE, channel=CHANNEL)
    wait_for(lambda: migrator_sleeping(target), timeout=120, what="the migration to sleep in its revision")
    [run] = RunStore(store).list(environment="production")
    assert run.state == "running"
    return request


def assert_draining(bot) -> None:
    """Right after SIGTERM: /health says draining (503); Slack's requests get 503; liveness still 200."""
    health = wait_for(lambda: (h := bot.health()) is not None and h.status == 503 and h, timeout=30,
                      what="/health to report draining")
    assert health.json()["draining"] is True and health.json()["ok"] is False
    refused = bot.post(slash_command_body("status", user_id=REQUESTER, channel_id=CHANNEL))
    assert refused.status == 503 and "shutting down" in refused.text
    live = bot.health_live()
    assert live.status == 200 and live.json() == {"ok": True, "live": True, "draining": True}


def test_sigterm_lets_a_running_migration_finish_then_exits_0(sample_db, pg_state_url, tmp_path, pg_bin_dir,
                                                              local_slack, bots):
    target = sample_db(REV_0003)
    config = write_config(tmp_path, target, pg_state_url, pg_bin_dir, app_copy(tmp_path, [gated_revision()]))
    bot = start_bot("bot", config, tmp_path, local_slack.url, extra_env={"RUNBOOK_BOT_SHUTDOWN_GRACE_SECONDS": "120"})
    bots.append(bot)
    bot.wait_healthy()
    store = Store(pg_state_url)
    try:
        with psycopg.connect(target, autocommit=True, application_name="test-gate") as gate:
            gate.execute("SELECT pg_advisory_lock(%s)", (GATE,))
            request = start_migration(bot, store, target)
            wait_for(lambda: leader_lock(pg_state_url), timeout=15, what="the scheduler's leader lock")
            bot.terminate()
            assert_draining(bot)
            assert bot.process.poll() is None           # still draining: the migration is held at the gate
            gate.execute("SELECT pg_advisory_unlock(%s)", (GATE,))
        assert bot.wait(timeout=120) == 0, bot.log()[-3000:]
        [run] = RunStore(store).list(environment="production")
        assert run.state == "succeeded", run.summary
        assert query(target, "SELECT version_num FROM alembic_version") == [(SLOW,)]
        assert query(target, "SELECT count(*) FROM slow_marker") == [(1,)]
        assert ApprovalStore(store).get(request.id).state == "done"
        assert advisory_locks(target) == [] and advisory_locks(pg_state_url) == []      # every lock went
        assert "all work finished" in bot.log()
        assert BOT_TOKEN not in bot.log() and SIGNING_SECRET not in bot.log()
    finally:
        store.close()


@pytest.mark.parametrize("grace, second_signal", [(2, False), (600, True)], ids=["grace-runs-out", "second-sigterm"])
def test_sigterm_marks_an_unfinished_migration_interrupted_and_rolls_it_back(sample_db, pg_state_url, tmp_path,
                                                                              pg_bin_dir, local_slack, bots, grace,
                                                                              second_signal):
    target = sample_db(REV_0003)
    config = write_config(tmp_path, target, pg_state_url, pg_bin_dir, app_copy(tmp_path, [slow_revision(55)]))
    bot = start_bot("bot", config, tmp_path, local_slack.url,
                    extra_env={"RUNBOOK_BOT_SHUTDOWN_GRACE_SECONDS": str(grace)})
    bots.append(bot)
    bot.wait_healthy()
    store = Store(pg_state_url)
    try:
        request = start_migration(bot, store, target)
        stopped = time.monotonic()
        bot.terminate()
        assert_draining(bot)
        if second_signal:
            bot.terminate()                                # the operator insists: the grace is cut short
        assert bot.wait(timeout=60) == 0, bot.log()[-3000:]
        assert time.monotonic() - stopped < 30             # well before the 55 s revision could end
        [run] = RunStore(store).list(environment="production")
        assert run.state == "interrupted" and run.finished_at is not None
        reason = "cut the grace period short" if second_signal else f"{grace} s grace period ran out"
        assert reason in run.summary and "Not resumed" in run.summary
        [event] = [e for e in store.events(limit=100) if e.run_id == run.id and e.outcome == "interrupted"]
        assert event.action == "migrate"
        # the migrator died with the bot: its session ends, its transaction is rolled back
        wait_for(lambda: not query(target, "SELECT 1 FROM pg_stat_activity WHERE application_name LIKE "
                                           "'rbmigrate/%%'"), timeout=20, what="the migrator's session to end")
        assert query(target, "SELECT version_num FROM alembic_version") == [(REV_0003,)]
        assert query(target, "SELECT to_regclass('slow_marker')") == [(None,)]
        assert advisory_locks(target) == [] and advisory_locks(pg_state_url) == []
        assert "marked interrupted" in bot.log()
        said = local_slack.wait_for_message(lambda m: m.text == "1 interrupted run at shutdown; not resumed",
                                            kind="message", timeout=10)
        assert run.id in json.dumps(said.blocks)
        assert said.channel == CHANNEL and reason in json.dumps(said.blocks)
        # its request is closed, its message says so in place (no buttons), its §7.3 summary is in its thread
        closed = ApprovalStore(store).get(request.id)
        assert closed.state == "failed" and closed.result["outcome"] == "interrupted" and reason in closed.result_summary
        message = local_slack.message(request.channel, request.message_ts)
        assert message.text.startswith("Migration production: interrupted") and "actions" not in json.dumps(
            [b["type"] for b in message.blocks])
        assert run.step in json.dumps(message.blocks) and "/migrate status production" in json.dumps(message.blocks)
        summaries = [m for m in local_slack.messages(kind="message") if m.text.startswith("Incident summary:")]
        assert [(m.text, m.thread_ts) for m in summaries] == [
            ("Incident summary: migrate on production (interrupted)", request.message_ts)]
        assert [e.run_id for e in store.events(action="incident")] == [run.id]
    finally:
        store.close()


def test_a_bad_grace_period_is_one_line(tmp_path, local_slack):
    config = tmp_path / "runbook-bot.yaml"
    config.write_text(config_text("postgresql://app@127.0.0.1:1/budget"))
    bot = start_bot("bot", config, tmp_path, local_slack.url, extra_env={"RUNBOOK_BOT_SHUTDOWN_GRACE_SECONDS": "soon"})
    assert bot.wait(timeout=60) == 2
    lines = bot.log().strip().splitlines()
    assert len(lines) == 1 and "RUNBOOK_BOT_SHUTDOWN_GRACE_SECONDS must be a number of seconds" in lines[0]
    assert "'soon'" in lines[0]
