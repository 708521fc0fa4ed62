"""A request whose run finished but whose bot process died before closing it (issue 13's family, issue 12's
run lifecycle): the run's row says succeeded or failed, the request still says executing. The next start
(or a replica's reaper tick) closes it as the run ended, once: the run's summary, its message updated in
place, one event, and for a failed run its incident summary once; a request this very process holds is
left to it (it may be closing it this instant).

The death is simulated as test_interrupted_runs does: a real request posted by the real Runtime, its run's
row finished, the request held by a pid that is dead. Real PostgreSQL state (and SQLite), real approvals
service; only Slack is faked (LocalSlack).
"""
from __future__ import annotations

import os
from typing import Any

import pytest
from sqlalchemy import update

from runbook.state.approvals import ApprovalStore
from runbook.state.models import ApprovalRow
from runbook.state.runs import RunStore
from tests.support.bots import pg_state_url  # noqa: F401  (fixture)
from tests.support.configs import with_password
from tests.support.sample_app import REV_0003
from tests.support.slack import local_slack  # noqa: F401  (fixture)
from tests.support.waiting import all_at_once
from tests.test_interrupted_runs import (CHANNEL, PASSWORD, REQUESTER, buttons, dead_pid, everything_slack_saw,
                                         next_start, runtimes, summaries_in, updates_of, write_config)  # noqa: F401

TARGET = "0004_slow"


def executing_request_whose_run_finished(config, slack_url: str, runtimes: list, *, state: str,
                                         holder_pid: int | None = None) -> tuple[Any, Any]:
    """A real migrate request, posted and approved, executing, held by `holder_pid` (default: a dead pid on
    this host); its run's row finished `state` with what runbook.migrate records (result_to_json's keys)."""
    first = next_start(config, slack_url, runtimes)
    request = first.flows.migrations.request("production", "upgrade", "head", REQUESTER, "/migrate run", CHANNEL)
    requests = ApprovalStore(first.store)
    assert requests.transition(request.id, ["pending"], "approved")
    assert requests.transition(request.id, ["approved"], "executing", hold=True)
    first.flows.approvals.sync_message(request.id)
    runs = RunStore(first.store)
    run = runs.start(kind="migrate", environment="production", actor=REQUESTER, from_revision=REV_0003,
                     target_revision=TARGET, approval_id=request.id)
    ok = state == "succeeded"
    result = {"run_id": run.id, "environment": "production", "direction": "upgrade",
              "outcome": state, "ok": ok, "target": TARGET, "from": [REV_0003], "to": [TARGET if ok else REV_0003],
              "attempts": 1, "error": None if ok else "division by zero", "duration_seconds": 2.5,
              "validation": {"passed": True} if ok else None, "log_path": None, "rehearsal": None}
    assert runs.finish(run.id, state, summary=f"upgrade production -> {TARGET}: {state}", result=result)
    with first.store.session() as session, session.begin():
        session.execute(update(ApprovalRow).where(ApprovalRow.id == request.id)
                        .values(claimed_pid=dead_pid() if holder_pid is None else holder_pid))
    return requests.get(request.id), runs.get(run.id)


def closing_events(store, request) -> list[Any]:
    return [e for e in store.events(limit=200, run_id=request.id) if e.details.get("closed_for")]


@pytest.mark.parametrize("state_kind", ["postgresql", "sqlite"])
def test_a_request_whose_run_succeeded_before_its_bot_died_is_closed_done_at_the_next_start(
        state_kind, sample_db, pg_state_url, tmp_path, pg_bin_dir, local_slack, runtimes):
    state_url = pg_state_url if state_kind == "postgresql" else f"sqlite:///{tmp_path / 'state.db'}"
    config = write_config(tmp_path, with_password(sample_db(REV_0003), PASSWORD), state_url, pg_bin_dir)
    request, run = executing_request_whose_run_finished(config, local_slack.url, runtimes, state="succeeded")
    assert "running" in local_slack.message(request.channel, request.message_ts).text
    updates_before = len(updates_of(local_slack, request.message_ts))

    store = next_start(config, local_slack.url, runtimes).store
    closed = ApprovalStore(store).get(request.id)
    assert closed.state == "done"
    assert closed.result_summary == f"production went from {REV_0003} to {TARGET} in 2.5 s; validation passed"
    assert closed.result["run_id"] == run.id and closed.result["validation"] is True
    message = local_slack.message(request.channel, request.message_ts)
    assert message.text.startswith("Migration production: done"), message.text
    assert buttons(message) == [] and len(updates_of(local_slack, request.message_ts)) == updates_before + 1
    [event] = closing_events(store, request)
    assert event.outcome == "ok" and event.details["run_id"] == run.id and str(request.claimed_pid) in \
        event.details["closed_for"]
    assert summaries_in(local_slack, None) == []          # a run that succeeded has no incident
    # the reaper's next tick, and the next start, change nothing
    runtimes[-1].reap_interrupted_runs()
    next_start(config, local_slack.url, runtimes)
    assert len(updates_of(local_slack, request.message_ts)) == updates_before + 1
    assert len(closing_events(store, request)) == 1


