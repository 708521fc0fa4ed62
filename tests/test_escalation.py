"""Issue 6, §7.2: escalation levels over the real path (signed slash commands -> the real Bolt app ->
Flows -> runbook.escalation -> the local Slack), the pause hook as a real subprocess, GitHub issues
against a loopback fake, and the automatic escalations of failed rollbacks, data loss and failed
restores (the CLI's real processes and the Slack restore flow)."""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from bot.approvals import ACTION_APPROVE
from bot.commands import MAX_ESCALATION_REASON
from bot.escalate import Escalator
from bot.flows import Redactor
from bot.server import Runtime
from runbook import backup as backups
from runbook import escalation as levels
from runbook import incident as incidents
from runbook import migrate
from runbook.config import ConfigError, PauseHook, parse_settings
from runbook.state import Store
from runbook.state.approvals import ApprovalStore
from runbook.state.models import utcnow
from runbook.state.runs import RunStore
from runbook.watch import AlertBook, Condition
from tests.support.configs import with_password
from tests.support.escalations import (DASHBOARD_URL, GITHUB_TOKEN, GUIDELINES_URL, OWNER, RUNBOOK_URL, cli,
                                       escalation_config, hook_script, load)
from tests.support.fake_github import FakeGitHub
from tests.support.migrations import PASSWORD, app_copy, assert_no_secret
from tests.support.sample_app import REV_0003
from tests.support.slack import (  # noqa: F401  (fixtures)
    SIGNING_SECRET,
    block_actions_body,
    local_slack,
    log_lines,
    signed_post,
    slash_command_body,
)
from tests.support.waiting import wait_for

BOT_TOKEN = "xoxb-escalation-secret-token-3"
CHANNEL = "C0ESCALATE1"
ASKER, ALICE = "U0ASKER001", "U0ALICE001"
GROUP = "S0DBTEAM01"
FAILING = ("0004_divide_by_zero", "op.execute('SELECT 1/0')", "pass")
HOOK_BODY = """import os, sys
print("pausing", os.environ["RUNBOOK_BOT_ENVIRONMENT"], "level", os.environ["RUNBOOK_BOT_LEVEL"])
print("bot token:", os.environ.get("SLACK_BOT_TOKEN", "withheld"), "github:", os.environ.get("GITHUB_TOKEN", "withheld"))
print("connected with", {url!r})
print("reason:", os.environ["RUNBOOK_BOT_REASON"], file=sys.stderr)
"""


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


@dataclass
class Bot:
    runtime: Runtime
    server: Any
    slack: Any
    url: str
    config: Path

    @property
    def store(self) -> Store:
        return self.runtime.store

    def audited(self) -> int:
        return len(self.store.events(limit=10_000))

    def command(self, text: str, user: str = ASKER):
        before = self.audited()
        answer = signed_post(self.server.url + "/slack/events", slash_command_body(text, user_id=user,
                                                                                   channel_id=CHANNEL))
        assert answer.status == 200
        wait_for(lambda: self.audited() > before, timeout=60, what="the command's event")
        assert self.runtime.flows.wait_idle(timeout=120)
        return answer

    def posted(self) -> list[Any]:
        return [m for m in self.slack.messages(kind="message")]

    def everything(self) -> str:
        return "\n".join([dumps(c.body) for c in self.slack.calls()]
                         + [f.text for f in self.slack.files()])


def make_bot(tmp_path: Path, url: str, slack: Any, **config: Any) -> Bot:
    path = escalation_config(tmp_path, url, channel=CHANNEL, **config)
    runtime = Runtime.build(load(path), bot_token=BOT_TOKEN, api_url=slack.url, signing_secret=SIGNING_SECRET)
    server = runtime.serve_http("127.0.0.1", 0, background=True)
    return Bot(runtime, server, slack, url, path)


@pytest.fixture
def bots():
    made: list[Bot] = []
    yield made
    for bot in made:
        bot.server.close()
        bot.runtime.close()


