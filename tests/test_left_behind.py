"""No request or message left behind (issue 13 §3).

* An approved request whose execution never started (the bot was killed after the final click, before
  its run began; or its executor's queue was full) is closed in place: its Slack message (by its stored
  channel and ts) says it never started and how to ask again, without buttons; once, with one event.
  A click refused because the executor is full is audited.
* A run that ends while Slack answers 500 (longer than the Web API client retries) leaves its request
  and its live monitor behind; the reconcile brings both up to date from the state database, one
  update each, and a second reconcile changes nothing.

The bot runs as a real `runbook-bot serve` process (killed with SIGKILL) or as the real Runtime behind
its real HTTP server; real PostgreSQL targets, real Alembic; only Slack is faked (LocalSlack).
"""
from __future__ import annotations

import json
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from bot.approvals import ACTION_APPROVE
from bot.flows import Busy
from bot.server import RECONCILE_JOB, Runtime
from runbook.config import parse_settings
from runbook.state import Store
from runbook.state.approvals import ApprovalStore
from runbook.state.runs import RunStore
from tests.support.bots import BOT_TOKEN, bots, pg_state_url, start_bot  # noqa: F401  (fixtures)
from tests.support.configs import config_text, with_password
from tests.support.migrations import app_copy
from tests.support.sample_app import APP_DIR, REV_0001, REV_0003
from tests.support.slack import SIGNING_SECRET, block_actions_body, local_slack, signed_post, slash_command_body  # noqa: F401
from tests.support.waiting import wait_for

PASSWORD = "Left-B3hind-Secret"
CHANNEL = "C0LEFTBEHI"
REQUESTER, ALICE = "U0REQUEST1", "U0ALICE001"
# long enough for the test to read the live monitor before the run ends
PAUSE = ("0004_pause", "op.execute('SELECT pg_sleep(3)')", "pass")


def write_config(tmp_path: Path, target: str, state_url: str, pg_bin_dir: Path, app_dir: Path = APP_DIR) -> Path:
    extra = (f"    pg_bin_dir: {json.dumps(str(pg_bin_dir))}\n"
             "    migration: {lock_timeout: 2s, retries: 0}")
    text = config_text(target, channel=CHANNEL, approvers=(ALICE,), state_url=state_url,
                       backups_dir=str(tmp_path / "backups"), approvals={"required": 1}, extra_env=extra)
    path = tmp_path / "runbook-bot.yaml"
    path.write_text(text.replace(json.dumps(str(APP_DIR)), json.dumps(str(app_dir))))
    return path


@pytest.fixture
def runtimes():
    """Runtime.build(...) of each start in this process (and its HTTP server), closed at the end."""
    built: list[tuple[Runtime, Any]] = []
    yield built
    for runtime, server in built:
        if server is not None:
            server.close()
        runtime.close()


def start(config: Path, slack_url: str, runtimes: list, *, serve: bool = False) -> Runtime:
    """What `runbook-bot serve` does when it starts (Runtime.build), optionally behind its HTTP server."""
    runtime = Runtime.build(parse_settings(config.read_text(), source=config), bot_token=BOT_TOKEN,
                            api_url=slack_url, signing_secret=SIGNING_SECRET, warm=False)
    server = runtime.serve_http("127.0.0.1", 0, background=True) if serve else None
    runtimes.append((runtime, server))
    if server is not None:
        runtime.url = server.url + "/slack/events"
    return runtime


def buttons(message: Any) -> list[dict]:
    return [e for b in message.blocks if b["type"] == "actions" for e in b["elements"]]


def shown(message: Any) -> str:
    return json.dumps(message.blocks, ensure_ascii=False)


def updates_of(slack: Any, ts: str, status: int | None = 200) -> list[Any]:
    return [c for c in slack.calls("chat.update") if c.body.get("ts") == ts and (status is None or c.status == status)]


def events_of(store: Store, request_id: str, outcome: str) -> list[Any]:
    return [e for e in store.events(limit=1000) if e.run_id == request_id and e.outcome == outcome]


def posted_request(store: Store, kind: str = "migrate") -> Any:
    requests = ApprovalStore(store)
    return wait_for(lambda: next((r for r in requests.list() if r.kind == kind and r.message_ts), None),
                    timeout=60, what=f"the {kind} request, posted")


def assert_closed_as_never_started(slack: Any, request: Any) -> None:
    """Its own message (same channel and ts): never started, nothing ran, how to ask again, no buttons."""
    message = slack.message(request.channel, request.message_ts)
    assert message.text.startswith("Migration production: never started"), message.text
    assert buttons(message) == []
    text = shown(message)
    assert "Never started" in text and "nothing ran" in text
    assert "ask again with `/migrate run production head`" in text, text
    assert "starting" not in message.text and "running" not in message.text


