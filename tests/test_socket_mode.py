"""Socket Mode, offline: the same app, slack_sdk's built-in Socket Mode client, a loopback websocket.

The local Slack answers apps.connections.open with the ws:// URL of its
LocalSocketMode server, which sends `hello`, then envelopes, and collects acks.
One connected bot per module: closing slack_sdk's client takes a few seconds.
"""
from __future__ import annotations

import os

import pytest

from bot.app import build_app, make_client, warm_up
from bot.http import make_wsgi_app, serve_http, socket_mode_handler, socket_mode_health
from bot.localslack import LocalSlack, app_home_opened, event_callback
from tests.support.slack import (
    APP_TOKEN,
    BOT_TOKEN,
    REAL_FLOWS_ENV,
    RecordingFlows,
    block_actions_payload,
    http_request,
    real_flows,
    settings,
    slash_command_payload,
)


class SocketBot:
    def __init__(self, slack: LocalSlack, flows: RecordingFlows, app, handler, server) -> None:
        self.slack, self.flows, self.app, self.handler, self.server = slack, flows, app, handler, server
        self.open_call = None

    @property
    def socket(self):
        return self.slack.socket_mode


@pytest.fixture(scope="module")
def socket_bot(tmp_path_factory):
    with LocalSlack(socket_mode=True, joined=("C0RUNBOOK1",)) as slack:
        if os.environ.get(REAL_FLOWS_ENV) == "real":
            flows = real_flows(slack, tmp_path_factory.mktemp("state"))
        else:
            flows = RecordingFlows(["production"])
        # no signing secret: Socket Mode does not use one
        app = build_app(settings(), make_client(BOT_TOKEN, slack.url), flows, signing_secret=None)
        warm_up(app)
        handler = socket_mode_handler(app, APP_TOKEN)
        health = socket_mode_health(handler, lambda: (True, {"state_db": "ok"}))
        server = serve_http(make_wsgi_app(None, health=health, metrics=app.metrics), "127.0.0.1", 0)
        bot = SocketBot(slack, flows, app, handler, server)
        try:
            before = http_request(server.url + "/health")
            assert before.status == 503 and before.json()["socket_mode_connected"] is False
            handler.connect()
            slack.socket_mode.wait_for_connection()
            bot.open_call = slack.wait_for_call("apps.connections.open")
            yield bot
        finally:
            handler.close()
            server.close()
            app.shutdown()
            flows.close()


@pytest.fixture
def bot(socket_bot):
    socket_bot.flows.submitted.clear()
    socket_bot.flows.homes.clear()
    socket_bot.slack.clear()
    return socket_bot


def test_connection_was_opened_with_the_app_token(socket_bot):
    assert socket_bot.handler.client.is_connected()
    assert socket_bot.open_call.token == APP_TOKEN
    assert socket_bot.open_call.response["url"] == socket_bot.socket.url


def test_slash_command_envelope_is_acked_and_submitted(bot):
    envelope_id = bot.socket.send_slash_command(slash_command_payload("precheck production",
                                                                      trigger_id="123.456.abc"))
    ack = bot.socket.wait_for_ack(envelope_id)
    assert ack.envelope_id == envelope_id
    assert ack.payload == {"text": "Working on `/migrate precheck production`…"}
    submitted = bot.flows.wait_for_submit()[0]
    assert submitted.command.action == "precheck" and submitted.command.environment == "production"
    assert submitted.origin.user_id == "U0TESTER1" and submitted.origin.channel_id == "C0RUNBOOK1"
    assert submitted.origin.trigger_id == "123.456.abc"
    assert [c.method for c in bot.slack.calls() if c.at < submitted.at] == []   # none on the ack path


def test_help_over_the_socket(bot):
    before = len(bot.flows.submitted)
    ack = bot.socket.wait_for_ack(bot.socket.send_slash_command(slash_command_payload("help")))
    assert ack.payload["text"].startswith("/migrate commands") and ack.payload["blocks"]
    assert bot.flows.wait_for_submit(before + 1)[before].command.action == "help"   # recorded after the ack


def test_malformed_command_over_the_socket(bot):
    ack = bot.socket.wait_for_ack(bot.socket.send_slash_command(slash_command_payload("drop everything")))
    assert "Unknown action 'drop'" in ack.payload["text"] and "\n" not in ack.payload["text"]
    assert bot.flows.submitted == []


def test_retried_envelope_is_still_acked(bot):
    envelope_id = bot.socket.send_slash_command(slash_command_payload("status"), retry_attempt=1)
    assert bot.socket.wait_for_ack(envelope_id).payload["text"] == "Working on `/migrate status production`…"
    bot.flows.wait_for_submit()


def test_block_action_envelope_is_acked(bot):
    envelope_id = bot.socket.send_interactive(block_actions_payload("approve", "req-1"))
    assert bot.socket.wait_for_ack(envelope_id).envelope_id == envelope_id
    assert bot.flows.submitted == []


def test_app_home_opened_over_the_socket_is_acked_then_handed_to_the_flows(bot):
    envelope_id = bot.socket.send_event(event_callback(app_home_opened("U0TESTER1")))
    ack = bot.socket.wait_for_ack(envelope_id)
    [home] = bot.flows.wait_for_home()
    assert home.origin == "U0TESTER1" and home.thread.startswith("slack-listener")
    assert ack.envelope_id == envelope_id and ack.payload is None         # events are acked with nothing
    assert [c.method for c in bot.slack.calls() if c.at < home.at] == []  # no Web API call on the way
    messages_tab = bot.socket.send_event(event_callback(app_home_opened("U0TESTER1", tab="messages")))
    bot.socket.wait_for_ack(messages_tab)
    bot.socket.wait_for_ack(bot.socket.send_slash_command(slash_command_payload("help")))   # after it, in order
    assert len(bot.flows.homes) == 1                                     # the Messages tab needs nothing


def test_health_and_metrics_in_socket_mode(bot):
    health = http_request(bot.server.url + "/health")
    assert health.status == 200 and health.json() == {"ok": True, "socket_mode_connected": True, "state_db": "ok"}
    bot.socket.wait_for_ack(bot.socket.send_slash_command(slash_command_payload("help")))
    metrics = http_request(bot.server.url + "/metrics").text
    assert 'runbook_bot_commands_total{action="help"}' in metrics
    assert "runbook_bot_ack_seconds_bucket" in metrics
    # the Slack endpoint does not exist in Socket Mode
    assert http_request(bot.server.url + "/slack/events", data=b"x", method="POST").status == 404


def test_socket_mode_needs_an_app_token(socket_bot):
    with pytest.raises(ValueError, match="app-level token"):
        socket_mode_handler(socket_bot.app, BOT_TOKEN)
