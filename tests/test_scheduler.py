"""The watch's scheduler: it really schedules, and exactly one replica sends alerts.

Replicas are real separate processes (tests/support/watch_replica.py) running the real
APScheduler with the real leader gate: a session advisory lock on a PostgreSQL state
database, or a lock file beside a SQLite one.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from datetime import timezone
from pathlib import Path

import pytest

from bot.app import make_client
from bot.flows import Redactor
from bot.localslack import LocalSlack
from bot.scheduler import EPOCH, PostgresLeader, SchedulerRefused, WatchScheduler, leader_for
from bot.watch import WatchRunner
from runbook.state import Store
from runbook.watch import AlertBook
from tests.support.sessions import Sessions
from tests.support.waiting import wait_for
from tests.test_watch import load, state_older_than, watch_config

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def slack():
    with LocalSlack(joined=("C0TESTCHAN", "C0RUNBOOK1")) as local:   # the configured channel, the commands' one
        yield local


@pytest.fixture
def state_pg_url(pg_server):
    name = "state_" + uuid.uuid4().hex[:10]
    url = pg_server.create_database(name)
    yield url
    pg_server.drop_database(name)


def runner_for(settings, slack) -> WatchRunner:
    store = Store(settings.state_url)
    store.migrate()
    return WatchRunner(settings, store, make_client("xoxb-scheduler-test", slack.url), redactor=Redactor(settings))


def test_the_scheduler_really_runs_the_watch_on_aligned_slots(pg_url, tmp_path, slack):
    settings = load(watch_config(tmp_path, pg_url, watch={"every_seconds": 5, "misfire_grace_seconds": 20}))
    runner = runner_for(settings, slack)
    scheduler = WatchScheduler(settings, runner).start()
    try:
        [job] = scheduler.jobs()
        assert job.id == "watch:production"
        assert (job.misfire_grace_time, job.coalesce, job.max_instances) == (20, True, 1)
        assert job.trigger.interval.total_seconds() == 5 and job.trigger.start_date == EPOCH
        assert job.next_run_time.tzinfo is not None and job.next_run_time.timestamp() % 5 == 0   # wall-clock slot
        book = AlertBook(runner.store)
        state = wait_for(lambda: book.state("production").last_poll_at and book.state("production"),
                         timeout=20, what="the scheduled watch to poll")
        assert state.last_poll_ok is True and state.last_poll_at.timestamp() < job.next_run_time.timestamp() + 5
    finally:
        scheduler.shutdown()
        runner.store.close()


def test_the_leader_gauge_is_set_at_start_not_at_the_first_slot(pg_url, state_pg_url, tmp_path, slack):
    from prometheus_client import CollectorRegistry

    from bot.watch import WatchMetrics

    settings = load(watch_config(tmp_path, pg_url, watch={"every_seconds": 86400}))   # the first slot: hours away
    settings = settings.model_copy(update={"state_url": state_pg_url})
    started = []
    try:
        for _ in range(2):
            runner = runner_for(settings, slack)
            registry = CollectorRegistry()
            runner.metrics = WatchMetrics(registry)
            started.append((WatchScheduler(settings, runner).start(), runner, registry))
        gauges = [registry.get_sample_value("runbook_bot_scheduler_leader") for _, _, registry in started]
        assert gauges == [1.0, 0.0]                     # the first to start leads; the other says so at once
        assert AlertBook(started[0][1].store).state("production").last_poll_at is None     # no slot has run
    finally:
        for scheduler, runner, _ in started:
            scheduler.shutdown()
            runner.store.close()


def test_a_second_scheduler_on_sqlite_is_refused_with_one_line(pg_url, tmp_path, slack):
    settings = load(watch_config(tmp_path, pg_url))
    first = WatchScheduler(settings, runner_for(settings, slack)).start()
    try:
        second = WatchScheduler(settings, runner_for(settings, slack))
        with pytest.raises(SchedulerRefused) as refused:
            second.start()
        message = str(refused.value)
        assert "\n" not in message and f"pid {os.getpid()}" in message
        assert "already runs on the SQLite state database" in message and "postgresql://" in message
        assert not second.started

        # the real command line: `serve` stops with that line and exit code 2
        env = {**os.environ, "SLACK_BOT_TOKEN": "xoxb-serve-test", "SLACK_SIGNING_SECRET": "serve-test-secret",
               "SLACK_API_URL": slack.url}
        result = subprocess.run([sys.executable, "-m", "bot.cli", "--config", str(tmp_path / "runbook-bot.yaml"),
                                 "serve", "--http", "--port", "0"], capture_output=True, text=True, timeout=120,
                                cwd=ROOT, env=env)
        assert result.returncode == 2
        last = result.stderr.strip().splitlines()[-1]
        assert "already runs on the SQLite state database" in last and "Traceback" not in result.stderr
    finally:
        first.shutdown()
    again = WatchScheduler(settings, runner_for(settings, slack)).start()   # the lock went with the first
    again.shutdown()


def test_advisory_lock_leader_is_one_at_a_time_and_fails_over(state_pg_url):
    first, second = PostgresLeader(state_pg_url), PostgresLeader(state_pg_url)
    try:
        assert first.is_leader() is True
        assert second.is_leader() is False
        assert first.is_leader() is True             # a leader stays leader (it pings its session)
        first.close()                                # its session ends: the lock goes with it, once the
        wait_for(second.is_leader, timeout=10, what="the second to lead")   # server has ended the backend
        assert second.is_leader() is True
        assert first.is_leader() is False
    finally:
        first.close()
        second.close()
    assert isinstance(leader_for(state_pg_url), PostgresLeader)


def read_log(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_two_scheduler_processes_on_postgresql_send_one_alert(pg_url, state_pg_url, tmp_path, slack):
    """Both replicas schedule every slot; one leads and sends. When it is killed (-9) the other
    takes over at its next slot and keeps updating the same message: still one alert."""
    config = watch_config(tmp_path, pg_url, state_url=state_pg_url, thresholds={"idle_in_transaction_seconds": 0.3},
                          watch={"every_seconds": 5, "misfire_grace_seconds": 10})
    env = {**os.environ, "SLACK_API_URL": slack.url}
    logs = [tmp_path / "replica-a.jsonl", tmp_path / "replica-b.jsonl"]
    with Sessions(pg_url) as s:
        idle = s.open(autocommit=False, application_name="forgotten-shell")
        idle.execute("SELECT 1")
        wait_for(lambda: state_older_than(s, idle.info.backend_pid, 0.4), timeout=10, what="idle 0.4 s")
        replicas = [subprocess.Popen([sys.executable, "-m", "tests.support.watch_replica", str(config), str(log)],
                                     cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True) for log in logs]
        try:
            wait_for(lambda: all(len(read_log(log)) >= 2 for log in logs), timeout=60,
                     what="both replicas to run two slots")
            runs = read_log(logs[0]) + read_log(logs[1])
            by_slot: dict[str, list[str]] = {}
            for run in runs:
                by_slot.setdefault(run["slot"], []).append(run["outcome"])
            both = {slot: sorted(o) for slot, o in by_slot.items() if len(o) == 2}
            assert both and all(outcomes == ["follower", "ran"] for outcomes in both.values()), by_slot
            [alert] = slack.messages(kind="message")
            assert "idle in transaction" in alert.text

            leader_index = 0 if any(r["outcome"] == "ran" for r in read_log(logs[0])) else 1
            survivor_log = logs[1 - leader_index]
            replicas[leader_index].send_signal(signal.SIGKILL)
            replicas[leader_index].wait(timeout=10)
            updates_before = len(slack.calls("chat.update"))
            wait_for(lambda: any(r["outcome"] == "ran" for r in read_log(survivor_log)), timeout=30,
                     what="the surviving replica to take over")
            wait_for(lambda: len(slack.calls("chat.update")) > updates_before, timeout=10, what="an update")
            assert len(slack.calls("chat.postMessage")) == 1
            assert {c.body["ts"] for c in slack.calls("chat.update")} == {alert.ts}
        finally:
            for replica in replicas:
                if replica.poll() is None:
                    replica.stdin.close()
                    try:
                        replica.wait(timeout=30)
                    except subprocess.TimeoutExpired:
                        replica.kill()
                        replica.wait()
                else:
                    replica.stdin.close()
                replica.stdout.close()
                replica.stderr.close()
