"""Several replicas (issue 8): two real `runbook-bot serve --http` processes sharing one PostgreSQL
state database and one (local) Slack, as a Deployment with two pods would.

* a click reaches either replica; whichever gets it, the approved action runs once;
* the watch schedules on both, one leads (a session advisory lock) and sends the alert once;
  when the leader is killed (-9) the other takes the schedule at the very next slot;
* a migration runs once: approved on both replicas at once, it runs on one; two started at the same
  time (the CLI), one is refused by the target's advisory lock.

Everything is real but Slack: PostgreSQL, pg_dump/pg_restore, alembic subprocesses, signed HTTP.
"""
from __future__ import annotations

import json
import subprocess
import sys
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg
import pytest

from bot.approvals import ACTION_APPROVE
from runbook import backup as backups
from runbook.config import load_settings
from runbook.state import Store
from runbook.state.approvals import ApprovalStore
from runbook.state.runs import RunStore
from tests.support.bots import BOT_TOKEN, pg_state_url, start_bot, stop_all  # noqa: F401  (fixture)
from tests.support.configs import config_text, with_password
from tests.support.migrations import app_copy
from tests.support.sample_app import APP_DIR, REV_0002, REV_0003
from tests.support.sessions import Sessions
from tests.support.slack import SIGNING_SECRET, block_actions_body, local_slack, slash_command_body  # noqa: F401
from tests.support.waiting import wait_for

ROOT = Path(__file__).resolve().parent.parent
CHANNEL = "C0REPLICA1"
REQUESTER, ALICE, BOB = "U0REQUEST1", "U0ALICE001", "U0BOB00001"
PASSWORD = "Repl1ca-Target-Secret"
EVERY = 5          # the watch's interval (its minimum)


def write_replica_config(tmp_path: Path, target_url: str, state_url: str, pg_bin_dir: Path, *,
                         app_dir: Path | None = None, thresholds: dict | None = None) -> Path:
    extra = [f"    pg_bin_dir: {json.dumps(str(pg_bin_dir))}",
             f"    watch: {json.dumps({'every_seconds': EVERY, 'misfire_grace_seconds': EVERY})}",
             "    migration: {lock_timeout: 2s, retries: 0}"]
    text = config_text(target_url, channel=CHANNEL, approvers=(ALICE, BOB), state_url=state_url,
                       backups_dir=str(tmp_path / "backups"), thresholds=thresholds, approvals={"required": 1},
                       extra_env="\n".join(extra))
    if app_dir is not None:
        text = text.replace(json.dumps(str(APP_DIR)), json.dumps(str(app_dir)))
    path = tmp_path / "runbook-bot.yaml"
    path.write_text(text)
    return path


@pytest.fixture
def replicas(tmp_path, local_slack):
    """replicas(config) -> [a, b]: two serve --http processes, healthy; stopped (SIGTERM) afterwards."""
    started = []

    def start(config: Path, count: int = 2):
        bots = [start_bot(f"replica-{i}", config, tmp_path, local_slack.url) for i in range(count)]
        started.extend(bots)
        for bot in bots:
            bot.wait_healthy()
        return bots

    yield start
    stop_all(started)
    for bot in started:
        assert BOT_TOKEN not in bot.log() and SIGNING_SECRET not in bot.log() and PASSWORD not in bot.log()


