"""The scheduled watch on a bad day (issue 15): partitions, flapping, hand-overs, row locks.

Driven as tests/test_watch.py drives it (WatchRunner.run with an injected clock and slot); what
the target reports is real, and the partition is a real TCP proxy in front of the server.
"""
from __future__ import annotations

import json
import math
import threading
import time
from datetime import timedelta

import psycopg
import pytest
from prometheus_client import generate_latest

from bot.localslack import LocalSlack

from runbook.watch import AlertBook
from tests.support.pgsettings import start_server_with
from tests.support.proxy import SilentProxy
from tests.support.sessions import Sessions
from tests.support.slack import CHANNEL_ID
from tests.support.waiting import wait_for
from tests.test_watch import (Watch, load, make_table, make_watch, slack, state_older_than,  # noqa: F401
                              state_url, waited_longer_than, watch_config)


def metric(watch, name: str, environment: str = "production") -> float | None:
    for line in generate_latest(watch.registry).decode().splitlines():
        if line.startswith(f'{name}{{environment="{environment}"}} '):
            return float(line.rsplit(" ", 1)[1])
    return None


def run_within(watch, seconds: float, advance: float) -> str:
    """One watch run that must come back within `seconds` of wall time (it runs in a thread, so a
    run that hangs fails the test instead of hanging it)."""
    result: list[str] = []
    worker = threading.Thread(target=lambda: result.append(watch.run(advance=advance)), daemon=True)
    started = time.monotonic()
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"the watch run still hangs after {seconds} s"
    assert result, "the watch run raised"
    return result[0] + f" in {time.monotonic() - started:.1f} s"


# -- 1. a partition after the handshake ------------------------------------------------------------

@pytest.mark.parametrize("partition, said", [("swallow_queries", "no answer within 2.5 s"),
                                              ("silence", "cannot connect")])
def test_a_partition_that_swallows_queries_is_a_cannot_read_alert_within_two_intervals(pg_url, make_watch, slack,
                                                                                     partition, said):
    """swallow_queries: the handshake passes and every query is lost, so statement_timeout never
    starts on the server; the poll gives up at its own deadline. silence: the handshake itself hangs;
    connect_timeout_seconds ends it. Either way the target is 'cannot read', watch_up 0, its gauges
    unknown, within two intervals."""
    every = 5
    with SilentProxy.to(pg_url) as proxy:
        watch = make_watch(proxy.url_for(pg_url), watch={"every_seconds": every, "resolve_after_seconds": 0})
        assert run_within(watch, 2 * every, every).startswith("ran")
        assert metric(watch, "runbook_bot_watch_up") == 1 and metric(watch, "runbook_bot_watch_lock_waiters") == 0

        getattr(proxy, partition)()
        started = time.monotonic()
        outcome = run_within(watch, 2 * every, every)
        assert outcome.startswith("ran"), outcome
        [alert] = watch.posts()
        assert time.monotonic() - started < 2 * every
        assert alert.text.startswith(":electric_plug: Cannot reach production")
        assert said in json.dumps(alert.blocks), json.dumps(alert.blocks)
        assert metric(watch, "runbook_bot_watch_up") == 0
        for gauge in ("lock_waiters", "long_queries", "idle_in_transaction", "oldest_transaction_seconds"):
            value = metric(watch, f"runbook_bot_watch_{gauge}")
            assert value is None or math.isnan(value), (gauge, value)

        assert run_within(watch, 2 * every, every).startswith("ran")     # still cut off: the same alert
        assert len(watch.posts()) == 1

        proxy.resume()
        run_within(watch, 2 * every, every)
        assert alert.text.startswith("REACHABLE AGAIN") and len(watch.posts()) == 1
        assert metric(watch, "runbook_bot_watch_up") == 1 and metric(watch, "runbook_bot_watch_lock_waiters") == 0


# -- 3. escalation and timing ------------------------------------------------------------------------

