"""`/migrate watch`, `/migrate activity`, `runbook-bot activity` and /metrics, end to end:
signed HTTP -> the real Bolt app -> Flows -> the engine on the real PostgreSQL -> LocalSlack."""
from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

from bot.localslack import LocalSlack
from bot.server import Runtime
from runbook.state import Store
from runbook.watch import AlertBook
from tests.support.configs import settings_for, with_password, write_config
from tests.support.sessions import Sessions
from tests.support.slack import SIGNING_SECRET, USER_ID, http_request, signed_post, slash_command_body
from tests.support.waiting import wait_for
from tests.test_watch import state_older_than

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "Activity-Passw0rd"


@pytest.fixture
def slack():
    with LocalSlack(joined=("C0TESTCHAN", "C0RUNBOOK1")) as local:   # the configured channel, the commands' one
        yield local


@pytest.fixture
def bot(pg_url, tmp_path, slack):
    settings = settings_for(tmp_path, with_password(pg_url, PASSWORD), thresholds={"idle_in_transaction_seconds": 0.3},
                            approvers=(USER_ID,))         # watch off is the approvers' by default
    runtime = Runtime.build(settings, bot_token="xoxb-watch-e2e", api_url=slack.url, signing_secret=SIGNING_SECRET)
    server = runtime.serve_http("127.0.0.1", 0, background=True)
    yield runtime, server
    server.close()
    runtime.close()


def command(runtime, server, text: str):
    answer = signed_post(server.url + "/slack/events", slash_command_body(text))
    assert runtime.flows.wait_idle(timeout=60)
    return answer


def ack_text(answer) -> str:
    return answer.json()["text"] if answer.body[:1] == b"{" else answer.text


@pytest.mark.parametrize("text, expected", [
    ("watch banana", "`/migrate watch` takes on, off or status, not 'banana'"),
    ("watch production pause", "not 'pause'. Usage: `/migrate watch [env] on | off | status`"),
    ("watch qa on", "Unknown environment 'qa'. Configured: production."),
    ("watch on off", "`/migrate watch` takes no more arguments"),
    ("watch production on now", "`/migrate watch` takes no more arguments"),
    ("activity production everything", "`/migrate activity` takes no more arguments"),
])
def test_malformed_watch_and_activity_commands_get_one_line_and_change_nothing(bot, slack, text, expected):
    runtime, server = bot
    answer = command(runtime, server, text)
    assert answer.status == 200
    line = ack_text(answer)
    assert expected in line and "\n" not in line
    assert slack.methods() == ["auth.test"]
    assert Store(runtime.settings.state_url).events() == []
    assert AlertBook(runtime.store).state("production").paused is False


def test_watch_off_status_on(bot, slack):
    runtime, server = bot
    runner = runtime.scheduler.runner
    command(runtime, server, "watch off")
    posted = slack.messages(kind="message")[-1]
    assert posted.text.startswith("Watch production: paused") and USER_ID in json.dumps(posted.blocks)
    assert runner.run("production", slot=datetime.now(timezone.utc)) == "paused"

    command(runtime, server, "watch production off")          # already off: said so, nothing changes
    assert "(it already was)" in json.dumps(slack.messages(kind="message")[-1].blocks)
    command(runtime, server, "watch status")
    assert slack.messages(kind="message")[-1].text.startswith("Watch production: paused")

    command(runtime, server, "watch on")
    assert slack.messages(kind="message")[-1].text.startswith("Watch production: on")
    assert runner.run("production", slot=datetime.now(timezone.utc)) == "ran"
    command(runtime, server, "watch")                          # status is the default
    status = slack.messages(kind="message")[-1]
    assert "ok in" in json.dumps(status.blocks) and "No open alerts." in json.dumps(status.blocks)
    events = [(e.action, e.outcome, e.summary) for e in Store(runtime.settings.state_url).events(action="watch")]
    assert events == [("watch", "ok", "status"), ("watch", "ok", "on"), ("watch", "ok", "status"),
                      ("watch", "ok", "off (unchanged)"), ("watch", "ok", "off")]


