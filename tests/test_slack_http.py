"""The real Bolt app behind its real HTTP server (waitress), driven by signed requests.

Web API calls go to the local Slack on loopback. `flows` is a RecordingFlows: to
run these against the engine, make the `flows` fixture return
RecordingFlows(inner=bot.flows.Flows(...)); every assertion here is about the
Slack surface and holds either way.
"""
from __future__ import annotations

import http.client
import json
import logging
import threading
import time

import pytest
from slack_sdk.errors import SlackApiError

from bot.app import GENERIC_FAILURE, build_app, make_client
from bot.http import make_wsgi_app, serve_http
from tests.support.slack import (
    BOT_TOKEN,
    SIGNING_SECRET,
    RecordingFlows,
    block_actions_body,
    flows,  # noqa: F401  (fixture)
    http_request,
    local_slack,  # noqa: F401  (fixture)
    running_bot,
    settings,
    signature_headers,
    signed_post,
    slash_command_body,
    wait_for,
)


@pytest.fixture
def bot(local_slack, flows):
    with running_bot(local_slack, flows) as running:
        yield running


def _ack(answer) -> dict:
    assert answer.status == 200, answer.text
    return answer.json() if answer.body[:1] == b"{" else {"text": answer.text}


# --------------------------------------------------------------------------
# signed requests

def test_help_gets_200_and_the_help_text(bot, local_slack, flows):
    answer = bot.command("help")
    body = _ack(answer)
    assert body["text"].startswith("/migrate commands") and "precheck" in body["text"]
    assert any(b["type"] == "section" and "/migrate precheck" in b["text"]["text"] for b in body["blocks"])
    assert answer.elapsed < 1.0
    [recorded] = flows.wait_for_submit()             # only to record the event, after the ack
    assert recorded.command.action == "help"
    assert local_slack.methods() == ["auth.test"]     # warm-up only: nothing before or after the ack


def test_command_acks_at_once_and_submits(bot, local_slack, flows):
    response_url = local_slack.response_url()
    answer = bot.command("precheck production", response_url=response_url, trigger_id="111.222.abc")
    assert _ack(answer)["text"] == "Working on `/migrate precheck production`…"
    assert answer.elapsed < 1.0
    submitted = flows.wait_for_submit()[0]
    assert submitted.command.action == "precheck" and submitted.command.environment == "production"
    origin = submitted.origin
    assert (origin.user_id, origin.channel_id, origin.response_url, origin.trigger_id, origin.source) == \
        ("U0TESTER1", "C0RUNBOOK1", response_url, "111.222.abc", "slack")
    assert submitted.thread.startswith("slack-listener")     # our sized pool, not the request thread
    # no Web API call on the ack path (submit comes right after the ack; a real Flows posts later)
    assert [c.method for c in local_slack.calls() if c.at < submitted.at] == ["auth.test"]


def test_environment_defaults_when_only_one(bot, flows):
    assert _ack(bot.command("status"))["text"] == "Working on `/migrate status production`…"
    assert flows.wait_for_submit()[0].command.environment == "production"


def test_bad_signature_is_401_and_nothing_runs(bot, flows):
    body = slash_command_body("precheck production")
    assert signed_post(bot.events_url, body, secret="not-the-secret").status == 401
    assert signed_post(bot.events_url, body, signature="v0=" + "0" * 64).status == 401
    answer = signed_post(bot.events_url, body, signature="")
    assert answer.status == 401
    assert flows.submitted == []


def test_stale_and_future_timestamps_are_401(bot, flows):
    body = slash_command_body("precheck production")
    now = int(time.time())
    assert signed_post(bot.events_url, body, timestamp=now - 301).status == 401
    assert signed_post(bot.events_url, body, timestamp=now + 301).status == 401
    assert flows.submitted == []
    assert signed_post(bot.events_url, body, timestamp=now - 200).status == 200   # inside the window
    flows.wait_for_submit()