class LaggingClock:
    """The watch's clock, `lag` seconds after the slot: how long a poll's work took."""

    def __init__(self, now) -> None:
        self.now, self.lag = now, 0.0

    def __call__(self):
        return self.now + timedelta(seconds=self.lag)

    def advance(self, seconds: float):
        self.now += timedelta(seconds=seconds)
        return self.now


def lagging(watch) -> LaggingClock:
    watch.clock = watch.runner.clock = LaggingClock(watch.clock.now)
    return watch.clock


def idle(s: Sessions, conn: psycopg.Connection, seconds: float = 0.4) -> None:
    conn.execute("SELECT 1")
    wait_for(lambda: state_older_than(s, conn.info.backend_pid, seconds), timeout=10, what=f"idle {seconds} s")


def test_resolve_and_escalation_count_on_the_polls_own_time(pg_url, make_watch):
    """A poll whose work ends earlier than the one before it does not push resolve_after_seconds or
    escalate_after_seconds to the next poll: both count from the poll's own time, its slot."""
    watch = make_watch(pg_url, thresholds={"idle_in_transaction_seconds": 0.3},
                       watch={"resolve_after_seconds": 60}, escalation="  escalate_after_seconds: 120\n")
    clock = lagging(watch)
    with Sessions(pg_url) as s:
        stays, goes = s.open(autocommit=False), s.open(autocommit=False)
        idle(s, stays)
        idle(s, goes)
        clock.lag = 0.5
        watch.run()                                   # both open, in one message
        [message] = watch.posts()
        goes.commit()
        watch.run()                                   # `goes` missed for the first time
        clock.lag = 0.1
        watch.run()                                   # 60 s after it was missed, 120 s after both opened
        states = {a.subject: a.state for a in AlertBook(watch.store).alerts("production", open_only=False)}
        assert states == {str(goes.info.backend_pid): "resolved", str(stays.info.backend_pid): "open"}
        [tag] = watch.replies()
        assert tag.thread_ts == message.ts and "open for 2 min" in tag.text


def test_a_flapping_alert_escalates_on_the_time_it_was_open(pg_url, make_watch, state_url):
    """Open 60 s, resolved, back 9 min later inside the re-open window: the owner is tagged when the
    two episodes add up to escalate_after_seconds, not at once for the 10 minutes since it first opened.
    The resolved line then gives the second episode's figures, not the first's."""
    watch = make_watch(pg_url, thresholds={"idle_in_transaction_seconds": 0.3}, state_url=state_url,
                       watch={"resolve_after_seconds": 60, "reopen_within_seconds": 900},
                       escalation="  escalate_after_seconds: 600\n")
    with Sessions(pg_url) as s:
        conn = s.open(autocommit=False)
        idle(s, conn, 1.5)                            # a first episode idle for 1.5 s (server time)
        watch.run()
        [alert] = watch.posts()
        conn.commit()
        watch.run()
        watch.run()                                   # resolved: open 60 s (until first missed)
        assert alert.text.startswith("RESOLVED") and "lasted at least 1." in alert.text
        watch.clock.advance(400)
        idle(s, conn)
        watch.run(advance=120)                        # back, 640 s after the first opening: re-opened
        assert "came back 1 time" in json.dumps(alert.blocks) and not alert.text.startswith("RESOLVED")
        assert watch.replies() == [], "tagged for the resolved gap"
        watch.run(advance=300)                        # 60 + 300 s open
        assert watch.replies() == []
        watch.run(advance=240)                        # 60 + 540 s open: due
        [tag] = watch.replies()
        assert "open for 10 min" in tag.text
        conn.commit()
        watch.run()
        watch.run()
        assert alert.text.startswith("RESOLVED")
        lasted = alert.text.split("lasted at least ")[1]
        assert not lasted.startswith("1.") and not lasted.startswith("2"), alert.text   # this episode's idle time
        assert len(watch.posts()) == 1 and len(watch.replies()) == 1