def rows(url: str, table: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(f"SELECT * FROM {table} ORDER BY id").fetchall()  # table: a test constant


def clicks_at_once(*posts) -> list:
    """Send the requests from threads released together; their answers, in order."""
    barrier = threading.Barrier(len(posts))
    answers: list = [None] * len(posts)

    def send(index: int) -> None:
        barrier.wait()
        answers[index] = posts[index]()

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(posts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return answers


# --------------------------------------------------------------------------
# a click on either replica acts once


def test_approving_on_both_replicas_at_once_restores_once(sample_db, pg_state_url, tmp_path, pg_bin_dir,
                                                         local_slack, replicas):
    target = with_password(sample_db(REV_0002), PASSWORD)
    config = write_replica_config(tmp_path, target, pg_state_url, pg_bin_dir)
    a, b = replicas(config)
    settings = load_settings(str(config))
    store = Store(pg_state_url)
    try:
        dumped = rows(target, "expenses")
        item = backups.backup("production", settings.environments["production"], store, actor="U0BACKUP01")
        with psycopg.connect(target, autocommit=True) as conn:
            conn.execute("DELETE FROM expenses WHERE id % 2 = 0")

        assert a.post(slash_command_body(f"restore {item.id}", user_id=REQUESTER, channel_id=CHANNEL)).status == 200
        requests = ApprovalStore(store)
        request = wait_for(lambda: next((r for r in requests.list() if r.message_ts), None), timeout=60,
                           what="the approval request, posted")
        assert request.kind == "restore" and request.state == "pending"

        def click(bot, user):
            return lambda: bot.post(block_actions_body(ACTION_APPROVE, request.id, user_id=user,
                                                       channel_id=request.channel, message_ts=request.message_ts))

        answers = clicks_at_once(click(a, ALICE), click(b, BOB))
        assert [answer.status for answer in answers] == [200, 200]           # both acked at once
        final = wait_for(lambda: (r := requests.get(request.id)).state in ("done", "failed") and r,
                         timeout=180, what="the restore to finish")
        assert final.state == "done", final.result_summary
        assert rows(target, "expenses") == dumped
        events = [e for e in store.events(limit=500) if e.run_id == request.id]
        decided = [e.outcome for e in events if e.action == "approve"]
        assert decided.count("approved") == 1 and len(decided) == 2, decided   # the other click changed nothing
        assert [e.outcome for e in events if e.action == "restore"].count("ok") == 1
        safety = [x for x in backups.list_backups(store, "production", limit=50) if x.reason == "safety"]
        assert len(safety) == 1                                              # one restore ran, on one replica
        wait_for(lambda: "Restore production: done" in local_slack.message(request.channel, request.message_ts).text,
                 timeout=30, what="the request's message to say done")
    finally:
        store.close()


# --------------------------------------------------------------------------
# the watch: one alert, and the schedule fails over


def claims(state_url: str) -> list[tuple[datetime, str]]:
    with psycopg.connect(state_url) as conn:
        return conn.execute("SELECT slot, claimed_by FROM job_claims WHERE job = 'watch:production' "
                            "ORDER BY slot").fetchall()


def claimed_by(claim: tuple[datetime, str], bot) -> bool:
    return claim[1].endswith(f":{bot.pid}")


def test_one_replica_sends_the_alert_and_the_other_takes_over_within_one_interval(
        sample_db, pg_state_url, tmp_path, pg_bin_dir, local_slack, replicas):
    target = sample_db(REV_0002)
    config = write_replica_config(tmp_path, target, pg_state_url, pg_bin_dir, thresholds={"long_query_seconds": 1})
    with Sessions(target) as sessions:
        query = sessions.start("SELECT pg_sleep(55)", application_name="nightly-report")   # a real long query
        sessions.wait_until_active(query.pid, "pg_sleep")
        a, b = replicas(config)
        wait_for(lambda: len(claims(pg_state_url)) >= 3, timeout=60, what="three watch slots")
        alert = wait_for(lambda: local_slack.messages(kind="message"), timeout=30, what="the alert")[0]
        assert "Long query" in alert.text and alert.channel == CHANNEL

        # exactly one leader (by /metrics), and it ran every slot
        leaders = [bot for bot in (a, b) if bot.metric("runbook_bot_scheduler_leader") == 1]
        assert len(leaders) == 1, [bot.metric("runbook_bot_scheduler_leader") for bot in (a, b)]
        leader = leaders[0]
        follower = b if leader is a else a
        assert follower.metric("runbook_bot_scheduler_leader") == 0
        assert all(claimed_by(claim, leader) for claim in claims(pg_state_url))

        # kill it right after it claimed a slot: the next slot is a whole interval away
        seen = len(claims(pg_state_url))
        last = wait_for(lambda: len(claims(pg_state_url)) > seen and claims(pg_state_url)[-1], timeout=3 * EVERY,
                        what="the leader's next slot")
        assert claimed_by(last, leader)
        updates_before = len(local_slack.calls("chat.update"))
        leader.kill()
        killed_at = datetime.now(timezone.utc)
        taken = wait_for(lambda: next((c for c in claims(pg_state_url) if claimed_by(c, follower)), None),
                         timeout=3 * EVERY, what="the surviving replica to claim a slot")
        assert taken[0] == last[0] + timedelta(seconds=EVERY), (last, taken)   # the very next slot
        assert taken[0] - killed_at <= timedelta(seconds=EVERY)
        assert follower.metric("runbook_bot_scheduler_leader") == 1

        # still one alert: the new leader updates the same message
        wait_for(lambda: len(local_slack.calls("chat.update")) > updates_before, timeout=3 * EVERY, what="an update")
        assert len([c for c in local_slack.calls("chat.postMessage") if c.body.get("thread_ts") is None]) == 1
        assert {c.body["ts"] for c in local_slack.calls("chat.update")} == {alert.ts}
        slots = [slot for slot, _ in claims(pg_state_url)]
        assert len(slots) == len(set(slots))                                 # no slot ran twice


# --------------------------------------------------------------------------
# a migration runs once


SLOW_REVISION = ("0004_slow_marker",
                 """
                 op.execute("CREATE TABLE migration_marker (id serial PRIMARY KEY, at timestamptz DEFAULT now())")
                 op.execute("SELECT pg_sleep(4)")
                 op.execute("INSERT INTO migration_marker DEFAULT VALUES")
                 """,
                 "op.execute('DROP TABLE migration_marker')")


def test_two_migrations_at_once_one_is_refused_by_the_advisory_lock(sample_db, pg_state_url, tmp_path, pg_bin_dir):
    target = sample_db(REV_0003)
    app = app_copy(tmp_path, [SLOW_REVISION])
    config = write_replica_config(tmp_path, target, pg_state_url, pg_bin_dir, app_dir=app)
    argv = [sys.executable, "-m", "bot.cli", "--config", str(config), "migrate", "--yes"]
    processes = [subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outcomes = []
    for process in processes:
        out, err = process.communicate(timeout=180)
        outcomes.append((process.returncode, out, err))
    codes = sorted(code for code, _, _ in outcomes)
    assert codes == [0, 1], outcomes
    refused = next(err + out for code, out, err in outcomes if code == 1)
    assert "another migrate is running on production" in refused, refused
    with psycopg.connect(target) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [("0004_slow_marker",)]
        assert conn.execute("SELECT count(*) FROM migration_marker").fetchone() == (1,)     # applied once
    store = Store(pg_state_url)
    try:
        states = sorted(run.state for run in RunStore(store).list(environment="production"))
        assert states == ["refused", "succeeded"]
    finally:
        store.close()


def test_approving_a_migration_on_both_replicas_at_once_runs_it_once(sample_db, pg_state_url, tmp_path, pg_bin_dir,
                                                                     local_slack, replicas):
    target = sample_db(REV_0003)
    config = write_replica_config(tmp_path, target, pg_state_url, pg_bin_dir,
                                  app_dir=app_copy(tmp_path, [SLOW_REVISION]))
    a, b = replicas(config)
    store = Store(pg_state_url)
    try:
        assert b.post(slash_command_body("run", user_id=REQUESTER, channel_id=CHANNEL)).status == 200
        requests = ApprovalStore(store)
        request = wait_for(lambda: next((r for r in requests.list() if r.kind == "migrate" and r.message_ts), None),
                           timeout=60, what="the migrate request, posted")

        def click(bot, user):
            return lambda: bot.post(block_actions_body(ACTION_APPROVE, request.id, user_id=user,
                                                       channel_id=request.channel, message_ts=request.message_ts))

        answers = clicks_at_once(click(a, ALICE), click(b, BOB), click(a, BOB), click(b, ALICE))
        assert [answer.status for answer in answers] == [200] * 4
        final = wait_for(lambda: (r := requests.get(request.id)).state in ("done", "failed") and r,
                         timeout=180, what="the migration to finish")
        assert final.state == "done", final.result_summary
        [run] = RunStore(store).list(environment="production")                 # one run, on one replica
        assert run.state == "succeeded" and run.approval_id == request.id
        assert run.pid in (a.pid, b.pid)
        with psycopg.connect(target) as conn:
            assert conn.execute("SELECT count(*) FROM migration_marker").fetchone() == (1,)
        decided = [e.outcome for e in store.events(limit=500) if e.run_id == request.id and e.action == "approve"]
        assert decided.count("approved") == 1 and len(decided) == 4, decided
    finally:
        store.close()