def failed_migration(bot: Bot, tmp_path: Path, revisions=(FAILING,)) -> migrate.MigrationResult:
    env = bot.runtime.settings.environments["production"].model_copy(update={"app_dir": app_copy(tmp_path, list(revisions))})
    result = migrate.upgrade("production", env, store=bot.store, actor="cli:ops")
    assert result.outcome in ("failed", "validation failed"), result.error
    return result


# -- level 1 ---------------------------------------------------------------------------------

def test_level_1_points_to_the_section_for_a_failed_migration_with_links_and_dashboards(
        sample_db, tmp_path, local_slack, bots):
    bot = make_bot(tmp_path, with_password(sample_db(REV_0003), PASSWORD), local_slack)
    bots.append(bot)
    result = failed_migration(bot, tmp_path)

    answer = bot.command("escalate")
    assert "Working on `/migrate escalate production`" in answer.text
    [message] = bot.posted()
    assert message.channel == CHANNEL and "Escalation level 1 (Self-service) on production" in message.text
    rendered = dumps(message.blocks)
    assert f"<{RUNBOOK_URL}#65-rollback-decision-tree|§6.5 Rollback Decision Tree>" in rendered
    assert f"<{GUIDELINES_URL}|guidelines>" in rendered and f"<{DASHBOARD_URL}|database>" in rendered
    assert f"migrate run {result.run_id} failed" in rendered and "division by zero" in rendered
    assert "Review the migration log and error messages" in rendered
    assert "<@U0OWNER" not in rendered + message.text and "<!here>" not in rendered + message.text
    assert message.files == []                                     # level 1 carries no summary
    [event] = bot.store.events(action="escalate")
    assert (event.actor, event.outcome, event.run_id) == (ASKER, "level 1", result.run_id)
    assert event.details["sections"][0] == "6.5" and event.details["notified"] == []
    assert PASSWORD not in bot.everything()


def test_level_1_sections_follow_the_current_state(tmp_path):
    settings = load(escalation_config(tmp_path, "postgresql://app@127.0.0.1:1/budget"))
    store = Store(settings.state_url)
    store.migrate()
    assert levels.assess(settings, store, "production").sections == ("1", "7.2")
    book = AlertBook(store)
    now = utcnow()
    book.apply("production", [Condition("production", "lock_wait", "4242", "", 45.0, {"queue_length": 3})], now)
    lock = levels.assess(settings, store, "production", now=now)
    assert lock.sections == ("4.2",) and "open lock alert" in lock.why
    runs = RunStore(store)
    back = runs.start(kind="rollback", environment="production", actor="cli:ops")
    runs.finish(back.id, "failed", result={"error": "downgrade 0003 failed: boom", "outcome": "failed"})
    failed = levels.assess(settings, store, "production", now=now + timedelta(seconds=5))
    assert failed.sections == ("6.2", "7") and "boom" in failed.why and failed.run_id == back.id
    lost = runs.start(kind="migrate", environment="production", actor="cli:ops")
    runs.finish(lost.id, "failed", result={"outcome": "validation failed", "validation": {"data_loss": True}})
    assert levels.assess(settings, store, "production").sections == ("6.2", "7")
    assert levels.section_anchor("7") == "7-escalation--contacts"
    assert levels.section_anchor("6.1") == "61-alembic-downgrade-preferred"


# -- levels 2 and 3 --------------------------------------------------------------------------