def test_a_root_blocker_handing_over_keeps_one_incident(pg_url, make_watch):
    """The holder commits while the migration it held up takes the lock and keeps it: the readers'
    outage goes on behind a new root. One lock alert, carried on under the new root; the roots'
    idle time is told in it, with no idle alert of their own."""
    make_table(pg_url)
    watch = make_watch(pg_url, thresholds={"lock_wait_seconds": 0.3, "idle_in_transaction_seconds": 0.3},
                       watch={"resolve_after_seconds": 0})
    with Sessions(pg_url) as s:
        holder = s.open(autocommit=False, application_name="report-job")
        holder.execute("SELECT count(*) FROM t")
        migration = s.open(autocommit=False, application_name="migrator")
        alter = s.spawn(migration.execute, "ALTER TABLE t ADD COLUMN c int")
        s.wait_until_waiting(migration.info.backend_pid)
        readers = [s.start("SELECT count(*) FROM t /* reader */") for _ in range(3)]
        for reader in readers:
            s.wait_until_waiting(reader.pid)
        wait_for(lambda: waited_longer_than(s, readers[-1].pid, 0.4), timeout=10, what="the readers to wait 0.4 s")
        watch.run()
        [alert] = watch.posts()
        assert f"root blocker pid {holder.info.backend_pid} holds up 4 sessions" in alert.text

        holder.commit()                               # hand-over: the ALTER gets its lock and keeps it
        alter.join(10)
        assert not alter.is_alive()
        wait_for(lambda: state_older_than(s, migration.info.backend_pid, 0.4), timeout=10, what="the migration idle")
        assert all(not r.done for r in readers)
        watch.run()
        watch.run()
        assert len(watch.posts()) == 1, [m.text for m in watch.posts()]
        assert f"root blocker pid {migration.info.backend_pid} holds up 3 sessions" in alert.text
        assert f"Root blocker before: pid {holder.info.backend_pid}" in json.dumps(alert.blocks)
        assert not alert.text.startswith("RESOLVED")

        migration.commit()
        wait_for(lambda: all(r.done for r in readers), timeout=10, what="the readers to get through")
        watch.run()
        assert alert.text.startswith("RESOLVED") and len(watch.posts()) == 1
    assert [e.outcome for e in watch.store.events(action="alert")] == ["resolved", "opened"]


# -- 4. content ---------------------------------------------------------------------------------------

def test_a_row_lock_wait_names_its_table_and_is_not_counted_as_a_long_query(pg_url, make_watch):
    make_table(pg_url)
    watch = make_watch(pg_url, thresholds={"lock_wait_seconds": 0.3, "long_query_seconds": 0.3,
                                           "idle_in_transaction_seconds": 3600})
    with Sessions(pg_url) as s:
        first = s.open(autocommit=False, application_name="worker-1")
        first.execute("UPDATE t SET id = id WHERE id = 1")
        second = s.start("UPDATE t SET id = id WHERE id = 1 /* second */", application_name="worker-2")
        s.wait_until_waiting(second.pid)
        sleeper = s.start("SELECT pg_sleep(60) /* long */")
        s.wait_until_active(sleeper.pid, "long")
        wait_for(lambda: waited_longer_than(s, second.pid, 0.4) and state_older_than(s, sleeper.pid, 0.4),
                 timeout=10, what="the wait and the query to pass 0.4 s")
        watch.run()
        [lock] = [m for m in watch.posts() if "Lock wait" in m.text]
        assert "waiting" in json.dumps(lock.blocks) and "for ShareLock on a row of `t`" in json.dumps(lock.blocks)
    assert metric(watch, "runbook_bot_watch_lock_waiters") == 1
    assert metric(watch, "runbook_bot_watch_long_queries") == 1          # the pg_sleep only


