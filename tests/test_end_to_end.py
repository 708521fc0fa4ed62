"""/migrate precheck and status end to end: signed HTTP -> the real Bolt app -> real Flows ->
the engine against the real PostgreSQL and the sample app's real Alembic -> the local Slack Web API.
Also: no password or token in any posted message, uploaded file or log line."""
from __future__ import annotations

import json
import re
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


def test_console_demo_scripted_plays_the_whole_story():
    """`runbook-bot demo --scripted` (issue 17 §2): precheck, backup, a run asked for, approved by
    another approver, run live and validated; a rollback asked for and approved; an alert on a real
    lock queue that opens and resolves; an escalation with the incident summary; where to go next.
    Its folder stays after it ends, and the CLI works on it."""
    from tests.support.demo import scripted_demo

    out, folder = scripted_demo()
    steps = out.split("\n# ")[1:]
    assert [step.splitlines()[1] if step.splitlines()[1].startswith("> ") else "(the watch)" for step in steps] == [
        "> /migrate precheck", "> /migrate backup", "> /migrate run +1", "> click approve as U0APPROVER1",
        "> /migrate rollback", "> click approve as U0APPROVER1", "> lock", "(the watch)",
        "> /migrate escalate 2 expenses updates queue behind an idle transaction", "> unlock", "(the watch)"]
    precheck, backup, run, approve, rollback, approve_rollback, lock, alert, escalate, unlock, resolved = steps
    assert "Precheck production: GO" in precheck
    assert "Full backup production: verified (#1)" in backup and "Location* `.demo/backups/" in backup
    assert "Migration production: approval needed" in run and "Needs 1 more approval from @U0APPROVER1" in run
    assert "U0APPROVER1 clicked Approve" in approve and "Migration production: done" in approve
    assert "Migration production: succeeded" in approve and "Validation production: PASS" in approve
    assert "Rollback production: approval needed" in rollback
    assert "Rollback production: done" in approve_rollback and "Validation production: PASS" in approve_rollback
    assert "pid 4101 updated an expense and sits idle in its transaction; pids 4102, 4103" in lock
    assert "Lock wait: production: root blocker pid 4101 holds up 2 sessions" in alert
    assert "app `home-budget-api` · idle in transaction" in alert and "queue head: pid 4102" in alert
    assert "Escalation level 2 (Owner): production" in escalate and "@U0OWNER001" in escalate
    assert "Incident summary: migrate on production (succeeded)" in escalate and "*rollback* · succeeded" in escalate
    assert re.search(r"📄 file uploaded in the thread of .*: incident_production_\w+\.md", escalate), escalate
    assert "rolled back; the sessions queued behind it went through" in unlock
    assert "Resolved: lock wait · production: root blocker pid 4101" in resolved
    assert out.rstrip().splitlines()[-1].startswith("Next: ") and "From zero to Slack" in out.rstrip().splitlines()[-1]
    assert "Traceback" not in out and "failed unexpectedly" not in out
    # printed at start, kept after exit: the CLI reads the demo's records
    assert out.startswith("The demo's folder: .demo/ (state, backups, configuration; kept after exit)")
    assert "The CLI reads it too: runbook-bot --config .demo/runbook-bot.yaml status" in out
    assert (folder / "state.db").exists() and list((folder / "backups").glob("backup_*.dump"))
    result = subprocess.run([sys.executable, "-m", "bot.cli", "--config", str(folder / "runbook-bot.yaml"), "incident"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "Incident summary" in result.stdout and "rollback" in result.stdout
