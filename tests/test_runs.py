"""Run rows with a heartbeat: a run whose process died is marked interrupted once, never resumed."""
from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta

import pytest
from sqlalchemy import update

from runbook.state import Store
from runbook.state.models import RunRow, utcnow
from runbook.state.runs import Heartbeat, RunStore, process_alive


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    url = f"sqlite:///{tmp_path}/state.db" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    s = Store(url)
    s.migrate()
    yield s
    s.close()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _set(store: Store, run_id: str, **values) -> None:
    with store.session() as session, session.begin():
        session.execute(update(RunRow).where(RunRow.id == run_id).values(**values))


def test_a_dead_process_on_this_host_is_reaped_once(store):
    runs = RunStore(store, host="bot-1")
    run = runs.start(kind="migrate", environment="production", actor="U0ALICE01", from_revision="0001",
                     target_revision="0003")
    _set(store, run.id, pid=_dead_pid(), step="upgrade 0002 (1/2)")
    mine = runs.start(kind="migrate", environment="staging", actor="cli:ops")     # this process: alive

    reaped = runs.reap()
    assert [r.id for r in reaped] == [run.id]
    got = runs.get(run.id)
    assert got.state == "interrupted" and got.finished_at is not None
    assert "during 'upgrade 0002 (1/2)'" in got.summary and "Not resumed" in got.summary
    assert runs.get(mine.id).state == "running"
    events = [e for e in store.events(limit=10) if e.run_id == run.id]
    assert len(events) == 1 and events[0].outcome == "interrupted" and events[0].action == "migrate"

    assert RunStore(store, host="bot-1").reap() == []                 # a second reaper changes nothing
    assert not runs.heartbeat(run.id) and not runs.finish(run.id, "succeeded")   # a late beat cannot revive it


def test_another_replica_reaps_a_stale_heartbeat_but_not_a_fresh_one(store):
    theirs = RunStore(store, host="bot-2")
    stale = theirs.start(kind="rollback", environment="production", actor="U0ALICE01")
    fresh = theirs.start(kind="migrate", environment="staging", actor="U0ALICE01")
    _set(store, stale.id, heartbeat_at=utcnow() - timedelta(minutes=5))
    reaped = RunStore(store, host="bot-1").reap(stale_after_seconds=30)
    assert [r.id for r in reaped] == [stale.id]
    assert "no heartbeat from pid" in reaped[0].summary
    assert theirs.get(fresh.id).state == "running"


def test_heartbeat_thread_beats_and_records_the_step(store):
    runs = RunStore(store)
    run = runs.start(kind="migrate", environment="production", actor="cli:ops")
    _set(store, run.id, heartbeat_at=utcnow() - timedelta(minutes=5))
    with Heartbeat(runs, run.id, every_seconds=0.05) as beat:
        beat.set_step("upgrade 0003 (2/2)")
    got = runs.get(run.id)
    assert got.step == "upgrade 0003 (2/2)" and got.heartbeat_at > utcnow() - timedelta(seconds=30)
    assert runs.finish(run.id, "succeeded", summary="done", result={"to": ["0003"]})
    assert runs.get(run.id).result == {"to": ["0003"]}
    with pytest.raises(ValueError):
        runs.finish(run.id, "running")


def test_process_alive():
    assert process_alive(os.getpid())
    assert not process_alive(_dead_pid()) and not process_alive(0)


def test_the_bot_reaps_at_start(tmp_path):
    """Runtime.build (what `serve` runs) marks a dead run interrupted before taking any request."""
    from bot.localslack import LocalSlack
    from bot.server import Runtime
    from tests.support.configs import settings_for

    settings = settings_for(tmp_path, "postgresql://ops@127.0.0.1:1/unused")
    store = Store(settings.state_url)
    store.migrate()
    run = RunStore(store).start(kind="rollback", environment="production", actor="U0ALICE01")
    _set(store, run.id, pid=_dead_pid())
    with LocalSlack() as slack:
        runtime = Runtime.build(settings, bot_token="xoxb-test-token-1", api_url=slack.url, warm=False)
        runtime.close()
    assert RunStore(store).get(run.id).state == "interrupted"


def test_interrupted_runs_whose_request_still_says_executing_are_found_until_it_is_closed(store):
    from runbook.state.approvals import ApprovalStore

    requests = ApprovalStore(store)

    def request(state: str) -> str:
        return requests.create(kind="migrate", environment="production", requester="U0ALICE01", params={},
                               required=1, expires_at=utcnow() + timedelta(minutes=5), state=state).id

    runs = RunStore(store, host="bot-1")
    open_one = runs.start(kind="migrate", environment="production", actor="U0ALICE01", approval_id=request("executing"))
    closed_one = runs.start(kind="migrate", environment="production", actor="U0ALICE01", approval_id=request("failed"))
    no_request = runs.start(kind="migrate", environment="production", actor="cli:ops")
    still_running = runs.start(kind="rollback", environment="production", actor="U0ALICE01",
                               approval_id=request("executing"))
    for run in (open_one, closed_one, no_request):
        _set(store, run.id, pid=_dead_pid(), step="upgrade 0002 (1/2)")
    assert runs.interrupted_with_open_request() == []                    # nothing interrupted yet
    assert {r.id for r in runs.reap()} == {open_one.id, closed_one.id, no_request.id}
    [found] = runs.interrupted_with_open_request()
    assert found.id == open_one.id and found.state == "interrupted" and still_running.id != found.id
    assert requests.transition(open_one.approval_id, ["executing"], "failed")
    assert runs.interrupted_with_open_request() == []


def test_a_follow_up_is_claimed_once_per_run_even_by_concurrent_callers(store):
    from concurrent.futures import ThreadPoolExecutor
    from threading import Barrier

    runs = RunStore(store)
    first, second = (runs.start(kind="migrate", environment="production", actor="cli:ops") for _ in range(2))
    barrier = Barrier(8)

    def claim(n: int) -> bool:
        barrier.wait(timeout=30)
        return RunStore(store).claim_follow_up(first.id, "incident", f"replica-{n}")

    with ThreadPoolExecutor(8) as pool:
        won = list(pool.map(claim, range(8)))
    assert won.count(True) == 1
    assert not runs.claim_follow_up(first.id, "incident", "later")              # and never again
    assert runs.claim_follow_up(first.id, "other", "x") and runs.claim_follow_up(second.id, "incident", "x")


def test_interruption_is_where_and_why_without_the_cli_advice(store):
    from runbook.state.runs import interruption

    runs = RunStore(store, host="bot-1")
    run = runs.start(kind="migrate", environment="production", actor="U0ALICE01")
    _set(store, run.id, pid=_dead_pid(), step="upgrade 0002 (1/2)")
    [reaped] = runs.reap()
    assert reaped.summary.startswith(interruption(reaped)) and "Not resumed" in reaped.summary
    assert interruption(reaped).startswith("interrupted during 'upgrade 0002 (1/2)': its process (pid ")
    assert interruption(reaped).endswith("on bot-1) is gone") and "runbook-bot status" not in interruption(reaped)