def test_level_2_tags_the_owner_group_with_the_summary_and_opens_a_github_issue(
        sample_db, tmp_path, local_slack, bots, log_lines, monkeypatch):
    monkeypatch.setenv("GITHUB_TOKEN", GITHUB_TOKEN)
    with FakeGitHub() as github:
        bot = make_bot(tmp_path, with_password(sample_db(REV_0003), PASSWORD), local_slack, owner=GROUP,
                       escalation=f"  github: {{repo: acme/home_budget, api_url: {dumps(github.url)}, "
                                  "labels: [incident]}\n")
        bots.append(bot)
        result = failed_migration(bot, tmp_path)
        bot.command("escalate production 2 the deploy is blocked")
        wait_for(lambda: len(bot.posted()) >= 2, 10, what="the GitHub link")

    message, link_reply = bot.posted()
    assert message.text.startswith(f"<!subteam^{GROUP}> Escalation level 2 (Owner) on production")
    rendered = dumps(message.blocks)
    assert f"<!subteam^{GROUP}> *Level 2 escalation (Owner) on production*: the deploy is blocked" in rendered
    assert f"raised by <@{ASKER}>" in rendered
    assert "Incident summary: migrate on production (failed)" in rendered and "division by zero" in rendered
    [summary_file] = message.files
    assert summary_file.filename.startswith(f"incident_production_{result.run_id}_")
    assert "# Escalation level 2 (Owner): production" in summary_file.text
    assert f"| Run | `{result.run_id}` (migrate, failed) |" in summary_file.text
    assert f"| 2 Owner | {GROUP} | {ASKER} | the deploy is blocked |" in summary_file.text

    [issue] = github.requests
    assert issue.path == "/repos/acme/home_budget/issues"
    assert issue.headers["authorization"] == f"Bearer {GITHUB_TOKEN}"
    assert issue.body["title"] == "[runbook-bot] Escalation level 2 (Owner): production: the deploy is blocked"
    assert issue.body["body"].startswith("cc @zeevbensender\n") and "division by zero" in issue.body["body"]
    assert issue.body["labels"] == ["incident"]
    assert link_reply.thread_ts == message.ts
    assert "<https://github.example/acme/home_budget/issues/1|#1>" in link_reply.text

    escalated = bot.store.events(action="escalate")[0]
    assert escalated.details["notified"] == [GROUP] and escalated.details["level"] == 2
    opened = bot.store.events(action="escalate.github")[0]
    assert opened.outcome == "ok" and opened.details["github_url"].endswith("/issues/1")
    # the incident now says who was escalated to, and links the issue
    later = incidents.render_markdown(incidents.gather(bot.store, run_id=result.run_id))
    assert f"| 2 Owner | {GROUP} | {ASKER} | the deploy is blocked (https://github.example/acme/home_budget/issues/1) |" in later
    seen = bot.everything() + log_lines.getvalue() + dumps([(e.summary, e.details) for e in
                                                                 bot.store.events(limit=500)])
    assert_no_secret(PASSWORD, seen, issue.body)
    assert_no_secret(GITHUB_TOKEN, seen, issue.body)
    assert_no_secret(BOT_TOKEN, seen, issue.body)


def test_level_3_tags_owner_and_here_and_posts_the_pause_hooks_redacted_output(
        sample_db, tmp_path, local_slack, bots, log_lines, monkeypatch):
    url = with_password(sample_db(REV_0003), PASSWORD)
    hook = hook_script(tmp_path, HOOK_BODY.format(url=url))
    monkeypatch.setenv("SLACK_BOT_TOKEN", BOT_TOKEN)          # as `serve` has them: the hook gets neither
    monkeypatch.setenv("GITHUB_TOKEN", GITHUB_TOKEN)
    bot = make_bot(tmp_path, url, local_slack,
                   escalation=f"  pause_hook: {{argv: {dumps(hook)}, timeout_seconds: 30}}\n"
                              "  github: {repo: acme/home_budget, api_url: 'http://127.0.0.1:1'}\n")
    bots.append(bot)
    bot.command("escalate 3 users see 500s", user="U0APPROVE1")      # an approver: escalate_3's default
    message, github_reply, hook_reply = bot.posted()
    assert github_reply.text.startswith(":warning: No GitHub issue: cannot reach GitHub at http://127.0.0.1:1")
    for text in (message.text, dumps(message.blocks)):
        assert "<!here>" in text and f"<@{OWNER}>" in text
    rendered = dumps(message.blocks)
    assert "Pause the application: stop its writes to the database" in rendered
    assert "Preserve logs: the migration log" in rendered
    assert "Running the pause hook" in rendered and "its outcome follows in this thread" in rendered
    assert message.files and "| Run | none (no migrate, rollback or restore run in the window) |" in message.files[0].text
    assert hook_reply.thread_ts == message.ts and ":white_check_mark: The pause hook" in hook_reply.text
    output = dumps(hook_reply.blocks)
    assert "pausing production level 3" in output and "reason: users see 500s" in output
    assert "connected with postgresql://postgres:***@" in output and PASSWORD not in output
    assert "bot token: withheld github: withheld" in output
    [ran] = bot.store.events(action="escalate.pause_hook")
    assert ran.outcome == "ok" and ran.details["exit_code"] == 0 and PASSWORD not in dumps(ran.details)
    assert PASSWORD not in bot.everything() + log_lines.getvalue()


