"""Issue 4's Slack half end to end: a signed `/migrate run|rollback|validate` -> the real Runtime (Bolt
over HTTP) -> migrate.propose against the real scripts -> an approval request -> signed clicks ->
the real supervised Alembic run on the sample app and PostgreSQL, watched live in the request's
thread -> the log, the validation, the §6.5 recommendation and its button.

Only Slack is faked (LocalSlack). Timings are kept short by the configuration (lock_timeout,
retries, backoff); nothing sleeps to wait: every wait polls with a deadline."""
from __future__ import annotations

import json
import subprocess
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from bot.approvals import ACTION_APPROVE, ACTION_REJECT
from bot.migration_blocks import ACTION_BACKUP_FIRST, ACTION_RECOMMENDED, ACTION_REHEARSE_FIRST
from bot.server import Runtime
from runbook import backup as backups
from runbook.config import parse_settings
from runbook.state.approvals import ApprovalRequest
from runbook.state.runs import RunStore
from tests.support.configs import config_text, with_password
from tests.support.migrations import app_copy
from tests.support.sample_app import APP_DIR, REV_0001, REV_0002, REV_0003, upgrade
from tests.support.sessions import Sessions
from tests.support.slack import (  # noqa: F401  (fixtures)
    SIGNING_SECRET,
    block_actions_body,
    local_slack,
    log_lines,
    signed_post,
    slash_command_body,
)
from tests.support.waiting import wait_for

PASSWORD = "Migr4te-Slack-Secret"
BOT_TOKEN = "xoxb-migrate-secret-token-5"
CHANNEL = "C0MIGRATE1"
REQUESTER, ALICE, BOB, MALLORY = "U0REQUEST1", "U0ALICE001", "U0BOB00001", "U0MALLORY1"
FAST = {"lock_timeout": "500ms", "retries": 2, "retry_backoff_seconds": 0.05}

REVERSIBLE = ("0004_incomes_note", "op.add_column('incomes', sa.Column('note', sa.Text()))",
              "op.drop_column('incomes', 'note')")
IRREVERSIBLE = ("0004_incomes_note", "op.add_column('incomes', sa.Column('note', sa.Text()))",
                "raise NotImplementedError('the notes cannot be taken back')")
FAILING = ("0005_divide_by_zero", "op.execute('SELECT 1/0')", "pass")
# data only: the table keeps its definition, so a table restore can take the rows back
IRREVERSIBLE_DATA = ("0004_incomes_doubled", "op.execute('UPDATE incomes SET amount = amount * 2')",
                     "raise NotImplementedError('the old amounts cannot be told apart')")


