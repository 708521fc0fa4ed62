"""/migrate precheck and status end to end: signed HTTP -> the real Bolt app -> real Flows ->
the engine against the real PostgreSQL and the sample app's real Alembic -> the local Slack Web API.
Also: no password or token in any posted message, uploaded file or log line."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bot.localslack import LocalSlack
from bot.server import Runtime
from runbook.state import Store
from tests.support.configs import settings_for, with_password
from tests.support.sample_app import REV_0001, REV_0002, REV_0003
from tests.support.slack import SIGNING_SECRET, USER_ID, log_lines, signed_post, slash_command_body  # noqa: F401

PASSWORD = "E2e-Db-Passw0rd"
BOT_TOKEN = "xoxb-e2e-secret-token-42"


@pytest.fixture
def slack():
    with LocalSlack(joined=("C0TESTCHAN", "C0RUNBOOK1")) as local:   # the configured channel, the commands' one
        yield local


def start(settings, slack):
    runtime = Runtime.build(settings, bot_token=BOT_TOKEN, api_url=slack.url, signing_secret=SIGNING_SECRET)
    server = runtime.serve_http("127.0.0.1", 0, background=True)
    return runtime, server


def command(server, runtime, text, **kwargs):
    submitted = runtime.flows.submitted
    answer = signed_post(server.url + "/slack/events", slash_command_body(text, **kwargs))
    handed_over = not ack_text(answer).startswith(":warning:")
    assert runtime.flows.wait_idle(timeout=60, after=submitted if handed_over else None)
    return answer


def ack_text(answer) -> str:
    """Bolt answers a text-only ack as plain text, one with blocks as JSON."""
    return answer.json()["text"] if answer.body[:1] == b"{" else answer.text


def everything_slack_saw(slack) -> str:
    return "\n".join([json.dumps(c.body, default=str) + c.raw.decode("utf-8", "replace") for c in slack.calls()]
                     + [f.text for f in slack.files()])


def test_precheck_and_status_over_slack(sample_db, tmp_path, slack, log_lines):
    url = with_password(sample_db(REV_0001), PASSWORD)
    settings = settings_for(tmp_path, url, channel="C0RUNBOOK1")
    runtime, server = start(settings, slack)
    try:
        answer = command(server, runtime, "precheck")
        assert answer.status == 200 and ack_text(answer) == "Working on `/migrate precheck production`…"
        [posted] = slack.messages(kind="message")
        assert posted.channel == "C0RUNBOOK1"
        assert "GO" in posted.text and "production" in posted.text
        rendered = json.dumps(posted.blocks)
        assert REV_0002 in rendered and REV_0003 in rendered and "IRREVERSIBLE" in rendered
        [preview] = slack.files()
        assert "CREATE TABLE categories" in preview.text and "CREATE TABLE expenses" not in preview.text
        assert preview.thread_ts == posted.ts

        command(server, runtime, "status")
        status = slack.messages(kind="message")[-1]
        assert "precheck" in json.dumps(status.blocks) and f"{REV_0001}" in json.dumps(status.blocks)

        events = Store(settings.state_url).events()
        assert [(e.actor, e.action, e.outcome) for e in events[:2]] == [(USER_ID, "status", "ok"),
                                                                       (USER_ID, "precheck", "go")]
        seen = everything_slack_saw(slack) + log_lines.getvalue()
        assert PASSWORD not in seen and BOT_TOKEN not in seen
    finally:
        server.close()
        runtime.close()


def test_unreachable_database_is_reported_without_secrets(tmp_path, slack, log_lines):
    settings = settings_for(tmp_path, f"postgresql://app:{PASSWORD}@127.0.0.1:1/budget", connect_timeout=1)
    runtime, server = start(settings, slack)
    try:
        command(server, runtime, "precheck")
        [posted] = slack.messages(kind="message")
        assert "NO-GO" in posted.text
        assert "127.0.0.1:1/budget" in json.dumps(posted.blocks)
        command(server, runtime, "status")  # fails: one ephemeral line, no trace
        [error] = slack.messages(kind="ephemeral")
        assert error.user == USER_ID and "cannot connect to 127.0.0.1:1/budget" in error.text
        assert "Traceback" not in error.text and "\n" not in error.text.strip()
        assert Store(settings.state_url).events()[0].outcome == "error"
        seen = everything_slack_saw(slack) + log_lines.getvalue()
        assert PASSWORD not in seen and BOT_TOKEN not in seen
    finally:
        server.close()
        runtime.close()


@pytest.mark.parametrize("text, expected", [
    ("precheck staging", "Unknown environment 'staging'. Configured: production."),
    ("drop everything", "Unknown action 'drop'"),
])
def test_malformed_commands_get_one_line_and_do_nothing(tmp_path, slack, text, expected):
    settings = settings_for(tmp_path, "postgresql://app@127.0.0.1:1/budget")
    runtime, server = start(settings, slack)
    try:
        answer = command(server, runtime, text)
        assert answer.status == 200 and expected in ack_text(answer)
        assert "\n" not in ack_text(answer)
        assert slack.methods() == ["auth.test"]
        assert Store(settings.state_url).events() == []
    finally:
        server.close()
        runtime.close()


def test_console_demo_scripted_walkthrough():
    result = subprocess.run([sys.executable, "-m", "bot.cli", "demo", "--scripted"], capture_output=True,
                            text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert out.count("> /migrate") == 3
    assert "/migrate precheck [env]" in out                          # help, rendered
    assert "Status production" in out and REV_0001 in out             # status
    assert "Precheck production: GO" in out and "IRREVERSIBLE" in out  # precheck
    assert "file uploaded in the thread of “Precheck production: GO" in out and "SQL preview" in out
    assert "Traceback" not in out + result.stderr