@pytest.mark.parametrize("case", ["exit", "timeout", "missing"])
def test_a_failing_pause_hook_is_reported_not_swallowed(tmp_path, case):
    if case == "exit":
        hook = PauseHook(argv=hook_script(tmp_path, "import sys\nprint('kubectl: forbidden')\nsys.exit(3)\n"))
    elif case == "timeout":
        hook = PauseHook(argv=hook_script(tmp_path, (
            "import subprocess, sys, time\n"
            f"child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
            f"open({str(tmp_path / 'child.pid')!r}, 'w').write(str(child.pid))\n"
            "print('scaling down...', flush=True)\ntime.sleep(60)\n")), timeout_seconds=1)
    else:
        hook = PauseHook(argv=[str(tmp_path / "no-such-pause-script"), "--now"])
    result = levels.run_pause_hook(hook, environment="production", level=3, secrets=())
    assert not result.ok and result.error
    if case == "exit":
        assert result.exit_code == 3 and result.error == "exit status 3" and "kubectl: forbidden" in result.output
    elif case == "timeout":
        assert result.timed_out and "no exit within 1 s" in result.error and "scaling down..." in result.output
        child = int((tmp_path / "child.pid").read_text())
        wait_for(lambda: not Path(f"/proc/{child}").exists() or
                 Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z",
                 10, what="the hook's own child to be killed with its group")
    else:
        assert result.exit_code is None and "cannot run" in result.error and "No such file or directory" in result.error
    assert "FAILED" in result.line()


def test_a_failing_pause_hook_is_posted_recorded_and_fails_the_cli(sample_db, tmp_path, local_slack, bots):
    hook = hook_script(tmp_path, "import sys\nprint('cannot reach the load balancer', file=sys.stderr)\nsys.exit(7)\n")
    bot = make_bot(tmp_path, sample_db(REV_0003), local_slack,
                   escalation=f"  pause_hook: {{argv: {dumps(hook)}, timeout_seconds: 30}}\n")
    bots.append(bot)
    bot.command("escalate 3", user="U0APPROVE1")
    message, reply = bot.posted()
    assert ":x: *The pause hook" in reply.text and "failed*: exit status 7" in reply.text
    assert "Pause the application by hand" in reply.text
    assert "cannot reach the load balancer" in dumps(reply.blocks)
    [ran] = bot.store.events(action="escalate.pause_hook")
    assert ran.outcome == "failed" and ran.details["exit_code"] == 7

    out = cli(bot.config, "escalate", "--level", "3", "again")
    assert out.returncode == 1
    assert "the pause hook" in out.stderr and "FAILED: exit status 7" in out.stderr
    assert "cannot reach the load balancer" in out.stderr
    assert "# Escalation level 3 (Emergency): production" in out.stdout
    assert "1. Pause the application: stop its writes to the database" in out.stdout


def test_github_failures_are_posted_and_recorded(sample_db, tmp_path, local_slack, bots, monkeypatch):
    with FakeGitHub() as github:
        bot = make_bot(tmp_path, sample_db(REV_0003), local_slack,
                       escalation=f"  github: {{repo: acme/home_budget, api_url: {dumps(github.url)}, "
                                  "token_env: RB_TEST_GITHUB_TOKEN}\n")
        bots.append(bot)
        monkeypatch.delenv("RB_TEST_GITHUB_TOKEN", raising=False)
        bot.command("escalate 2")
        assert github.requests == []
        monkeypatch.setenv("RB_TEST_GITHUB_TOKEN", GITHUB_TOKEN)
        github.fail_next(401, "Bad credentials")
        bot.command("escalate 2")
        with FakeGitHub() as elsewhere:          # a redirect would carry the token there: refused
            github.fail_next(307, "Temporary Redirect", {"Location": elsewhere.url + "/repos/acme/home_budget/issues"})
            bot.command("escalate 2")
        assert elsewhere.requests == []
    replies = [m.text for m in bot.posted() if m.thread_ts]
    assert replies[0] == (":warning: No GitHub issue: escalation.github: the environment variable "
                          "RB_TEST_GITHUB_TOKEN is not set, so no issue was opened")
    assert replies[1] == ":warning: No GitHub issue: GitHub refused the issue in acme/home_budget (HTTP 401: Bad credentials)"
    assert replies[2].startswith(":warning: No GitHub issue: GitHub refused the issue in acme/home_budget (HTTP 307")
    assert [e.outcome for e in bot.store.events(action="escalate.github")] == ["error", "error", "error"]
    assert GITHUB_TOKEN not in bot.everything()