def version(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return [r[0] for r in conn.execute("SELECT version_num FROM alembic_version")]


def columns(url: str, table: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return [r[0] for r in conn.execute("SELECT column_name FROM information_schema.columns "
                                           "WHERE table_name = %s", [table])]


@dataclass
class MigrateBot:
    runtime: Runtime
    server: Any
    slack: Any
    url: str

    @property
    def store(self):
        return self.runtime.store

    @property
    def env(self):
        return self.runtime.settings.environments["production"]

    def audited(self) -> int:
        return len(self.store.events(limit=10_000))

    def settle(self, before: int) -> None:
        """The ack returns before the work is even submitted: wait for its event, then for the executor."""
        wait_for(lambda: self.audited() > before, timeout=60, what="the audit event")
        assert self.runtime.flows.wait_idle(timeout=180)

    def command(self, text: str, user: str = REQUESTER, *, recorded: bool = True, channel: str = CHANNEL):
        before = self.audited()
        answer = signed_post(self.server.url + "/slack/events", slash_command_body(text, user_id=user,
                                                                                   channel_id=channel))
        assert answer.status == 200
        if recorded:
            self.settle(before)
        return answer

    def requests(self, kind: str | None = None) -> list[ApprovalRequest]:
        found = self.runtime.flows.approvals.requests.list(limit=200)
        return [r for r in found if kind is None or r.kind == kind]

    def ask(self, text: str = "run", user: str = REQUESTER) -> ApprovalRequest:
        self.command(text, user)
        [request] = [r for r in self.requests() if r.kind in ("migrate", "rollback") and r.state == "pending"]
        return request

    def click(self, request: ApprovalRequest, user: str, action: str = ACTION_APPROVE, *, value: str | None = None,
              channel: str | None = None, message_ts: str | None = None, wait: bool = True):
        before = self.audited()
        answer = signed_post(self.server.url + "/slack/events",
                             block_actions_body(action, request.id if value is None else value, user_id=user,
                                                channel_id=channel or request.channel,
                                                message_ts=message_ts or request.message_ts))
        assert answer.status == 200 and answer.body in (b"", b"{}"), answer.text
        if wait:
            self.settle(before)
        return answer

    def get(self, request: ApprovalRequest) -> ApprovalRequest:
        return self.runtime.flows.approvals.requests.get(request.id)

    def message(self, request: ApprovalRequest):
        return self.slack.message(request.channel, request.message_ts)

    def thread(self, request: ApprovalRequest) -> list[Any]:
        return [m for m in self.slack.messages(kind="message") if m.thread_ts == request.message_ts]

    def ephemerals(self, user: str) -> list[str]:
        return [m.text for m in self.slack.messages(kind="ephemeral") if m.user == user]

    def runs(self):
        return RunStore(self.store).list(limit=100)

    def backup(self) -> backups.Backup:
        return backups.backup("production", self.env, self.store, actor="U0BACKUP01")


def dumped(value: Any) -> str:
    """JSON as a reader sees it (§, →, — unescaped)."""
    return json.dumps(value, ensure_ascii=False)


def buttons(message) -> list[dict]:
    return [e for b in message.blocks if b["type"] == "actions" for e in b["elements"]]


def everything_slack_saw(slack) -> str:
    calls = "\n".join(json.dumps(c.body, default=str) + c.raw.decode("utf-8", "replace") for c in slack.calls())
    return calls + "\n".join(f.text for f in slack.files())


def _settings(tmp_path: Path, url: str, *, app_dir: Path | None, migration: dict | None, validation: dict | None,
              state_url: str, pg_bin_dir: Path, approvers: tuple[str, ...] = (ALICE, BOB), name: str = "bot"):
    extra = [f"    pg_bin_dir: {json.dumps(str(pg_bin_dir))}",
             f"    migration: {json.dumps({**FAST, **(migration or {})})}"]
    if validation is not None:
        extra.append(f"    validation: {json.dumps(validation)}")
    text = config_text(url, channel=CHANNEL, approvers=approvers, state_url=state_url,
                       backups_dir=str(tmp_path / "backups"), extra_env="\n".join(extra))
    if app_dir is not None:
        text = text.replace(json.dumps(str(APP_DIR)), json.dumps(str(app_dir)))
    folder = tmp_path / name
    folder.mkdir(exist_ok=True)
    path = folder / "runbook-bot.yaml"
    path.write_text(text)
    return parse_settings(text, source=path)


@pytest.fixture
def make_bot(tmp_path, local_slack, pg_bin_dir):
    """make_bot(url, app_dir=None, migration=None, validation=None, state_url=...) -> a running MigrateBot."""
    started: list[tuple[Runtime, Any]] = []

    def make(url: str, *, app_dir: Path | None = None, migration: dict | None = None,
             validation: dict | None = None, state_url: str | None = None, name: str = "bot") -> MigrateBot:
        settings = _settings(tmp_path, url, app_dir=app_dir, migration=migration, validation=validation,
                             state_url=state_url or f"sqlite:///{tmp_path / 'state.db'}", pg_bin_dir=pg_bin_dir,
                             name=name)
        runtime = Runtime.build(settings, bot_token=BOT_TOKEN, api_url=local_slack.url,
                                signing_secret=SIGNING_SECRET)
        server = runtime.serve_http("127.0.0.1", 0, background=True)
        started.append((runtime, server))
        return MigrateBot(runtime, server, local_slack, url)

    yield make
    for runtime, server in started:
        server.close()
        runtime.close()


# --------------------------------------------------------------------------
# the request

def test_the_request_shows_what_is_approved_with_a_back_up_first_button(sample_db, make_bot, local_slack):
    bot = make_bot(with_password(sample_db(REV_0001), PASSWORD))
    answer = bot.command("run")
    assert answer.text == "Working on `/migrate run production`…"
    [request] = bot.requests()
    assert (request.kind, request.state, request.requester) == ("migrate", "pending", REQUESTER)
    assert request.params["current"] == [REV_0001] and request.params["target"] == REV_0003
    assert [r["revision"] for r in request.params["revisions"]] == [REV_0002, REV_0003]
    message = bot.message(request)
    assert message.channel == CHANNEL
    shown = dumped(message.blocks)
    assert f"<@{REQUESTER}>" in shown and "production" in shown                    # who asked, where
    assert f"`{REV_0001}`" in shown and f"`{REV_0003}`" in shown                   # current -> target
    assert "add categories table" in shown and "reversible" in shown                # messages, reversibility
    assert "IRREVERSIBLE" in shown and "NotImplementedError" in shown
    assert "SQL preview*: 63 lines, attached as a file in this message's thread" in shown
    [sql] = local_slack.files()                                     # too long to show inline: a file, in the thread
    assert sql.thread_ts == request.message_ts and sql.filename == "migration-sql-production.sql"
    assert "CREATE TABLE categories" in sql.text and "-- Running upgrade 0002_categories" in sql.text
    assert "No backup protects this run yet" in shown and "production has no verified full backup" in shown
    assert "*Risk review*: highest" in shown                        # issue 7's review of these revisions
    assert [r["revision"] for r in request.params["risk"]["revisions"]] == [REV_0002, REV_0003]
    approve, reject, back_up = (next(b for b in buttons(message) if b["action_id"] == a)
                                for a in (ACTION_APPROVE, ACTION_REJECT, ACTION_BACKUP_FIRST))
    assert approve["value"] == reject["value"] == back_up["value"] == request.id     # the opaque id, nothing else
    assert approve["confirm"]["confirm"]["text"] == "Approve"                        # the confirm dialog
    assert version(bot.url) == [REV_0001] and bot.runs() == []                      # nothing ran


def test_back_up_first_takes_a_verified_backup_and_the_run_needs_no_other(sample_db, make_bot, local_slack):
    bot = make_bot(sample_db(REV_0001))
    request = bot.ask("run 0002")
    assert request.params["target"] == REV_0002
    # taking a backup (and so running retention) is the `backup` permission's: approvers by default
    for who in (MALLORY, REQUESTER):
        bot.click(request, who, ACTION_BACKUP_FIRST)
        assert bot.ephemerals(who) == [f":warning: Only the approvers (<@{ALICE}>, <@{BOB}>) may take a backup "
                                       "(`/migrate backup`: retention may delete older backups) on production; "
                                       "nothing was done."]
    assert backups.list_backups(bot.store, "production") == []
    bot.click(request, BOB, ACTION_BACKUP_FIRST)
    [made] = backups.list_backups(bot.store, "production")
    assert made.status == "verified" and made.revision == [REV_0001] and made.actor == BOB
    assert any(f"#{made.id}" in m.text and "verified" in m.text for m in bot.thread(request))
    message = bot.message(request)
    shown = dumped(message.blocks)
    assert f"Protected by* #{made.id}" in shown and ACTION_BACKUP_FIRST not in shown
    assert f"taken at {REV_0001}" in shown and "writes made after it are not in it" in shown
    assert {b["action_id"] for b in buttons(message)} == {ACTION_APPROVE, ACTION_REJECT, ACTION_REHEARSE_FIRST}
    bot.click(request, BOB, ACTION_BACKUP_FIRST, wait=True)         # a stale button: fresh already, no second one
    assert len(backups.list_backups(bot.store, "production")) == 1
    bot.click(request, ALICE)
    assert bot.get(request).state == "done", bot.get(request).result_summary
    assert version(bot.url) == [REV_0002]
    assert len(backups.list_backups(bot.store, "production")) == 1    # the fresh one sufficed
    assert bot.get(request).result["backup_id"] == made.id


# --------------------------------------------------------------------------
# approve, reject, expire, who may

def test_approve_runs_once_watched_live_then_log_validation_and_done(sample_db, make_bot, local_slack, log_lines):
    bot = make_bot(with_password(sample_db(REV_0001), PASSWORD),
                   validation={"tables": ["expenses", "incomes"], "required_columns": {"expenses": ["amount"]}})
    request = bot.ask()
    bot.click(request, ALICE)
    final = bot.get(request)
    assert final.state == "done", final.result_summary
    assert version(bot.url) == [REV_0003]
    [run] = bot.runs()                                              # exactly one run, tied to the request
    assert run.state == "succeeded" and run.approval_id == request.id and run.actor == REQUESTER
    assert final.result["run_id"] == run.id and final.result["validation"] is True
    # the backup was taken first, under the migration's lock, at the approved revision
    [made] = backups.list_backups(bot.store, "production")
    assert made.reason == "migrate" and made.revision == [REV_0001] and final.result["backup_id"] == made.id

    # the request message, updated in place: approved -> running -> done, buttons gone
    message = bot.message(request)
    assert "Migration production: done" in message.text and buttons(message) == []
    assert "validation passed" in dumped(message.blocks)
    # finished: where it came from, not "Now at"; the run's guards and "Approving takes one" are in the past
    assert "*From* " in dumped(message.blocks) and "Now at" not in dumped(message.blocks)
    assert "The run stops" not in dumped(message.blocks) and "Approving takes" not in dumped(message.blocks)

    # the live monitor: ONE message in the thread, then chat.update on its ts, never twice within 2 s
    thread = bot.thread(request)
    [monitor] = [m for m in thread if m.text.startswith("Migration production:") and m.blocks[0]["type"] == "header"
                 and "run `" in dumped(m.blocks[-1])]
    writes = [c.at for c in local_slack.calls("chat.postMessage") if c.response.get("ts") == monitor.ts]
    writes += [c.at for c in local_slack.calls("chat.update") if c.body.get("ts") == monitor.ts]
    assert len(writes) >= 2 and monitor.updates == len(writes) - 1
    assert all(later - earlier >= 2.0 for earlier, later in zip(writes, writes[1:])), writes
    assert "succeeded" in monitor.text
    seen = dumped([monitor.blocks] + [v["blocks"] for v in monitor.versions])
    assert "Active queries" in seen and "Lock waits" in seen and f"rbmigrate/{run.id}" in seen

    # the log (§3.3) as a file in the thread, the validation report after it
    [log] = [f for f in local_slack.files() if f.thread_ts == request.message_ts and f.filename.endswith(".log")]
    assert log.filename == Path(run.log_path).name and "Running upgrade 0001_expenses_incomes" in log.text
    assert any(m.text.startswith("Validation production: PASS") for m in thread)
    reply = thread[-1]                                              # how it ended, for the requester
    assert f"<@{REQUESTER}>" in reply.text and "done" in reply.text
    assert [(a, o) for _, a, o in events_of(bot, request)] == [("migrate", "requested"), ("approve", "approved"),
                                                                ("migrate", "ok")]
    seen = everything_slack_saw(local_slack) + log_lines.getvalue() + dumped(
        [[e.summary, e.details] for e in bot.store.events(limit=500)]) + Path(run.log_path).read_text()
    assert PASSWORD not in seen and BOT_TOKEN not in seen


def test_the_monitor_slows_down_after_429s_and_always_writes_its_final_state(sample_db, make_bot, local_slack):
    """Slack rate-limits the monitor's chat.update (429, more than the client's own two retries): the
    monitor waits out Retry-After, slows down, and its final view is still written."""
    bot = make_bot(with_password(sample_db(REV_0001), PASSWORD))
    bot.backup()
    request = bot.ask()
    limited: list[str] = []

    def rate_limit_the_monitor(event, message):
        if event == "posted" and message.thread_ts == request.message_ts and not limited \
                and message.text.startswith("Migration production:") and message.blocks[0]["type"] == "header":
            limited.append(message.ts)
            local_slack.fail_next("chat.update", retry_after=0, times=9, match={"ts": message.ts})

    local_slack.add_listener(rate_limit_the_monitor)
    bot.click(request, ALICE)
    assert bot.get(request).state == "done"
    [ts] = limited
    monitor = local_slack.message(CHANNEL, ts)
    assert "succeeded" in monitor.text                                 # the final state, written
    updates = [c for c in local_slack.calls("chat.update") if c.body.get("ts") == ts]
    assert sum(1 for c in updates if c.fault) == 9 and updates[-1].fault is None
    # after each 429 that outlasted the client's retries (every third), nothing until Retry-After passed
    for gave_up, following in zip(updates[2::3], updates[3::3]):
        assert following.at - gave_up.at >= 1.0, (gave_up.at, following.at)


def events_of(bot: MigrateBot, request: ApprovalRequest) -> list[tuple[str, str, str]]:
    return [(e.actor, e.action, e.outcome) for e in reversed(bot.store.events(limit=500)) if e.run_id == request.id]


def test_reject_runs_nothing(sample_db, make_bot):
    bot = make_bot(sample_db(REV_0001))
    request = bot.ask()
    bot.click(request, BOB, ACTION_REJECT)
    assert bot.get(request).state == "rejected" and bot.runs() == [] and version(bot.url) == [REV_0001]
    assert f"Rejected by <@{BOB}>" in dumped(bot.message(request).blocks)
    bot.click(request, ALICE)
    assert bot.ephemerals(ALICE) == [":warning: This request is already rejected; nothing was changed."]
    assert bot.runs() == []


def test_an_expired_request_runs_nothing(sample_db, make_bot):
    bot = make_bot(sample_db(REV_0001))
    request = bot.ask()
    with bot.store.engine.begin() as conn:          # its time has passed (the sweep has not run yet)
        conn.exec_driver_sql("UPDATE approvals SET expires_at = '2000-01-01 00:00:00' WHERE id = ?", (request.id,))
    bot.click(request, ALICE)
    [refusal] = bot.ephemerals(ALICE)
    assert refusal.startswith(":warning: This request expired at ") and "`/migrate run production …`" in refusal
    assert bot.get(request).state == "expired" and buttons(bot.message(request)) == []
    assert bot.runs() == [] and version(bot.url) == [REV_0001]


def test_self_approval_and_strangers_are_refused(sample_db, make_bot):
    bot = make_bot(sample_db(REV_0001))
    request = bot.ask(user=ALICE)                                  # an approver asks
    bot.click(request, ALICE)
    assert bot.ephemerals(ALICE) == [":warning: You asked for this migration; someone else has to approve it."]
    bot.click(request, MALLORY)
    [refusal] = bot.ephemerals(MALLORY)
    assert refusal.startswith(":warning: You are not an approver on production") and "\n" not in refusal
    assert bot.get(request).state == "pending" and bot.runs() == [] and version(bot.url) == [REV_0001]
    bot.click(request, BOB)
    assert bot.get(request).state == "done" and version(bot.url) == [REV_0003]


def test_a_double_click_runs_once(sample_db, make_bot):
    bot = make_bot(sample_db(REV_0001))
    request = bot.ask()
    before = bot.audited()
    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(lambda _: bot.click(request, ALICE, wait=False), range(2)))
    bot.settle(before + 1)
    wait_for(lambda: bot.get(request).state in ("done", "failed"), timeout=120, what="the run to end")
    assert bot.runtime.flows.wait_idle(timeout=60)
    assert bot.get(request).state == "done" and len(bot.runs()) == 1
    assert len(bot.ephemerals(ALICE)) == 1                         # the second click was told
    assert [o for _, a, o in events_of(bot, request) if a == "approve"].count("approved") == 1


EFFECT = ("0004_count_upgrades",
          "op.execute('CREATE TABLE upgrade_effects (n int)')\nop.execute('INSERT INTO upgrade_effects VALUES (1)')",
          "op.execute('DROP TABLE upgrade_effects')")


@pytest.fixture
def state_db(pg_server):
    """A PostgreSQL state database of its own; requested before make_bot, it is dropped after the bots close."""
    name = "state_" + uuid.uuid4().hex[:10]
    yield pg_server.create_database(name)
    pg_server.drop_database(name)


def test_concurrent_clicks_on_two_instances_run_exactly_once(state_db, sample_db, make_bot, tmp_path):
    """Two Runtimes, each behind its own HTTP server, sharing one PostgreSQL state database."""
    url = sample_db(REV_0003)
    app = app_copy(tmp_path, [EFFECT])
    first = make_bot(url, app_dir=app, state_url=state_db, name="first")
    second = make_bot(url, app_dir=app, state_url=state_db, name="second")
    request = first.ask()
    clicks = [(bot, user) for user in (ALICE, BOB) for bot in (first, second)]
    barrier = threading.Barrier(len(clicks))
    before = first.audited()

    def click(pair):
        bot, user = pair
        barrier.wait()
        bot.click(request, user, wait=False)

    with ThreadPoolExecutor(max_workers=len(clicks)) as pool:
        list(pool.map(click, clicks))
    wait_for(lambda: first.audited() >= before + len(clicks), timeout=60, what="every click audited")
    wait_for(lambda: first.get(request).state in ("done", "failed"), timeout=180, what="the run to end")
    assert first.runtime.flows.wait_idle(timeout=60) and second.runtime.flows.wait_idle(timeout=60)
    assert first.get(request).state == "done", first.get(request).result_summary
    assert len(first.runs()) == 1 and first.runs()[0].state == "succeeded"
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM upgrade_effects").fetchone()[0] == 1
    assert version(url) == ["0004_count_upgrades"]
    outcomes = [o for _, a, o in events_of(first, request) if a == "approve"]
    assert outcomes.count("approved") == 1 and len(outcomes) == len(clicks)


# --------------------------------------------------------------------------
# a held lock

def test_a_held_lock_times_out_retries_reports_the_root_blocker_and_changes_nothing(sample_db, make_bot, local_slack):
    url = sample_db(REV_0001)
    bot = make_bot(url, migration={"lock_timeout": "2s", "retries": 1})
    bot.backup()                                                    # fresh: the run starts with alembic
    # the override lets the run past the no-go gate (which would refuse it: test_run_guards.py) into the lock
    # (an approver's: asked by the requester it is refused up front, test_run_guards.py)
    request = bot.ask("run override the test holds the lock on purpose", user=ALICE)
    assert request.params["gate_override"] == {"actor": ALICE, "reason": "the test holds the lock on purpose"}
    with Sessions(url) as sessions:
        holder = sessions.open(application_name="nightly-report", autocommit=False)
        holder.execute("SELECT count(*) FROM expenses")             # ACCESS SHARE until its transaction ends
        holder_pid = holder.info.backend_pid
        bot.click(request, BOB)
        final = bot.get(request)
    assert final.state == "failed" and "lock timeout" in final.result_summary
    assert version(url) == [REV_0001] and "category_id" not in columns(url, "expenses")
    [run] = bot.runs()
    assert run.state == "failed" and len(run.result["blockers"]) == 2
    thread = bot.thread(request)
    reports = [m for m in thread if m.text.startswith("Lock timeout on production")]
    assert len(reports) == 2
    for report in reports:
        shown = dumped(report.blocks)
        assert f"root blocker pid {holder_pid}" in report.text
        assert f"pid {holder_pid}" in shown and "nightly-report" in shown and "idle in transaction" in shown
        assert "SELECT count(*) FROM expenses" in shown and "transaction open" in shown
    assert "Retrying in" in dumped(reports[0].blocks) and "No retries left" in dumped(reports[1].blocks)
    # the monitor saw the migration wait, and marked its session in the blocking tree
    [monitor] = [m for m in thread if m.text.startswith("Migration production:") and m.updates]
    seen = dumped([monitor.blocks] + [v["blocks"] for v in monitor.versions])
    assert "is waiting for AccessExclusiveLock" in seen and ":point_right: *the migration*" in seen
    assert f"pid {holder_pid}" in seen
    # what now: nothing was applied, so nothing to roll back; the tree is walked, no button to press
    [advice] = [m for m in thread if "what now (§6.5)" in dumped(m.blocks)]
    shown = dumped(advice.blocks)
    assert "nothing to roll back" in shown and "Did the run leave anything applied? *NO*" in shown
    assert buttons(advice) == [] and "lock timeout" in shown


# --------------------------------------------------------------------------
# a failing revision, and the recommendation's one button

def test_a_failing_revision_recommends_a_downgrade_whose_button_asks_for_it(sample_db, make_bot, tmp_path):
    url = sample_db(REV_0003)
    bot = make_bot(url, app_dir=app_copy(tmp_path, [REVERSIBLE, FAILING]), migration={"step_by_step": True})
    request = bot.ask()
    bot.click(request, ALICE)
    final = bot.get(request)
    assert final.state == "failed" and "division by zero" in final.result_summary
    assert version(url) == ["0004_incomes_note"]                      # the last good revision
    thread = bot.thread(request)
    assert any("Migration production:" in m.text and "failed" in m.text for m in thread)
    [advice] = [m for m in thread if "what now (§6.5)" in dumped(m.blocks)]
    shown = dumped(advice.blocks)
    assert "downgrade to 0003_backfill_categories" in shown and "Migration is reversible? *YES*" in shown
    assert "division by zero" in shown and "0005_divide_by_zero" in shown           # the error, the log tail
    [button] = buttons(advice)
    assert button["action_id"] == ACTION_RECOMMENDED and button["text"]["text"] == \
        f"Ask to roll back to {REV_0003}"
    [recommendation] = bot.requests("recommendation")
    assert button["value"] == recommendation.id and recommendation.message_ts == advice.ts

    # forged and unauthorised clicks change nothing
    for user, value, ts in ((MALLORY, recommendation.id, advice.ts), (ALICE, "0" * 32, advice.ts),
                            (ALICE, "'; DROP TABLE approvals; --", advice.ts), (ALICE, recommendation.id, "1.2"),
                            (ALICE, request.id, advice.ts)):
        bot.click(recommendation, user, ACTION_RECOMMENDED, value=value, message_ts=ts)
    assert bot.requests("rollback") == [] and bot.get(recommendation).state == "pending"
    assert len(bot.ephemerals(MALLORY)) == 1 and len(bot.ephemerals(ALICE)) == 4
    assert all("nothing was changed" in e for e in bot.ephemerals(ALICE) + bot.ephemerals(MALLORY))

    bot.click(recommendation, BOB, ACTION_RECOMMENDED, message_ts=advice.ts)
    [rollback] = bot.requests("rollback")
    assert rollback.state == "pending" and rollback.requester == BOB
    assert rollback.params["current"] == ["0004_incomes_note"] and rollback.params["target"] == REV_0003
    assert bot.get(recommendation).state == "done"
    assert "Followed by" in dumped(local_slack_message(bot, advice).blocks)
    bot.click(recommendation, BOB, ACTION_RECOMMENDED, message_ts=advice.ts)        # once only
    assert len(bot.requests("rollback")) == 1 and "followed already" in bot.ephemerals(BOB)[0]

    bot.click(rollback, ALICE)                                      # and the rollback itself runs
    assert bot.get(rollback).state == "done", bot.get(rollback).result_summary
    assert version(url) == [REV_0003] and "note" not in columns(url, "incomes")


def local_slack_message(bot: MigrateBot, posted) -> Any:
    return bot.slack.message(posted.channel, posted.ts)


def test_an_irreversible_failure_recommends_a_table_restore_from_the_backup(sample_db, make_bot, tmp_path):
    url = sample_db(REV_0003)
    bot = make_bot(url, app_dir=app_copy(tmp_path, [IRREVERSIBLE_DATA, FAILING]), migration={"step_by_step": True})
    request = bot.ask()
    bot.click(request, ALICE)
    assert bot.get(request).state == "failed" and version(url) == ["0004_incomes_doubled"]
    [made] = backups.list_backups(bot.store, "production")           # taken before the run, at 0003
    assert made.reason == "migrate" and made.revision == [REV_0003]
    [advice] = [m for m in bot.thread(request) if "what now (§6.5)" in dumped(m.blocks)]
    assert "table restore (§6.3) of incomes" in dumped(advice.blocks)
    [button] = buttons(advice)
    assert button["text"]["text"] == f"Ask to restore 1 table from #{made.id}"
    [recommendation] = bot.requests("recommendation")
    bot.click(recommendation, ALICE, ACTION_RECOMMENDED, message_ts=advice.ts)
    [restore] = bot.requests("restore")
    assert restore.state == "pending" and restore.requester == ALICE
    assert restore.params["backup_id"] == made.id and restore.params["mode"] == "tables"
    assert restore.params["tables"] == ["public.incomes"]


def test_a_column_the_failed_run_added_turns_the_table_restore_into_a_full_restore(sample_db, make_bot, tmp_path):
    """Issue 12 f: a table restore loads rows only; incomes gained `note` since the backup, so §6.5 says full."""
    url = sample_db(REV_0003)
    bot = make_bot(url, app_dir=app_copy(tmp_path, [IRREVERSIBLE, FAILING]), migration={"step_by_step": True})
    request = bot.ask()
    bot.click(request, ALICE)
    assert bot.get(request).state == "failed" and version(url) == ["0004_incomes_note"]
    [made] = backups.list_backups(bot.store, "production")
    [advice] = [m for m in bot.thread(request) if "what now (§6.5)" in dumped(m.blocks)]
    text = dumped(advice.blocks)
    assert f"full restore (§6.2) from backup #{made.id}: incomes changed definition since it was taken" in text
    assert "Are the affected tables defined as in the backup?" in text and "added since: note" in text


def test_a_table_the_failed_run_created_turns_the_table_restore_into_a_full_restore(sample_db, make_bot, tmp_path):
    url = sample_db(REV_0001)
    bot = make_bot(url, app_dir=app_copy(tmp_path, [FAILING]), migration={"step_by_step": True})
    request = bot.ask()
    bot.click(request, ALICE)
    assert bot.get(request).state == "failed" and version(url) == [REV_0003]     # 0002 and 0003 applied
    [made] = backups.list_backups(bot.store, "production")           # taken at 0001: no categories table
    assert made.revision == [REV_0001] and "public.categories" not in made.tables
    [advice] = [m for m in bot.thread(request) if "what now (§6.5)" in dumped(m.blocks)]
    text = dumped(advice.blocks)
    assert f"full restore (§6.2) from backup #{made.id}: categories did not exist when it was taken" in text
    assert "Are the affected tables in the backup?" in text and "table restore (§6.3)" not in text
    [button] = buttons(advice)
    assert button["text"]["text"] == f"Ask for a full restore from #{made.id}"
    [run] = bot.runs()
    assert run.result["recommendation"]["action"] == "full_restore"          # what the runs table keeps
    [recommendation] = bot.requests("recommendation")
    bot.click(recommendation, ALICE, ACTION_RECOMMENDED, message_ts=advice.ts)
    [restore] = bot.requests("restore")
    assert restore.state == "pending" and restore.params["backup_id"] == made.id
    assert restore.params["mode"] == "full"
    assert version(url) == [REV_0003]                                # asking changed nothing yet


# --------------------------------------------------------------------------
# refused up front

def test_an_irreversible_rollback_is_refused_before_anyone_is_asked(sample_db, make_bot, local_slack):
    bot = make_bot(sample_db("head"))
    bot.command("rollback")
    [refusal] = bot.ephemerals(REQUESTER)
    assert "0003_backfill_categories is irreversible" in refusal and "nobody is asked to approve it" in refusal
    assert "`/migrate restore production ID [tables=a,b]`" in refusal and "\n" not in refusal
    assert bot.requests() == [] and local_slack.calls("chat.postMessage") == []
    assert version(bot.url) == [REV_0003]


def test_the_database_moved_after_the_request_so_the_run_stops_and_says_why(sample_db, make_bot):
    url = sample_db(REV_0001)
    bot = make_bot(url)
    request = bot.ask()
    upgrade(url, REV_0002)                                          # someone migrated meanwhile
    bot.click(request, ALICE)
    final = bot.get(request)
    assert final.state == "failed"
    assert final.result_summary.startswith("stopped before changing anything: production is at 0002_categories, "
                                           "not at 0001_expenses_incomes as approved")
    assert version(url) == [REV_0002]
    [run] = bot.runs()
    assert run.state == "refused"
    assert "it changed since" in dumped(bot.message(request).blocks)
    assert not any(m.text.startswith("Migration production:") for m in bot.thread(request))   # no monitor


@pytest.mark.parametrize("text, expected", [
    ("run ;DROP-TABLE", "';DROP-TABLE' is neither a configured environment nor a revision"),
    ("run -1", "-1 goes the other way: that is `/migrate rollback`"),
    ("rollback +2", "+2 goes the other way: that is `/migrate run`"),
    ("run production head extra", "`/migrate run` takes one revision, then optionally `override REASON`"),
    ("run production head override", "`override` needs a reason"),
    ("rollback $(reboot)", "is neither a configured environment nor a revision"),
])
def test_malformed_run_and_rollback_are_refused_in_the_ack(sample_db, make_bot, local_slack, text, expected):
    bot = make_bot(sample_db(REV_0001))
    answer = bot.command(text, recorded=False)
    assert expected in answer.text and "\n" not in answer.text
    assert bot.requests() == [] and local_slack.calls("chat.postMessage") == []


@pytest.mark.parametrize("text, expected", [
    ("run zzz", "`/migrate run production zzz` refused: unknown revision 'zzz'; this app has 0001_expenses"),
    ("rollback 9999", "`/migrate rollback production 9999` refused: unknown revision '9999'"),
    ("run 0001", "is behind the current revision"),
    ("rollback 0003", "is ahead of the current revision"),
    ("run 0002", "nothing to do: production is already at 0002_categories"),
])
def test_targets_the_scripts_do_not_allow_get_one_line(sample_db, make_bot, local_slack, text, expected):
    bot = make_bot(sample_db(REV_0002))
    bot.command(text)
    [refusal] = bot.ephemerals(REQUESTER)
    assert expected in refusal and "\n" not in refusal and "Traceback" not in refusal
    assert bot.requests() == [] and local_slack.calls("chat.postMessage") == []
    assert version(bot.url) == [REV_0002]


# --------------------------------------------------------------------------
# /migrate validate, and crash safety

def test_validate_posts_the_report_and_a_failure_gets_a_full_restore_button(sample_db, make_bot):
    bot = make_bot(sample_db(REV_0002), validation={"required_columns": {"expenses": ["category_id"]}})
    made = bot.backup()
    bot.command("validate")
    [report] = [m for m in bot.slack.messages(kind="message") if m.text.startswith("Validation production: FAIL")]
    shown = dumped(report.blocks)
    assert "required columns" in shown and "category_id" in shown and "§5.2" in shown
    [advice] = [m for m in bot.slack.messages(kind="message") if m.thread_ts == report.ts]
    assert "full restore (§6.2)" in dumped(advice.blocks) and "Data corruption detected? *YES*" in dumped(
        advice.blocks)
    [button] = buttons(advice)
    assert button["text"]["text"] == f"Ask for a full restore from #{made.id}"
    [recommendation] = bot.requests("recommendation")
    bot.click(recommendation, REQUESTER, ACTION_RECOMMENDED, message_ts=advice.ts)   # the one who validated
    [restore] = bot.requests("restore")
    assert restore.params["mode"] == "full" and restore.params["backup_id"] == made.id
    assert bot.store.events()[-1].action == "validate" or any(
        e.action == "validate" and e.outcome == "fail" for e in bot.store.events(limit=50))


def test_validate_passing_has_no_recommendation(sample_db, make_bot):
    bot = make_bot(sample_db(REV_0003), validation={"tables": ["expenses"]})
    bot.command("validate")
    [report] = bot.slack.messages(kind="message")
    assert report.text == "Validation production: PASS" and bot.requests() == []


def test_interrupted_runs_are_posted_once_at_start_and_never_resumed(sample_db, make_bot, tmp_path):
    url = sample_db(REV_0001)
    first = make_bot(url, name="first")
    dead = subprocess.Popen(["true"])
    dead.wait()
    RunStore(first.store).start(kind="migrate", environment="production", actor=REQUESTER,
                                from_revision=REV_0001, target_revision=REV_0003, run_id="deadbeef00000001")
    with first.store.engine.begin() as conn:        # as if a bot (now dead) had started it mid-migration
        conn.exec_driver_sql("UPDATE runs SET pid = ?, step = 'upgrade 0003_backfill_categories (1/1)' "
                             "WHERE id = 'deadbeef00000001'", (dead.pid,))
    second = make_bot(url, name="second", state_url=f"sqlite:///{tmp_path / 'state.db'}")
    [notice] = [m for m in second.slack.messages(kind="message") if "interrupted run" in m.text]
    assert notice.channel == CHANNEL and notice.text == "1 interrupted run found at start; not resumed"
    shown = dumped(notice.blocks)
    assert "deadbeef00000001" in shown and "upgrade 0003_backfill_categories (1/1)" in shown
    assert f"<@{REQUESTER}>" in shown and "Not resumed" in shown
    assert RunStore(second.store).get("deadbeef00000001").state == "interrupted"
    make_bot(url, name="third", state_url=f"sqlite:///{tmp_path / 'state.db'}")
    assert len([m for m in second.slack.messages(kind="message") if "interrupted run" in m.text]) == 1
    assert version(url) == [REV_0001]


def test_with_no_backup_to_restore_from_the_button_escalates_to_the_owner(sample_db, make_bot):
    bot = make_bot(sample_db(REV_0002), validation={"required_columns": {"expenses": ["category_id"]}})
    bot.command("validate")
    [report] = [m for m in bot.slack.messages(kind="message") if m.text.startswith("Validation production: FAIL")]
    [advice] = [m for m in bot.slack.messages(kind="message") if m.thread_ts == report.ts]
    shown = dumped(advice.blocks)
    assert "escalate (§7)" in shown and "there is no backup" in shown and "_none verified_" in shown
    [button] = buttons(advice)
    assert button["text"]["text"] == "Escalate to the owner" and button["confirm"]["confirm"]["text"] == "Escalate"
    [recommendation] = bot.requests("recommendation")
    bot.click(recommendation, BOB, ACTION_RECOMMENDED, message_ts=advice.ts)
    [event] = [e for e in bot.store.events(limit=50) if e.action == "escalate"]
    assert event.actor == BOB and event.outcome == "level 2"
    escalation = [m for m in bot.slack.messages(kind="message") if "<@U0OWNER001>" in m.text]
    assert escalation and escalation[0].thread_ts == report.ts              # the owner, really mentioned
    assert "Followed by" in dumped(local_slack_message(bot, advice).blocks) and buttons(
        local_slack_message(bot, advice)) == []
    assert bot.requests("restore") == [] and bot.requests("rollback") == []


def test_a_rollback_request_shows_the_downgrade_sql_it_runs(sample_db, make_bot, local_slack):
    """Approvers read what the rollback runs: the downgrade() SQL of the range, labelled as such (issue 12 d)."""
    bot = make_bot(sample_db(REV_0002))
    request = bot.ask("rollback")
    shown = dumped(bot.message(request).blocks)
    sql = request.params["sql_preview"]
    assert "Downgrade SQL preview" in shown and "the downgrade() of these revisions" in shown
    assert "DROP TABLE categories" in sql and "ALTER TABLE expenses DROP COLUMN category_id" in sql
    assert "CREATE TABLE categories" not in sql and "ADD COLUMN" not in sql
    assert "-- Running downgrade 0002_categories -> 0001_expenses_incomes" in sql


def test_validate_after_a_step_by_step_migration_expects_where_the_run_left_it_on_the_cli_and_in_slack(
        sample_db, make_bot, tmp_path):
    """Issue 12 §2 e: after `migrate --to +1` (runbook §3.2) the database is at 0002 on purpose.
    `validate` expects the revision the latest completed run left it at, not head, from the CLI and
    from Slack, so nothing recommends a rollback; `--expect REV` says otherwise explicitly."""
    import sys

    url = with_password(sample_db(REV_0001), PASSWORD)
    bot = make_bot(url, validation={"tables": ["expenses"]})
    config = tmp_path / "bot" / "runbook-bot.yaml"

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "bot.cli", "--config", str(config), *args],
                              capture_output=True, text=True, timeout=300, cwd=Path(__file__).parent.parent)

    stepped = cli("migrate", "--to", "+1", "--yes", "--json")
    assert stepped.returncode == 0, stepped.stderr
    run_id = json.loads(stepped.stdout)["run_id"]
    assert version(url) == [REV_0002]

    checked = cli("validate", "--json")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    report = json.loads(checked.stdout)
    assert report["passed"] and report["expected"] == [REV_0002] and report["current"] == [REV_0002]
    assert report["expected_basis"].startswith(f"where migrate run {run_id} left it, ")
    [version_check] = [c for c in report["checks"] if c["name"] == "alembic version"]
    assert version_check["detail"].startswith(f"alembic_version is {REV_0002}, as expected (where migrate run")

    explicit = cli("validate", "--expect", "head")
    assert explicit.returncode == 1
    assert f"alembic_version is {REV_0002}, expected {REV_0003} (--expect head)" in explicit.stdout
    unknown = cli("validate", "--expect", "nope")
    assert unknown.returncode == 2 and unknown.stdout == "" and len(unknown.stderr.strip().splitlines()) == 1
    assert unknown.stderr.startswith("runbook-bot: validate: ")

    bot.command("validate")
    [posted] = [m for m in bot.slack.messages(kind="message") if m.text.startswith("Validation production")]
    assert posted.text == "Validation production: PASS"
    assert f"as expected (where migrate run {run_id} left it" in dumped(posted.blocks)
    assert bot.requests("recommendation") == [] and not [m for m in bot.slack.messages(kind="message")
                                                         if m.thread_ts == posted.ts]
    for done in (stepped, checked, explicit, unknown):
        assert PASSWORD not in done.stdout + done.stderr