def test_activity_and_metrics(bot, slack, pg_url):
    runtime, server = bot
    with Sessions(pg_url) as s:
        idle = s.open(autocommit=False, application_name="psql-oncall")
        idle.execute("SELECT 1 /* <!channel> look */")
        wait_for(lambda: state_older_than(s, idle.info.backend_pid, 0.4), timeout=10, what="idle 0.4 s")
        command(runtime, server, "activity")
        [posted] = slack.messages(kind="message")
        assert posted.text.startswith("Activity production: 0 long, 1 idle in transaction, 0 waiting on locks")
        blocks = json.dumps(posted.blocks)
        assert f"pid {idle.info.backend_pid}" in blocks and "psql-oncall" in blocks
        assert "&lt;!channel&gt;" in blocks and "<!channel>" not in blocks
        assert runtime.scheduler.runner.run("production", slot=datetime.now(timezone.utc)) == "ran"
    metrics = http_request(server.url + "/metrics").text
    assert 'runbook_bot_watch_idle_in_transaction{environment="production"} 1.0' in metrics
    assert 'runbook_bot_watch_open_alerts{environment="production",kind="idle_in_transaction"} 1.0' in metrics
    assert 'runbook_bot_watch_up{environment="production"} 1.0' in metrics
    everything = "\n".join(json.dumps(c.body, default=str) for c in slack.calls())
    assert PASSWORD not in everything


def test_grafana_dashboard_uses_only_metrics_the_bot_exports(bot):
    runtime, _ = bot
    from prometheus_client import generate_latest

    runtime.scheduler.runner.run("production", slot=datetime.now(timezone.utc))
    exported = {line.split("{")[0].split(" ")[0] for line in generate_latest(runtime.app.metrics.registry).decode().splitlines()
                if line and not line.startswith("#")}
    dashboard = json.loads((ROOT / "deploy" / "grafana-runbook-bot.json").read_text())
    import re

    used = {name for panel in dashboard["panels"] for target in panel["targets"]
            for name in re.findall(r"\b(runbook_bot_[a-z_]+)", target["expr"])}
    assert used and used <= exported, used - exported
    for wanted in ("lock_waiters", "long_queries", "idle_in_transaction", "oldest_transaction_seconds", "poll_seconds",
                   "open_alerts", "last_success_timestamp_seconds"):
        assert any(wanted in name for name in used), wanted


def cli(*args: str, config: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bot.cli", "--config", str(config), *args], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)


def test_cli_activity_text_json_and_unreachable(pg_url, tmp_path):
    config = write_config(tmp_path, with_password(pg_url, PASSWORD), thresholds={"long_query_seconds": 0.3})
    with Sessions(pg_url) as s:
        long = s.start("SELECT pg_sleep(30) /* cli-activity */", application_name="etl")
        s.wait_until_active(long.pid, "cli-activity")
        wait_for(lambda: state_older_than(s, long.pid, 0.4), timeout=10, what="the query to pass 0.4 s")
        result = cli("activity", "--json", config=config)
        assert result.returncode == 0, result.stderr
        data = json.loads(result.stdout)
        [entry] = data["long_queries"]
        assert data["environment"] == "production" and entry["pid"] == long.pid and entry["application"] == "etl"
        assert entry["backend_start"] and "pg_sleep(30)" in entry["query"]
        text = cli("activity", config=config)
        assert text.returncode == 0 and f"pid {long.pid} postgres/etl" in text.stdout
    assert PASSWORD not in result.stdout + text.stdout
    down = write_config(tmp_path, f"postgresql://app:{PASSWORD}@127.0.0.1:1/budget", connect_timeout=1)
    failed = cli("activity", config=down)
    assert failed.returncode == 2 and "cannot connect to 127.0.0.1:1/budget" in failed.stderr
    assert len(failed.stderr.strip().splitlines()) == 1 and PASSWORD not in failed.stderr