# -- malformed commands ----------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("escalate 4", "There is no escalation level 4: use 1 (self-service), 2 (owner) or 3 (emergency)."),
    ("escalate x", "'x' is neither a configured environment nor an escalation level (1, 2 or 3)"),
    ("escalate 2 " + "why " * 80, f"characters long: keep it to {MAX_ESCALATION_REASON}"),
    ("escalate staging 2", "'staging' is neither a configured environment nor an escalation level"),
])
def test_malformed_escalate_commands_get_one_line_and_change_nothing(tmp_path, local_slack, bots, text, expected):
    bot = make_bot(tmp_path, "postgresql://app@127.0.0.1:1/budget", local_slack)
    bots.append(bot)
    answer = signed_post(bot.server.url + "/slack/events", slash_command_body(text, channel_id=CHANNEL))
    body = answer.json()["text"] if answer.body[:1] == b"{" else answer.text
    assert answer.status == 200 and expected in body and "\n" not in body.strip()
    assert bot.runtime.flows.wait_idle(timeout=10)
    assert local_slack.methods() == ["auth.test"] and bot.store.events() == []


def test_malformed_cli_escalations_and_config_get_one_line(tmp_path):
    config = escalation_config(tmp_path, "postgresql://app@127.0.0.1:1/budget")
    for args, expected in ((["--level", "4"], "invalid choice: 4"), (["--level", "x"], "invalid int value: 'x'"),
                           (["--level", "2", "y" * 301], "the reason is 301 characters long; keep it to 300")):
        out = cli(config, "escalate", *args)
        assert out.returncode == 2 and expected in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert Store(f"sqlite:///{tmp_path / 'state.db'}").events(action="escalate") == []
    assert MAX_ESCALATION_REASON == levels.MAX_REASON

    base = config.read_text()
    for extra, expected in (
            ("  levels: {4: {name: Panic}}\n", "escalation.levels[4].[key]: Input should be 1, 2 or 3"),
            ("  levels: {2: {notify: [bob]}}\n", "escalation.levels[2].notify[0]: Value error, must be owner, here,"),
            ("  pause_hook: {argv: []}\n", "escalation.pause_hook.argv: List should have at least 1 item"),
            ("  pause_hook: {argv: [x], timeout_seconds: 0}\n", "escalation.pause_hook.timeout_seconds"),
            ("  github: {repo: not-a-repo}\n", "escalation.github.repo: not a valid value here"),
            ("  github: {repo: a/b, token_env: 'BAD NAME'}\n", "escalation.github.token_env: not a valid value")):
        with pytest.raises(ConfigError) as error:
            parse_settings(base + extra, source=config)
        assert expected in str(error.value) and "\n" not in str(error.value)
    merged = parse_settings(base + "  levels: {3: {notify: [owner, S0ONCALL1]}}\n", source=config).escalation
    assert merged.level(3).notify == ["owner", "S0ONCALL1"] and merged.level(3).pause_hook
    assert merged.level(2).notify == ["owner"] and merged.level(1).notify == []


# -- automatic escalations -------------------------------------------------------------------

