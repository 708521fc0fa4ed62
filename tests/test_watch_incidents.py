"""The scheduled watch on a bad day (issue 15): partitions, flapping, hand-overs, row locks.

Driven as tests/test_watch.py drives it (WatchRunner.run with an injected clock and slot); what
the target reports is real, and the partition is a real TCP proxy in front of the server.
"""
from __future__ import annotations

import json
import math
import threading
import time

import psycopg
from prometheus_client import generate_latest

from tests.support.proxy import SilentProxy
from tests.support.sessions import Sessions
from tests.support.waiting import wait_for
from tests.test_watch import (make_table, make_watch, slack, state_older_than,  # noqa: F401  (fixtures)
                              waited_longer_than)


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

def test_a_partition_that_swallows_queries_is_a_cannot_read_alert_within_two_intervals(pg_url, make_watch, slack):
    """The handshake passes and every query is lost: statement_timeout never starts on the server. The
    poll gives up at its own deadline, the target is 'cannot read', watch_up 0, its gauges unknown."""
    every = 5
    with SilentProxy.to(pg_url) as proxy:
        watch = make_watch(proxy.url_for(pg_url), watch={"every_seconds": every, "resolve_after_seconds": 0})
        assert run_within(watch, 2 * every, every).startswith("ran")
        assert metric(watch, "runbook_bot_watch_up") == 1 and metric(watch, "runbook_bot_watch_lock_waiters") == 0

        proxy.swallow_queries()
        started = time.monotonic()
        outcome = run_within(watch, 2 * every, every)
        assert outcome.startswith("ran"), outcome
        [alert] = watch.posts()
        assert time.monotonic() - started < 2 * every
        assert alert.text.startswith(":electric_plug: Cannot reach production")
        assert "no answer within 2.5 s" in json.dumps(alert.blocks)
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