def test_tampered_body_is_401(bot, flows):
    signed = slash_command_body("status production")
    headers = {"Content-Type": "application/x-www-form-urlencoded", **signature_headers(signed)}
    tampered = signed.replace(b"status", b"precheck")
    answer = http_request(bot.events_url, data=tampered, headers=headers, method="POST")
    assert answer.status == 401 and flows.submitted == []


def test_unsigned_request_is_401(bot, flows):
    answer = http_request(bot.events_url, data=slash_command_body("help"), method="POST",
                          headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert answer.status == 401 and flows.submitted == []


def test_invalid_signature_log_carries_no_body_or_token(bot, local_slack, caplog):
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="slack_bolt.RequestVerification")   # Bolt logs the body at INFO
    body = slash_command_body("help", response_url=local_slack.response_url("secret-capability"))
    signed_post(bot.events_url, body, secret="wrong")
    text = "\n".join(r.getMessage() for r in caplog.records)
    # refused before Bolt parses it (issue 13 §4): one line, the size only
    assert f"refused a request to /slack/events: a bad or stale signature ({len(body)} bytes)" in text
    assert "legacy-verification-token-unused" not in text and "secret-capability" not in text


def test_ack_latency_is_logged_without_secrets(bot, local_slack, caplog):
    caplog.set_level(logging.INFO, logger="runbook_bot.slack")
    bot.command("precheck", response_url=local_slack.response_url("secret-capability"))
    line = next(r.getMessage() for r in caplog.records if r.name == "runbook_bot.slack")
    assert line.startswith("ack kind=slash_command latency_ms=") and "user=U0TESTER1" in line
    assert "secret-capability" not in line and "token" not in line


@pytest.mark.parametrize("text, expected", [
    ("frobnicate production", "Unknown action 'frobnicate'"),
    ("precheck staging", "Unknown environment 'staging'"),
    ("precheck production extra", "takes no more arguments"),
    ('precheck "unterminated', "Could not read the command"),
])
def test_malformed_commands_get_one_line_and_no_submit(bot, flows, text, expected):
    body = _ack(bot.command(text))
    assert expected in body["text"] and "\n" not in body["text"]
    assert "blocks" not in body
    assert flows.submitted == []


def test_several_environments_must_be_named(local_slack):
    recorder = RecordingFlows(["production", "staging"])
    with running_bot(local_slack, recorder, environments=("production", "staging")) as bot:
        body = _ack(bot.command("precheck"))
        assert "Several environments are configured" in body["text"]
        assert _ack(bot.command("precheck staging"))["text"] == "Working on `/migrate precheck staging`…"
        assert recorder.wait_for_submit()[0].command.environment == "staging"
    recorder.close()


def test_injection_in_the_command_is_escaped_in_the_ack(bot, flows):
    body = _ack(bot.command("precheck <!channel>"))
    assert "<!channel>" not in body["text"] and "&lt;!channel&gt;" in body["text"]
    assert flows.submitted == []


def test_ack_returns_before_slow_work_completes(local_slack):
    release = threading.Event()
    started = threading.Event()

    def slow(command, origin):
        started.set()
        release.wait(30)

    slow_flows = RecordingFlows(["production"], work=slow)
    try:
        with running_bot(local_slack, slow_flows) as bot:
            answer = bot.command("precheck production")
            assert answer.status == 200 and "Working on" in answer.text
            # the HTTP response is here while the work is still blocked
            assert not release.is_set() and slow_flows.finished == []
            assert started.wait(5)
            assert slow_flows.finished == []
            # and the bot keeps answering while the work is blocked
            assert bot.command("help").status == 200
            release.set()
            slow_flows.wait_for_finished()
    finally:
        release.set()
        slow_flows.close()


def test_first_request_without_warm_up_calls_auth_test_once(local_slack, flows):
    with running_bot(local_slack, flows, warm=False) as bot:
        assert bot.command("help").status == 200
        assert bot.command("help").status == 200
        assert local_slack.methods() == ["auth.test"]