def test_a_failed_rollback_escalates_to_level_2_on_its_own(sample_db, tmp_path, local_slack, pg_bin_dir):
    url = with_password(sample_db(REV_0003), PASSWORD)
    app = app_copy(tmp_path, [("0004_bad_down", "op.execute('SELECT 1')", "op.execute('SELECT 1/0')")])
    config = escalation_config(tmp_path, url, app_dir=app, pg_bin_dir=pg_bin_dir)    # migrate backs up first
    env = {"SLACK_BOT_TOKEN": BOT_TOKEN, "SLACK_API_URL": local_slack.url}
    assert cli(config, "migrate", "--yes", env=env).returncode == 0
    back = cli(config, "rollback", "--yes", env=env)
    assert back.returncode == 1
    store = Store(f"sqlite:///{tmp_path / 'state.db'}")
    rollback_run = RunStore(store).list(limit=1)[0]
    assert rollback_run.kind == "rollback" and rollback_run.state == "failed"
    assert f"level 2 escalation (Owner) (automatic) on production to {OWNER}: posted in Slack" in back.stderr
    [message] = [m for m in local_slack.messages(kind="message") if "Escalation level 2" in m.text]
    assert message.text.startswith(f"<@{OWNER}> Escalation level 2 (Owner) on production: rollback run "
                                   f"{rollback_run.id} failed")
    assert "raised automatically" in dumps(message.blocks)
    [event] = store.events(action="escalate")
    assert event.details["automatic"] and event.run_id == rollback_run.id and event.actor == "runbook-bot"
    # once per run: the next call for the same run does not escalate again
    escalator = Escalator(load(config), store, None, redactor=Redactor(load(config)))
    again = escalator.after_run(rollback_run.id)
    assert isinstance(again.incident, incidents.Incident) and len(store.events(action="escalate")) == 1
    assert_no_secret(PASSWORD, back.stdout, back.stderr, dumps([c.body for c in local_slack.calls()]))


def test_two_callers_following_up_one_failed_rollback_escalate_it_once(sample_db, tmp_path, local_slack):
    import threading

    url = with_password(sample_db(REV_0003), PASSWORD)
    app = app_copy(tmp_path, [("0004_bad_down", "op.execute('SELECT 1')", "op.execute('SELECT 1/0')")])
    config = escalation_config(tmp_path, url, app_dir=app)
    settings = load(config)
    store = Store(settings.state_url)
    store.migrate()
    env = settings.environments["production"]
    assert migrate.upgrade("production", env, store=store).ok
    failed = migrate.downgrade("production", env, store=store)       # the engine alone: nobody followed it up
    assert failed.outcome == "failed" and store.events(action="escalate") == []
    escalators = [Escalator(settings, store, None, redactor=Redactor(settings)) for _ in range(2)]
    start = threading.Barrier(2)
    reports: list[Any] = []

    def follow_up(escalator: Escalator) -> None:
        start.wait()
        reports.append(escalator.after_run(failed.run_id))

    threads = [threading.Thread(target=follow_up, args=(e,)) for e in escalators]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(reports) == 2 and all(r is not None for r in reports)
    [event] = store.events(action="escalate")
    assert event.run_id == failed.run_id and event.details["automatic"] and event.outcome == "level 2"