def test_two_long_queries_back_to_back_on_one_connection_are_two_alerts(pg_url, make_watch):
    watch = make_watch(pg_url, thresholds={"long_query_seconds": 0.3}, watch={"resolve_after_seconds": 0})
    with Sessions(pg_url) as s:
        pooled = s.open(application_name="pool")
        pid = pooled.info.backend_pid

        def two_queries() -> None:
            try:
                pooled.execute("SELECT pg_sleep(1.5) /* first */")
                pooled.execute("SELECT pg_sleep(60) /* second */")
            except psycopg.Error:
                pass                                  # cancelled at the end of the test

        s.spawn(two_queries)
        s.wait_until_active(pid, "first")
        wait_for(lambda: state_older_than(s, pid, 0.4), timeout=10, what="the first query to pass 0.4 s")
        watch.run()
        s.wait_until_active(pid, "second")
        wait_for(lambda: state_older_than(s, pid, 0.4), timeout=10, what="the second query to pass 0.4 s")
        watch.run()
        first, second = watch.posts()
        assert first.text.startswith("RESOLVED") and "first" in json.dumps(first.blocks)
        assert "second" in json.dumps(second.blocks) and not second.text.startswith("RESOLVED")
        s.observe("SELECT pg_cancel_backend(%s)", (pid,))


# -- 2. storms --------------------------------------------------------------------------------------

STORM = 200


@pytest.fixture(scope="module")
def storm_server():
    """A server of its own with room for 200 misbehaving sessions and the test's own."""
    server = start_server_with({"max_connections": str(STORM + 60)})
    try:
        yield server
    finally:
        server.stop()


def test_a_storm_of_200_long_queries_is_one_message_one_tag_and_a_new_lock_wait_is_not_held_up(storm_server, tmp_path):
    """With Slack's per-channel limits enforced (429s), 200 long queries are one message, edited only
    when it changes and tagged once; a lock wait that starts during the storm is posted by the first
    poll after its threshold, that poll taking under 2 s (threshold + interval + 2 s at most)."""
    url = storm_server.create_database("storm")
    make_table(url)
    limits = {"chat.postMessage": (1, 1.0), "chat.update": (50, 60.0)}
    with LocalSlack(rate_limits=limits, joined=(CHANNEL_ID,)) as local:
        watch = Watch(load(watch_config(tmp_path, url, thresholds={"long_query_seconds": 1, "lock_wait_seconds": 1},
                                        watch={"every_seconds": 5},
                                        escalation="  escalate_after_seconds: 60\n")), local)
        try:
            with Sessions(url) as s:
                storm = [s.start(f"SELECT pg_sleep(120) /* storm {i} */", application_name="batch") for i in range(STORM)]
                wait_for(lambda: state_older_than(s, storm[-1].pid, 1.2), timeout=30, what="the storm to pass 1.2 s")
                assert run_within(watch, 10, 5).startswith("ran")
                [storm_message] = watch.posts()
                assert f"{STORM} sessions" in storm_message.text and "more" in json.dumps(storm_message.blocks)

                holder = s.open(autocommit=False, application_name="holder")
                holder.execute("UPDATE t SET id = id WHERE id = 1")
                waiter = s.start("UPDATE t SET id = id WHERE id = 1 /* new lock wait */", application_name="api")
                s.wait_until_waiting(waiter.pid)
                for _ in range(3):                    # storm polls while the wait grows
                    assert run_within(watch, 10, 5).startswith("ran")
                wait_for(lambda: waited_longer_than(s, waiter.pid, 1.1), timeout=10, what="the wait to pass 1.1 s")
                started = time.monotonic()
                run_within(watch, 10, 5)
                took = time.monotonic() - started
                lock = [m for m in watch.posts() if "Lock wait" in m.text]
                assert len(lock) == 1 and took < 2.0, (took, [m.text for m in watch.posts()])

                for _ in range(12):                   # a minute on: escalation, once
                    run_within(watch, 10, 5)
                tags = [r for r in watch.replies() if r.thread_ts == storm_message.ts]
                assert len(tags) == 1 and f"{STORM} sessions" in tags[0].text
                assert len([m for m in watch.posts() if "Long query" in m.text]) == 1
                assert storm_message.updates <= 2      # the storm did not change: a refresh at most
                assert not [c for c in local.calls() if c.status == 429 and c.method == "chat.update"]
        finally:
            watch.close()