def test_a_bot_killed_after_the_final_approval_closes_the_request_that_never_started_at_the_next_start(
        sample_db, pg_state_url, tmp_path, pg_bin_dir, local_slack, bots, runtimes):
    target = with_password(sample_db(REV_0001), PASSWORD)
    config = write_config(tmp_path, target, pg_state_url, pg_bin_dir)
    bot = start_bot("bot", config, tmp_path, local_slack.url)
    bots.append(bot)
    bot.wait_healthy()
    store = Store(pg_state_url)
    requests = ApprovalStore(store)
    try:
        assert bot.post(slash_command_body("run", user_id=REQUESTER, channel_id=CHANNEL)).status == 200
        request = posted_request(store)
        # Slack holds the final click's message update (429, Retry-After 60): the bot is past the approval,
        # its execution still waiting behind that update, when it is killed
        local_slack.fail_next("chat.update", status=429, retry_after=60, times=5, match={"ts": request.message_ts})
        assert bot.post(block_actions_body(ACTION_APPROVE, request.id, user_id=ALICE, channel_id=request.channel,
                                           message_ts=request.message_ts)).status == 200
        wait_for(lambda: requests.get(request.id).state == "approved"
                 and updates_of(local_slack, request.message_ts, status=429), timeout=60,
                 what="the approval, its message update held by Slack")
        bot.kill()
        local_slack.clear_faults()
        held = requests.get(request.id)
        assert (held.state, held.claimed_pid) == ("approved", bot.pid) and held.claimed_host
        assert RunStore(store).list() == []
        assert "approval needed" in local_slack.message(request.channel, request.message_ts).text   # left behind
        assert updates_of(local_slack, request.message_ts) == []

        start(config, local_slack.url, runtimes)
        closed = requests.get(request.id)
        assert closed.state == "failed" and closed.result["outcome"] == "not_started"
        assert closed.result_summary.startswith(f"approved, but never started: the bot process that held it "
                                                f"(pid {bot.pid} on ")
        assert closed.result_summary.endswith("; nothing ran")
        assert len(updates_of(local_slack, request.message_ts)) == 1          # updated once, in place
        assert_closed_as_never_started(local_slack, request)
        [event] = events_of(store, request.id, "not-started")
        assert (event.actor, event.action, event.environment) == ("runbook-bot", "migrate", "production")
        assert event.details["pid"] == bot.pid and event.details["approved_by"] == [ALICE]
        assert RunStore(store).list() == []                                    # nothing ran
        assert closed.rendered

        # the next start, and the reaper's tick, leave it as it is
        again = start(config, local_slack.url, runtimes)
        again.reap_interrupted_runs()
        assert len(updates_of(local_slack, request.message_ts)) == 1
        assert len(events_of(store, request.id, "not-started")) == 1
        assert requests.get(request.id).version == closed.version
        assert PASSWORD not in json.dumps([c.body for c in local_slack.calls()], default=str) + bot.log()
    finally:
        store.close()


def test_an_approval_the_full_executor_cannot_start_is_closed_at_once_and_busy_clicks_are_audited(
        sample_db, tmp_path, pg_bin_dir, local_slack, runtimes):
    target = with_password(sample_db(REV_0001), PASSWORD)
    config = write_config(tmp_path, target, f"sqlite:///{tmp_path / 'state.db'}", pg_bin_dir)
    runtime = start(config, local_slack.url, runtimes, serve=True)
    flows, store = runtime.flows, runtime.store
    assert signed_post(runtime.url, slash_command_body("run", user_id=REQUESTER, channel_id=CHANNEL)).status == 200
    request = posted_request(store)
    assert flows.wait_idle(timeout=60)
    # the final click's own message update is held a moment (429, Retry-After 2); meanwhile the executor fills up
    local_slack.fail_next("chat.update", status=429, retry_after=2, times=1, match={"ts": request.message_ts})
    assert signed_post(runtime.url, block_actions_body(ACTION_APPROVE, request.id, user_id=ALICE,
                                                       channel_id=request.channel,
                                                       message_ts=request.message_ts)).status == 200
    wait_for(lambda: updates_of(local_slack, request.message_ts, status=429), timeout=30, what="the held update")
    release = threading.Event()
    filled = 0
    try:
        with pytest.raises(Busy):
            for _ in range(200):
                flows.submit_call(release.wait, 120)
                filled += 1
        assert filled > 0
        requests = ApprovalStore(store)
        closed = wait_for(lambda: (r := requests.get(request.id)) and r.state == "failed" and r, timeout=60,
                          what="the approved request to be closed")
        assert closed.result["outcome"] == "not_started" and "too busy to start it" in closed.result_summary
        wait_for(lambda: "never started" in local_slack.message(request.channel, request.message_ts).text,
                 timeout=30, what="the message to say so")
        assert_closed_as_never_started(local_slack, request)
        wait_for(lambda: events_of(store, request.id, "busy") and len(events_of(store, request.id, "busy")) == 2,
                 timeout=30, what="the closing and the refused click, audited")
        closing, refused = sorted(events_of(store, request.id, "busy"), key=lambda e: e.actor != "runbook-bot")
        assert closing.actor == "runbook-bot" and closing.summary.startswith("approved, but never started")
        assert refused.actor == ALICE and refused.action == "approve"
        [line] = wait_for(lambda: [m.text for m in local_slack.messages(kind="ephemeral") if m.user == ALICE],
                          timeout=30, what="the clicker told")
        assert "too busy to start the migration" in line and "/migrate run production head" in line
        assert len(events_of(store, request.id, "approved")) == 1

        # a click that the full executor cannot even take: refused by response_url, and audited
        assert flows.wait_idle(timeout=0.1) is False
        with pytest.raises(Busy):               # the slot the first click held is taken too
            for _ in range(5):
                flows.submit_call(release.wait, 120)
        url = local_slack.response_url("busy-click")
        assert signed_post(runtime.url, block_actions_body(ACTION_APPROVE, request.id, user_id=ALICE,
                                                           channel_id=request.channel, message_ts=request.message_ts,
                                                           response_url=url)).status == 200
        [answer] = wait_for(lambda: local_slack.responses("busy-click"), timeout=30, what="the refusal")
        assert "busy" in answer.text
        [event] = [e for e in store.events(limit=1000) if e.outcome == "busy" and e.run_id is None]
        assert (event.actor, event.action, event.environment) == (ALICE, "approve", None)
        assert event.summary.startswith("click refused, nothing was changed: the bot is busy")
        assert event.details["button_value"] == request.id
    finally:
        release.set()
    assert flows.wait_idle(timeout=60)
    assert RunStore(store).list() == [] and ApprovalStore(store).get(request.id).state == "failed"