def test_data_loss_found_by_validation_escalates_to_level_3_and_runs_the_pause_hook(sample_db, tmp_path,
                                                                                   local_slack, pg_bin_dir):
    url = with_password(sample_db(REV_0003), PASSWORD)
    app = app_copy(tmp_path, [("0004_lose_rows", "op.execute('DELETE FROM expenses WHERE id % 2 = 0')", "pass")])
    marker = tmp_path / "paused"
    hook = hook_script(tmp_path, f"open({str(marker)!r}, 'w').write('paused')\nprint('application paused')\n")
    config = escalation_config(tmp_path, url, app_dir=app, validation={"tables": ["expenses"]}, pg_bin_dir=pg_bin_dir,
                               escalation=f"  pause_hook: {{argv: {dumps(hook)}, timeout_seconds: 30}}\n")
    out = cli(config, "migrate", "--yes", env={"SLACK_BOT_TOKEN": BOT_TOKEN, "SLACK_API_URL": local_slack.url})
    assert out.returncode == 1 and "VALIDATION FAILED" in out.stdout.upper()
    assert f"level 3 escalation (Emergency) (automatic) on production to {OWNER}, here: posted in Slack" in out.stderr
    assert "the pause hook" in out.stderr and "exited 0" in out.stderr and marker.read_text() == "paused"
    message = next(m for m in local_slack.messages(kind="message") if "Escalation level 3" in m.text)
    assert message.text.startswith(f"<@{OWNER}> <!here> Escalation level 3 (Emergency) on production: "
                                   "validation after migrate run")
    assert "data loss" in message.text
    hook_reply = next(m for m in local_slack.messages(kind="message") if m.thread_ts == message.ts)
    assert "application paused" in dumps(hook_reply.blocks)
    store = Store(f"sqlite:///{tmp_path / 'state.db'}")
    assert [e.outcome for e in store.events(action="escalate")] == ["level 3"]
    assert [e.outcome for e in store.events(action="escalate.pause_hook")] == ["ok"]
    assert "*Validation*: FAILED — *data loss*" in dumps(message.blocks)
    [request] = [r for r in ApprovalStore(store).list() if r.kind == "migrate"]      # the --yes run's record
    assert request.result_summary.endswith("what to do now is printed with the result (`runbook-bot incident` "
                                           "for §7.3)"), request.result_summary


def test_a_failed_restore_escalates_to_level_2_in_the_requests_thread(sample_db, tmp_path, local_slack, bots,
                                                                       pg_bin_dir):
    bot = make_bot(tmp_path, with_password(sample_db(REV_0003), PASSWORD), local_slack, pg_bin_dir=pg_bin_dir,
                   approvers=(ALICE,))
    bots.append(bot)
    env = bot.runtime.settings.environments["production"]
    made = backups.backup("production", env, bot.store, actor=ASKER)
    bot.command(f"restore {made.id}")
    [request] = ApprovalStore(bot.store).list()
    Path(made.location).write_bytes(b"not the archive any more")     # the archive is damaged meanwhile
    before = bot.audited()
    answer = signed_post(bot.server.url + "/slack/events",
                         block_actions_body(ACTION_APPROVE, request.id, user_id=ALICE, channel_id=request.channel,
                                            message_ts=request.message_ts))
    assert answer.status == 200
    wait_for(lambda: bot.store.events(action="escalate"), 120, what="the automatic escalation")
    assert bot.runtime.flows.wait_idle(timeout=60) and bot.audited() > before
    assert ApprovalStore(bot.store).get(request.id).state == "failed"
    escalation = next(m for m in bot.posted() if "Escalation level 2" in m.text)
    assert escalation.thread_ts == request.message_ts and escalation.channel == request.channel
    post = next(c for c in local_slack.calls("chat.postMessage") if "Escalation level 2" in str(c.body.get("text")))
    assert post.body.get("reply_broadcast") in (True, "true", "1", 1)
    assert escalation.text.startswith(f"<@{OWNER}> Escalation level 2 (Owner) on production: the restore of "
                                      f"backup #{made.id} failed")
    [event] = bot.store.events(action="escalate")
    assert event.details["automatic"] and event.details["notified"] == [OWNER]
    # about the restore's own run, with its summary; a second follow-up does not escalate again
    [run] = RunStore(bot.store).list()
    assert (run.kind, run.state, run.approval_id) == ("restore", "failed", request.id) and event.run_id == run.id
    assert "Incident summary: restore on production (failed)" in json.dumps(escalation.blocks)
    assert bot.runtime.flows.escalator.after_restore(ApprovalStore(bot.store).get(request.id)) is not None
    assert len(bot.store.events(action="escalate")) == 1
    assert PASSWORD not in bot.everything()


