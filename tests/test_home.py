"""The App Home tab (issue 14 §4), end to end: Slack's `app_home_opened` over signed HTTP and over
Socket Mode -> the real Bolt app -> Flows' executor -> runbook.home on the real PostgreSQL and state
database -> views.publish on a LocalSlack that refuses what Slack refuses."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bot import blocks
from bot.home_blocks import home_view, message_link
from bot.http import socket_mode_handler
from bot.localslack import LocalSlack, app_home_opened, event_callback
from bot.server import Runtime
from runbook import backup as backups
from runbook.home import EnvironmentHome
from runbook.state.approvals import ApprovalStore
from runbook.state.runs import FAILED, RunStore
from runbook.watch import AlertBook, Condition, WatchState
from tests.support.configs import settings_for, with_password
from tests.support.sample_app import REV_0001, REV_0002, REV_0003
from tests.support.slack import (APP_TOKEN, CHANNEL_ID, SIGNING_SECRET, USER_ID, local_slack, log_lines,  # noqa: F401
                                 real_flows, running_bot, signed_post, slash_command_body)

PASSWORD = "Home-Passw0rd-77"
ALICE = "U0ALICE001"          # an approver
DBAS = "S0DBAS0001"           # a user group of approvers


@pytest.fixture
def slack():
    with LocalSlack(socket_mode=True, joined=(CHANNEL_ID,), usergroups={DBAS: [ALICE]}) as local:
        yield local


@pytest.fixture
def home_bot(sample_db, tmp_path, slack, pg_bin_dir):
    url = with_password(sample_db(REV_0001), PASSWORD)          # 0002 and 0003 pending
    settings = settings_for(tmp_path, url, approvers=(ALICE, DBAS), backups_dir=str(tmp_path / "backups"),
                            extra_env=f"    pg_bin_dir: {json.dumps(str(pg_bin_dir))}")
    runtime = Runtime.build(settings, bot_token="xoxb-home-test", api_url=slack.url, signing_secret=SIGNING_SECRET)
    server = runtime.serve_http("127.0.0.1", 0, background=True)
    try:
        yield runtime, server
    finally:
        server.close()
        runtime.close()


def seed(runtime, url: str) -> dict:
    """A verified backup, a failed run, a pending request (asked over signed HTTP), an open alert."""
    store, env = runtime.store, runtime.settings.environments["production"]
    backup = backups.backup("production", env, store, actor=ALICE)
    assert backup.status == "verified"
    runs = RunStore(store)
    run = runs.start(kind="migrate", environment="production", actor=ALICE, from_revision=REV_0001,
                     target_revision=REV_0002)
    runs.finish(run.id, FAILED, summary="lock timeout after 3 attempts")
    return {"backup": backup, "run": run, "request": ask_for_run(runtime, url),
            "alert": open_long_query_alert(store)}


def ask_for_run(runtime, url: str):
    """`/migrate run` as a user types it: the request is posted in the channel, pending."""
    before = runtime.flows.submitted
    answer = signed_post(url + "/slack/events", slash_command_body("run", user_id=USER_ID))
    assert answer.status == 200
    assert runtime.flows.wait_idle(timeout=120, after=before)
    [request] = ApprovalStore(runtime.store).list(environment="production", states=("pending",))
    assert request.message_ts and request.channel == CHANNEL_ID
    return request


def open_long_query_alert(store):
    now = datetime.now(timezone.utc)
    condition = Condition("production", "long_query", "4242", (now - timedelta(minutes=7)).isoformat(), 420.0,
                          {"pid": 4242, "seconds": 420.0, "query": "SELECT pg_sleep(1000)", "user": "app"})
    [alert] = AlertBook(store).apply("production", [condition], now)
    return alert


def open_home(slack, url: str, user: str = ALICE, *, tab: str = "home"):
    status, body = slack.send_event(url, app_home_opened(user, tab=tab), signing_secret=SIGNING_SECRET)
    assert status == 200, body
    return body


def test_opening_the_home_tab_publishes_where_each_environment_stands(home_bot, slack):
    runtime, server = home_bot
    facts = seed(runtime, server.url)
    slack.clear()
    events_before = runtime.store.events(limit=500)

    open_home(slack, server.url + "/slack/events")
    view = slack.wait_for_view(ALICE, timeout=60)
    publish = slack.wait_for_call("views.publish")
    assert publish.response["ok"] is True and publish.body["user_id"] == ALICE
    assert view.view["type"] == "home"
    shown = json.dumps(view.blocks, ensure_ascii=False)
    # current revision and the pending ones
    assert f"*Revision*\\n`{REV_0001}`" in shown
    assert "*Pending* (2)" in shown and f"`{REV_0002}`" in shown and f"`{REV_0003}`" in shown
    # the latest run and its state
    run = facts["run"]
    assert f"`{run.id}`" in shown and ":x: *failed*" in shown and f"migrate → `{REV_0002}`" in shown
    # the open request, linked to its message
    request = facts["request"]
    link = f"https://slack.com/archives/{CHANNEL_ID}/p{request.message_ts.replace('.', '')}"
    assert "*Open approval requests* (1)" in shown and f"<{link}|Migrate production from {REV_0001}" in shown
    assert f"by <@{USER_ID}>" in shown and "0 of 1 approvals" in shown
    # the open alert, watch on, the latest verified backup, who may approve
    assert "*Open alerts* (1)" in shown and "Long query" in shown and "pid 4242" in shown
    assert ":eye: on, every 60 s" in shown
    backup = facts["backup"]
    assert f"#{backup.id} `{backup.name}`" in shown and f"at `{REV_0001}`" in shown
    assert f"<@{ALICE}>, <!subteam^{DBAS}> · 1 needed, never their own request" in shown
    # what was published passes the bot's own validator as a view, and was taken by the strict local Slack
    assert blocks.validate(blocks.Message("home", view.blocks), view=True).blocks == view.blocks
    assert PASSWORD not in json.dumps([c.body for c in slack.calls()], default=str)
    # read-only: opening the Home records no event
    assert runtime.store.events(limit=500) == events_before

    # the Home follows the state: watch off shows at the next opening
    AlertBook(runtime.store).set_paused("production", True, ALICE)
    open_home(slack, server.url + "/slack/events")
    again = json.dumps(slack.wait_for_view(ALICE, after=1, timeout=60).blocks)
    assert "off (paused by <@U0ALICE001>" in again

    # the same over Socket Mode: the event comes over the socket, the Home is published the same way
    handler = socket_mode_handler(runtime.app, APP_TOKEN)
    try:
        handler.connect()
        slack.socket_mode.wait_for_connection()
        envelope = slack.socket_mode.send_event(event_callback(app_home_opened("U0BOB00001")))
        assert slack.socket_mode.wait_for_ack(envelope).envelope_id == envelope
        over_socket = json.dumps(slack.wait_for_view("U0BOB00001", timeout=60).blocks)
    finally:
        handler.close()
    for fact in (f"`{REV_0001}`", f"`{REV_0003}`", f"`{run.id}`", link, "pid 4242", f"#{backup.id}",
                 f"<@{ALICE}>", ":double_vertical_bar: off"):
        assert fact in over_socket, fact


def test_the_messages_tab_publishes_nothing_and_url_verification_is_answered(local_slack, tmp_path):
    flows = real_flows(local_slack, tmp_path)
    try:
        with running_bot(local_slack, flows) as bot:
            # Slack checks the request URL with a signed url_verification: the challenge comes back
            assert local_slack.verify_request_url(bot.events_url, signing_secret=SIGNING_SECRET) is True
            assert local_slack.verify_request_url(bot.events_url, signing_secret="not-the-secret") is False
            open_home(local_slack, bot.events_url, tab="messages")
            open_home(local_slack, bot.events_url, tab="home")
            view = local_slack.wait_for_view(ALICE, timeout=30)
            assert flows._inner.wait_idle(timeout=30)
            assert len(local_slack.views()) == 1
    finally:
        flows.close()
    # the target of these settings cannot be reached: the Home says so and still shows the rest
    shown = json.dumps(view.blocks)
    assert ":x: cannot read the target" in shown and "*Pending*\\n_unknown_" in shown
    assert "*Latest run*\\nnone yet" in shown and "*Latest verified backup*\\nnone" in shown
    assert "*Open approval requests*: none" in shown and "*Open alerts*: none" in shown
    assert "_nobody: approvals.approvers is empty" in shown


def test_a_home_slack_refuses_is_one_log_line_and_the_next_opening_publishes(local_slack, tmp_path, log_lines):
    flows = real_flows(local_slack, tmp_path)
    try:
        with running_bot(local_slack, flows) as bot:
            local_slack.fail_next("views.publish", error="invalid_blocks")
            open_home(local_slack, bot.events_url)
            local_slack.wait_for_call("views.publish")
            assert flows._inner.wait_idle(timeout=30)
            assert local_slack.views() == []
            open_home(local_slack, bot.events_url)
            assert local_slack.wait_for_view(ALICE, timeout=30).view["type"] == "home"
    finally:
        flows.close()
    refused = [line for line in log_lines.getvalue().splitlines() if " ERROR " in line]
    assert len(refused) == 1 and f"views.publish for {ALICE} failed: invalid_blocks" in refused[0]
    assert "Traceback" not in log_lines.getvalue()
    assert [c.method for c in local_slack.calls() if c.method.startswith("chat.")] == []   # nothing posted instead


def _home(name: str, *, requests=(), alerts=(), pending=()) -> EnvironmentHome:
    return EnvironmentHome(environment=name, production=False, current=("0001",), pending=tuple(pending),
                           revisions_problem=None, revisions_error=None, latest_run=None,
                           open_requests=tuple(requests), open_alerts=tuple(alerts), watch=WatchState(name),
                           watch_every_seconds=60, latest_backup=None, approvers=("U0ALICE001",),
                           required_approvals=1, allow_self_approval=False)


def test_any_number_of_environments_requests_and_alerts_fits_one_view():
    from runbook.watch import Alert

    now = datetime.now(timezone.utc)
    alerts = [Alert(i, f"k{i}", "e", "long_query", str(i), "", "open", now, now, None, None, None, 0, 9.0,
                    {"pid": i, "seconds": 900.0, "query": "SELECT " + "x" * 500}, None, None) for i in range(60)]
    many = [_home(f"env{i:02d}", alerts=alerts) for i in range(30)]
    view = home_view(many)
    assert len(view.blocks) <= blocks.MAX_VIEW_BLOCKS
    assert blocks.text_length(view.blocks) <= blocks.MAX_TOTAL_TEXT
    shown = json.dumps(view.blocks, ensure_ascii=False)
    assert "more environments: `/migrate status ENV` shows each." in shown and "did not fit" not in shown
    one = json.dumps(home_view([_home("production", alerts=alerts)]).blocks)
    assert "*Open alerts* (60)" in one and "more" in one


def test_the_validator_has_a_view_mode_of_100_blocks():
    sixty = [blocks.section(f"line {i}") for i in range(60)]
    with pytest.raises(blocks.BlockError, match="a message holds at most 50"):
        blocks.validate(blocks.Message("text", sixty))
    assert blocks.validate(blocks.Message("", sixty), view=True).blocks == sixty
    with pytest.raises(blocks.BlockError, match="a view holds at most 100"):
        blocks.validate(blocks.Message("", sixty * 2), view=True)
    with pytest.raises(blocks.BlockError, match="no block type"):
        blocks.validate(blocks.Message("", [{"type": "banner"}]), view=True)


@pytest.mark.parametrize("view, error", [
    ({"type": "modal", "blocks": []}, "invalid_arguments"),
    ({"blocks": []}, "invalid_arguments"),
    ({"type": "home", "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": "x"}}] * 101},
     "invalid_blocks"),
    ({"type": "home", "blocks": [{"type": "banner"}]}, "invalid_blocks"),
])
def test_local_slack_refuses_views_slack_refuses(local_slack, view, error):
    client = WebClient(token="xoxb-local", base_url=local_slack.url)
    with pytest.raises(SlackApiError) as refused:
        client.views_publish(user_id=ALICE, view=view)
    assert refused.value.response["error"] == error
    assert local_slack.views() == []
    client.views_publish(user_id=ALICE, view={"type": "home", "blocks": [blocks.divider()]})
    assert local_slack.home(ALICE).blocks == [blocks.divider()]


def test_message_links_are_built_only_from_slack_ids():
    assert message_link("C0RUNBOOK1", "1700000000.000100") == "https://slack.com/archives/C0RUNBOOK1/p1700000000000100"
    assert message_link("C0RUNBOOK1", None) is None
    assert message_link("C0RUNBOOK1|x", "1.2") is None and message_link("C0RUNBOOK1", "1.2>") is None