def test_submit_refusal_is_reported_by_response_url(local_slack):
    refusing = RecordingFlows(["production"], fail_with=RuntimeError("secret internal detail"))
    with running_bot(local_slack, refusing) as bot:
        response_url = local_slack.response_url("refused")
        assert "Working on" in _ack(bot.command("precheck", response_url=response_url))["text"]
        response = local_slack.wait_for_message(lambda m: m.response_id == "refused")
        assert GENERIC_FAILURE.split(";")[0] in response.text
        assert "secret internal detail" not in response.text
    refusing.close()


def test_busy_refusal_reaches_the_user(local_slack):
    import bot.flows

    busy = getattr(bot.flows, "Busy", None)
    if busy is None:
        pytest.skip("bot.flows has no Busy yet")
    refusing = RecordingFlows(["production"], fail_with=busy("the bot is busy; try again in a minute"))
    with running_bot(local_slack, refusing) as bot:
        bot.command("precheck", response_url=local_slack.response_url("busy"))
        response = local_slack.wait_for_message(lambda m: m.response_id == "busy")
        assert "the bot is busy; try again in a minute" in response.text
    refusing.close()


def test_listener_error_never_reaches_slack(local_slack):
    class Broken(RecordingFlows):
        def environment_names(self):
            raise RuntimeError("password=hunter2 in a stack trace")

    broken = Broken()
    with running_bot(local_slack, broken) as bot:
        answer = bot.command("precheck")
        assert answer.status == 200
        body = _ack(answer)
        assert body["text"] == GENERIC_FAILURE
        assert "hunter2" not in answer.text and "Traceback" not in answer.text
    broken.close()


def test_block_actions_are_acked(bot, flows):
    answer = signed_post(bot.events_url, block_actions_body("approve", "req-123"))
    assert answer.status == 200 and flows.submitted == []


# --------------------------------------------------------------------------
# Web API client

def test_429_from_chat_post_message_is_retried(local_slack):
    client = make_client(BOT_TOKEN, base_url=local_slack.url)
    local_slack.fail_next("chat.postMessage", status=429, retry_after=0)
    answer = client.chat_postMessage(channel="C0RUNBOOK1", text="after a rate limit")
    assert answer["ok"]
    first, second = local_slack.calls("chat.postMessage")
    assert first.status == 429 and second.status == 200
    assert len(local_slack.messages("C0RUNBOOK1")) == 1


def test_429_retries_are_bounded(local_slack):
    client = make_client(BOT_TOKEN, base_url=local_slack.url, rate_limit_retries=1)
    local_slack.fail_next("chat.postMessage", status=429, retry_after=0, times=5)
    with pytest.raises(SlackApiError) as err:
        client.chat_postMessage(channel="C0RUNBOOK1", text="x")
    assert err.value.response.status_code == 429
    assert len(local_slack.calls("chat.postMessage")) == 2


def test_make_client_honours_slack_api_url(local_slack, monkeypatch):
    monkeypatch.setenv("SLACK_API_URL", local_slack.url.rstrip("/"))
    client = make_client(BOT_TOKEN)
    assert client.base_url == local_slack.url
    assert client.auth_test()["ok"]
    monkeypatch.delenv("SLACK_API_URL")
    assert make_client(BOT_TOKEN).base_url == "https://slack.com/api/"


# --------------------------------------------------------------------------
# /health, /metrics, 404