def test_after_run_is_what_the_slack_migrate_side_calls(sample_db, tmp_path, local_slack, bots):
    """A run approved through a request message gets its summary in that message's thread; a run that
    succeeded gets nothing."""
    bot = make_bot(tmp_path, sample_db(REV_0003), local_slack)
    bots.append(bot)
    approvals = ApprovalStore(bot.store)
    request = approvals.create(kind="migrate", environment="production", requester=ASKER, params={}, required=1,
                               expires_at=utcnow() + timedelta(minutes=5), state="approved")
    posted = bot.runtime.client.chat_postMessage(channel=CHANNEL, text="migrate request")
    approvals.set_message(request.id, CHANNEL, posted["ts"])
    env = bot.runtime.settings.environments["production"].model_copy(update={"app_dir": app_copy(tmp_path, [FAILING])})
    result = migrate.upgrade("production", env, store=bot.store, actor=ASKER, approval_id=request.id)
    report = bot.runtime.flows.escalator.after_run(result.run_id)
    assert report.ts is not None and report.channel == CHANNEL
    summary = local_slack.message(CHANNEL, report.ts)
    assert summary.thread_ts == posted["ts"] and "Incident summary: migrate on production" in summary.text
    [upload] = [f for f in local_slack.files() if f.filename.startswith("incident_")]
    assert upload.thread_ts == posted["ts"] and "division by zero" in upload.text
    assert bot.store.events(action="incident")[0].outcome == "posted"

    fine = migrate.upgrade("production", bot.runtime.settings.environments["production"], store=bot.store,
                           target=REV_0003)
    assert fine.ok and bot.runtime.flows.escalator.after_run(fine.run_id) is None
    assert os.environ.get("GITHUB_TOKEN") != GITHUB_TOKEN


def test_an_escalation_slack_refuses_is_still_recorded_and_the_asker_told(tmp_path, local_slack, bots):
    bot = make_bot(tmp_path, "postgresql://app@127.0.0.1:1/budget", local_slack)
    bots.append(bot)
    local_slack.fail_next("chat.postMessage", error="channel_not_found")
    bot.command("escalate 2 nobody answers")
    [told] = local_slack.messages(kind="ephemeral")
    assert told.user == ASKER and told.text.endswith(
        "The level 2 escalation was recorded, but its message was not posted (channel_not_found): "
        "tell the owner another way.")
    [event] = bot.store.events(action="escalate")
    assert event.outcome == "level 2" and event.details["posted"] is False and event.details["ts"] is None


MENTIONING = ("0004_mentions_in_its_error", "raise RuntimeError('ask @dba-oncall or @acme/dba-team about it')",
              "pass")
# A GitHub mention: @ not after a letter, digit or _, then a user or org/team name.
GITHUB_MENTION = re.compile(r"(?<![A-Za-z0-9_])@([A-Za-z0-9][A-Za-z0-9-]*(?:/[A-Za-z0-9_.-]+)?)")


def test_mentions_in_the_reason_and_the_apps_output_notify_nobody_on_github(
        sample_db, tmp_path, local_slack, bots, monkeypatch):
    """Issue 13 §4: the reason (anyone's text) and the run's error (the app's output) reach the issue's
    title and body; GitHub would notify every @user and @org/team there. Only the owner is cc'd."""
    monkeypatch.setenv("GITHUB_TOKEN", GITHUB_TOKEN)
    with FakeGitHub() as github:
        bot = make_bot(tmp_path, sample_db(REV_0003), local_slack,
                       escalation=f"  github: {{repo: acme/home_budget, api_url: {dumps(github.url)}}}\n")
        bots.append(bot)
        failed_migration(bot, tmp_path, revisions=(MENTIONING,))
        bot.command("escalate production 2 paging @octocat and @acme/everyone, cc bob@example.com")
        wait_for(lambda: len(github.requests) == 1 and len(bot.posted()) >= 2, 10, what="the GitHub issue")

    [issue] = github.requests
    title, body = issue.body["title"], issue.body["body"]
    assert GITHUB_MENTION.findall(title) == []
    assert title == ("[runbook-bot] Escalation level 2 (Owner): production: paging @\u200boctocat and "
                     "@\u200bacme/everyone, cc bob@example.com")
    assert GITHUB_MENTION.findall(body) == ["zeevbensender"]          # the cc line, and only it
    assert body.startswith("cc @zeevbensender\n\n")
    assert "@\u200boctocat and @\u200bacme/everyone" in body              # the reason, still readable
    assert "ask @\u200bdba-oncall or @\u200bacme/dba-team about it" in body   # the app's error, quoted
    assert "bob@example.com" in body                                   # an e-mail address is no mention