def test_a_command_while_the_state_database_is_down_gets_one_line(sample_db, make_bot, tmp_path):
    """Issue 13 §3: acked, then the state database is gone: the user is told so in one line, not dropped."""
    import shutil

    (tmp_path / "state").mkdir()
    bot = make_bot(sample_db(REV_0001), state_url=f"sqlite:///{tmp_path / 'state' / 'state.db'}")
    state_file = Path(bot.store.engine.url.database)
    moved = state_file.parent.with_name(state_file.parent.name + "-gone")
    bot.store.engine.dispose()
    shutil.move(str(state_file.parent), str(moved))         # the directory is gone: nothing can be opened
    try:
        before = len(bot.slack.messages(kind="ephemeral"))
        answer = signed_post(bot.server.url + "/slack/events", slash_command_body("backups", user_id=REQUESTER,
                                                                                   channel_id=CHANNEL))
        assert answer.status == 200 and "Working on" in answer.text                # acked first, as always
        wait_for(lambda: len(bot.slack.messages(kind="ephemeral")) > before, timeout=30, what="the one-line answer")
        [said] = bot.ephemerals(REQUESTER)[before:]
        assert "the bot's state database is unreachable" in said and "try again in a moment" in said
        assert "Traceback" not in said and "OperationalError" not in said and len(said.splitlines()) == 1
    finally:
        shutil.move(str(moved), str(state_file.parent))