def test_health_and_metrics(bot, flows):
    health = http_request(bot.url + "/health")
    assert health.status == 200 and health.json() == {"ok": True, "state_db": "ok"}
    assert health.headers["content-type"] == "application/json"
    bot.health_state.update(ok=False, details={"state_db": "unreachable"})
    failing = http_request(bot.url + "/health")
    assert failing.status == 503 and failing.json() == {"ok": False, "state_db": "unreachable"}

    bot.command("precheck")
    bot.command("help")
    bot.command("nonsense")
    flows.wait_for_submit()
    metrics = http_request(bot.url + "/metrics")
    assert metrics.status == 200 and metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert 'runbook_bot_commands_total{action="precheck"} 1.0' in text
    assert 'runbook_bot_commands_total{action="help"} 1.0' in text
    assert 'runbook_bot_commands_total{action="invalid"} 1.0' in text
    assert 'runbook_bot_ack_seconds_count{kind="slash_command"} 3.0' in text
    assert 'runbook_bot_slack_requests_total{kind="slash_command"} 3.0' in text


def test_health_check_that_raises_is_503_without_details(local_slack, flows):
    app = build_app(settings(), make_client(BOT_TOKEN, local_slack.url), flows, signing_secret=SIGNING_SECRET)

    def explode():
        raise RuntimeError("postgresql://user:secret@db")

    with serve_http(make_wsgi_app(app, health=explode), "127.0.0.1", 0) as server:
        answer = http_request(server.url + "/health")
        assert answer.status == 503 and "secret" not in answer.text and answer.json()["ok"] is False
    app.shutdown()


def _declared_length_status(bot, length: int) -> int:
    """Status for a POST announcing `length` body bytes, none of them sent."""
    connection = http.client.HTTPConnection("127.0.0.1", bot.server.port, timeout=5)
    try:
        connection.putrequest("POST", "/slack/events")
        connection.putheader("Content-Type", "application/x-www-form-urlencoded")
        connection.putheader("Content-Length", str(length))
        connection.endheaders()
        return connection.getresponse().status
    finally:
        connection.close()


def test_unknown_paths_and_methods(bot):
    assert http_request(bot.url + "/").status == 404
    assert _declared_length_status(bot, 3 * 1024 * 1024) == 413
    assert http_request(bot.url + "/slack/other", data=b"x", method="POST").status == 404
    assert http_request(bot.url + "/slack/events").status == 405
    assert http_request(bot.url + "/health", data=b"", method="POST").status == 405


def test_http_mode_refuses_an_app_without_signing_secret(local_slack, flows, monkeypatch):
    monkeypatch.delenv("SLACK_SIGNING_SECRET", raising=False)
    app = build_app(settings(), make_client(BOT_TOKEN, local_slack.url), flows)
    with pytest.raises(ValueError, match="SLACK_SIGNING_SECRET"):
        make_wsgi_app(app)
    app.shutdown()


def test_signing_secret_from_the_environment(local_slack, flows, monkeypatch):
    monkeypatch.setenv("SLACK_SIGNING_SECRET", SIGNING_SECRET)
    app = build_app(settings(), make_client(BOT_TOKEN, local_slack.url), flows)
    with serve_http(make_wsgi_app(app), "127.0.0.1", 0) as server:
        answer = signed_post(server.url + "/slack/events", slash_command_body("help"))
        assert answer.status == 200 and json.loads(answer.body)["text"].startswith("/migrate commands")
    app.shutdown()


def test_server_binds_port_zero_and_closes(local_slack, flows):
    app = build_app(settings(), make_client(BOT_TOKEN, local_slack.url), flows, signing_secret=SIGNING_SECRET)
    server = serve_http(make_wsgi_app(app), "127.0.0.1", 0)
    port = server.port
    assert port > 0 and http_request(server.url + "/health").status == 200
    server.close()
    with pytest.raises(OSError):
        http_request(f"http://127.0.0.1:{port}/health", timeout=2)
    server.close()  # idempotent
    app.shutdown()


def test_concurrent_commands_all_acked(bot, flows):
    answers: list[int] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        status = bot.command("precheck").status
        with lock:
            answers.append(status)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert answers == [200] * 20
    wait_for(lambda: len(flows.submitted) == 20, what="20 submits")