def test_two_replicas_close_a_request_whose_run_failed_once_with_one_incident_summary(
        sample_db, pg_state_url, tmp_path, pg_bin_dir, local_slack, runtimes):
    config = write_config(tmp_path, with_password(sample_db(REV_0003), PASSWORD), pg_state_url, pg_bin_dir)
    request, run = executing_request_whose_run_finished(config, local_slack.url, runtimes, state="failed")
    updates_before = len(updates_of(local_slack, request.message_ts))
    failures = all_at_once(lambda: next_start(config, local_slack.url, runtimes))
    assert failures == [] and len(runtimes) == 3
    store = runtimes[0].store
    closed = ApprovalStore(store).get(request.id)
    assert closed.state == "failed" and RunStore(store).get(run.id).state == "failed"
    assert closed.result_summary.startswith("failed: division by zero; production is at")
    assert len(updates_of(local_slack, request.message_ts)) == updates_before + 1      # updated once, in place
    message = local_slack.message(request.channel, request.message_ts)
    assert "running" not in message.text.lower() and buttons(message) == []
    assert len(closing_events(store, request)) == 1
    assert len(summaries_in(local_slack, request.message_ts)) == 1 and len(summaries_in(local_slack, None)) == 1
    for runtime in runtimes:                  # a late reaper tick on any replica changes nothing
        runtime.reap_interrupted_runs()
    assert len(updates_of(local_slack, request.message_ts)) == updates_before + 1
    assert len(summaries_in(local_slack, None)) == 1 and len(closing_events(store, request)) == 1
    assert PASSWORD not in everything_slack_saw(local_slack)


def test_a_request_this_very_process_holds_is_left_to_it_between_its_run_end_and_its_close(
        sample_db, pg_state_url, tmp_path, pg_bin_dir, local_slack, runtimes):
    config = write_config(tmp_path, with_password(sample_db(REV_0003), PASSWORD), pg_state_url, pg_bin_dir)
    request, run = executing_request_whose_run_finished(config, local_slack.url, runtimes, state="succeeded",
                                                        holder_pid=os.getpid())
    updates_before = len(updates_of(local_slack, request.message_ts))
    runtimes[0].reap_interrupted_runs()
    next_start(config, local_slack.url, runtimes)
    store = runtimes[0].store
    assert ApprovalStore(store).get(request.id).state == "executing"
    assert len(updates_of(local_slack, request.message_ts)) == updates_before and closing_events(store, request) == []
    # once this process is gone (another pid on this host, dead), the same request is closed
    with store.session() as session, session.begin():
        session.execute(update(ApprovalRow).where(ApprovalRow.id == request.id).values(claimed_pid=dead_pid()))
    runtimes[0].reap_interrupted_runs()
    assert ApprovalStore(store).get(request.id).state == "done"


def test_a_holder_on_another_host_that_finishes_after_a_replica_closed_its_request_says_nothing_twice(
        sample_db, pg_state_url, tmp_path, pg_bin_dir, local_slack, runtimes):
    """The holder (on a host the replica cannot ask) took longer than the grace after its run ended; the
    replica closed the request; the holder's own close then loses and adds no event, reply or follow-up."""
    from datetime import timedelta

    from bot.approvals import ApprovalKind, Outcome
    from runbook.state.models import RunRow, utcnow

    config = write_config(tmp_path, with_password(sample_db(REV_0003), PASSWORD), pg_state_url, pg_bin_dir)
    holder, replica = next_start(config, local_slack.url, runtimes), next_start(config, local_slack.url, runtimes)
    store = holder.store
    long_ago = utcnow() - timedelta(minutes=20)

    def execute(request: Any) -> Outcome:
        runs = RunStore(store)
        run = runs.start(kind="migrate", environment="production", actor=REQUESTER, approval_id=request.id)
        assert runs.finish(run.id, "succeeded", summary="the slow holder's run succeeded")
        with store.session() as session, session.begin():       # its holder elsewhere, silent for 20 minutes
            session.execute(update(ApprovalRow).where(ApprovalRow.id == request.id)
                            .values(claimed_host="another-host", updated_at=long_ago))
            session.execute(update(RunRow).where(RunRow.id == run.id).values(finished_at=long_ago))
        assert replica.flows.migrations.follow_up_left_after_run() == [request.id]
        return Outcome(True, "the holder's own words, too late")

    for runtime in (holder, replica):
        runtime.flows.approvals.register(ApprovalKind("slowclose", "Slow close", execute))
    request = holder.flows.approvals.request("slowclose", "production", REQUESTER, {})
    assert ApprovalStore(store).transition(request.id, ["pending"], "approved", hold=True)
    final = holder.flows.approvals.execute(request.id)
    assert final.state == "done" and final.result_summary == "the slow holder's run succeeded"
    outcomes = [e.outcome for e in store.events(limit=50, run_id=request.id)]
    assert outcomes.count("ok") == 1 and len(closing_events(store, request)) == 1
    replies = [m for m in local_slack.messages(kind="message") if m.thread_ts == request.message_ts]
    assert len(replies) == 1
    assert "the holder's own words" not in local_slack.message(request.channel, request.message_ts).text