def test_a_run_that_ends_during_a_slack_outage_is_shown_done_after_the_reconcile(
        sample_db, tmp_path, pg_bin_dir, local_slack, runtimes):
    target = with_password(sample_db(REV_0003), PASSWORD)
    config = write_config(tmp_path, target, f"sqlite:///{tmp_path / 'state.db'}", pg_bin_dir,
                          app_dir=app_copy(tmp_path, [PAUSE]))
    runtime = start(config, local_slack.url, runtimes, serve=True)
    flows, store = runtime.flows, runtime.store
    requests = ApprovalStore(store)
    assert signed_post(runtime.url, slash_command_body("run", user_id=REQUESTER, channel_id=CHANNEL)).status == 200
    request = posted_request(store)
    assert signed_post(runtime.url, block_actions_body(ACTION_APPROVE, request.id, user_id=ALICE,
                                                       channel_id=request.channel,
                                                       message_ts=request.message_ts)).status == 200
    monitor = wait_for(lambda: next((m for m in local_slack.messages(CHANNEL, kind="message")
                                     if m.thread_ts == request.message_ts
                                     and m.text.startswith("Migration production: ")), None),
                       timeout=60, what="the live monitor")
    wait_for(lambda: "running" in local_slack.message(request.channel, request.message_ts).text, timeout=30,
             what="the request to say running")
    local_slack.fail_next("chat.update", status=500, times=10_000)          # Slack's outage begins
    wait_for(lambda: requests.get(request.id).state == "done", timeout=120, what="the run to finish")
    assert flows.wait_idle(timeout=120)
    [run] = RunStore(store).list()
    assert run.state == "succeeded" and run.detail("monitor")["ts"] == monitor.ts
    assert run.detail("monitor")["rendered"] == "running"                    # its final view never reached Slack
    # what people see: the request still running, the monitor still live, though the database says done
    assert "running" in local_slack.message(request.channel, request.message_ts).text
    assert "succeeded" not in local_slack.message(CHANNEL, monitor.ts).text
    assert len(updates_of(local_slack, request.message_ts, status=500)) >= 3      # the client retried
    assert not requests.get(request.id).rendered

    local_slack.clear_faults()                                               # Slack is back
    runtime.start_scheduler()
    [job] = [j for j in runtime.scheduler.jobs() if j.id == RECONCILE_JOB]
    assert job.trigger.interval == timedelta(seconds=30)
    request_updates = len(updates_of(local_slack, request.message_ts))
    monitor_updates = len(updates_of(local_slack, monitor.ts))
    slot = datetime(2030, 1, 1, tzinfo=timezone.utc)
    done = runtime.reconcile_messages(slot=slot, settle_seconds=0)
    assert done["requests"] == [request.id] and done["monitors"] == [run.id]
    assert runtime.reconcile_messages(slot=slot, settle_seconds=0) is None       # one replica per slot
    message = local_slack.message(request.channel, request.message_ts)
    assert message.text.startswith("Migration production: done"), message.text
    final = local_slack.message(CHANNEL, monitor.ts)
    assert final.text.startswith("Migration production: succeeded"), final.text
    assert buttons(final) == [] and run.id in shown(final)
    assert len(updates_of(local_slack, request.message_ts)) == request_updates + 1
    assert len(updates_of(local_slack, monitor.ts)) == monitor_updates + 1
    assert requests.get(request.id).rendered and RunStore(store).get(run.id).detail("monitor")["rendered"] == "succeeded"

    # the next tick finds nothing behind
    again = runtime.reconcile_messages(slot=slot + timedelta(seconds=30), settle_seconds=0)
    assert again == {"requests": [], "monitors": [], "backups": []}
    assert len(updates_of(local_slack, request.message_ts)) == request_updates + 1
    assert len(updates_of(local_slack, monitor.ts)) == monitor_updates + 1
    assert PASSWORD not in json.dumps([c.body for c in local_slack.calls()], default=str)
