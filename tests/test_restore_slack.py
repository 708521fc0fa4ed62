"""`/migrate restore` end to end: a signed slash command -> the real Runtime -> runbook.backup's
plan against the real catalogue and target -> an approval request -> a signed click -> the real
restore (pg_restore, safety backup, advisory lock) -> the message updated with the result.

The backups themselves are made by the engine (real pg_dump, verified); the sample app's data is
changed after the backup, so a restore that worked brings back exactly the rows dumped."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest

from bot.approvals import ACTION_APPROVE
from bot.server import Runtime
from runbook import backup as backups
from runbook.state.approvals import ApprovalRequest
from runbook.state.runs import RunStore
from tests.support.configs import settings_for, with_password
from tests.support.sample_app import REV_0002, REV_0003, upgrade
from tests.support.slack import (  # noqa: F401  (fixtures)
    SIGNING_SECRET,
    block_actions_body,
    local_slack,
    log_lines,
    signed_post,
    slash_command_body,
)
from tests.support.waiting import wait_for

PASSWORD = "Rest0re-Db-Secret"
BOT_TOKEN = "xoxb-restore-secret-token-9"
CHANNEL = "C0RESTORE1"
REQUESTER, ALICE, MALLORY = "U0REQUEST1", "U0ALICE001", "U0MALLORY1"


def rows(url: str, table: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(f"SELECT * FROM {table} ORDER BY id").fetchall()  # table: a test constant


def execute(url: str, *statements: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


@dataclass
class RestoreBot:
    runtime: Runtime
    server: Any
    slack: Any
    url: str

    @property
    def env(self):
        return self.runtime.settings.environments["production"]

    def backup(self, **kwargs: Any) -> backups.Backup:
        return backups.backup("production", self.env, self.runtime.store, actor="U0BACKUP01", **kwargs)

    def audited(self) -> int:
        return len(self.runtime.store.events(limit=10_000))

    def settle(self, before: int) -> None:
        """The ack returns before the work is even submitted: wait for its event, then for the executor."""
        wait_for(lambda: self.audited() > before, timeout=60, what="the audit event")
        assert self.runtime.flows.wait_idle(timeout=180)

    def command(self, text: str, user: str = REQUESTER, *, recorded: bool = True):
        before = self.audited()
        answer = signed_post(self.server.url + "/slack/events",
                             slash_command_body(text, user_id=user, channel_id=CHANNEL))
        assert answer.status == 200
        if recorded:
            self.settle(before)
        return answer

    def requests(self) -> list[ApprovalRequest]:
        return self.runtime.flows.approvals.requests.list()

    def click(self, request: ApprovalRequest, user: str, action: str = ACTION_APPROVE) -> None:
        before = self.audited()
        answer = signed_post(self.server.url + "/slack/events",
                             block_actions_body(action, request.id, user_id=user, channel_id=request.channel,
                                                message_ts=request.message_ts))
        assert answer.status == 200
        self.settle(before)

    def get(self, request: ApprovalRequest) -> ApprovalRequest:
        return self.runtime.flows.approvals.requests.get(request.id)

    def message(self, request: ApprovalRequest):
        return self.slack.message(request.channel, request.message_ts)

    def ephemerals(self, user: str) -> list[str]:
        return [m.text for m in self.slack.messages(kind="ephemeral") if m.user == user]


@pytest.fixture
def restore_bot(sample_db, tmp_path, local_slack, pg_bin_dir):
    url = with_password(sample_db(REV_0002), PASSWORD)
    settings = settings_for(tmp_path, url, channel=CHANNEL, approvers=(ALICE,),
                            command_channels=[CHANNEL, "C0ELSEWHERE", "dm"],    # asked elsewhere (below)
                            backups_dir=str(tmp_path / "backups"),
                            extra_env=f"    pg_bin_dir: {json.dumps(str(pg_bin_dir))}")
    runtime = Runtime.build(settings, bot_token=BOT_TOKEN, api_url=local_slack.url, signing_secret=SIGNING_SECRET)
    server = runtime.serve_http("127.0.0.1", 0, background=True)
    try:
        yield RestoreBot(runtime, server, local_slack, url)
    finally:
        server.close()
        runtime.close()


def test_full_restore_asks_for_approval_then_brings_back_the_exact_rows(restore_bot, local_slack, log_lines):
    bot = restore_bot
    dumped = {t: rows(bot.url, t) for t in ("expenses", "incomes", "categories")}
    item = bot.backup()
    execute(bot.url, "DELETE FROM expenses WHERE id % 3 = 0", "UPDATE incomes SET amount = amount + 1",
            "INSERT INTO categories (name) VALUES ('added after the backup')")
    expenses_now = len(rows(bot.url, "expenses"))

    answer = bot.command(f"restore {item.id}")
    assert answer.text == f"Working on `/migrate restore production {item.id}`…"
    [request] = bot.requests()
    assert request.state == "pending" and request.kind == "restore" and request.requester == REQUESTER
    assert request.params["expected_revision"] == [REV_0002] and request.params["mode"] == "full"
    shown = json.dumps(bot.message(request).blocks, ensure_ascii=False)
    assert f"backup #{item.id}" in shown and item.name in shown and item.sha256[:16] in shown
    assert f"`public.expenses`: {expenses_now:,} rows now → {len(dumped['expenses']):,} rows in the backup" in shown
    assert REV_0002 in shown and "the restore stops if that changes" in shown
    assert rows(bot.url, "expenses") != dumped["expenses"]           # nothing happens before approval

    bot.click(request, ALICE)
    final = bot.get(request)
    assert final.state == "done", final.result_summary
    for table, before in dumped.items():
        assert rows(bot.url, table) == before                          # the exact rows, every table
    assert final.result["revision_after"] == [REV_0002]
    assert final.result["row_counts_after"]["public.expenses"] == len(dumped["expenses"])
    assert final.result["mismatches"] == {}
    safety = backups.get_backup(bot.runtime.store, "production", final.result["safety_backup_id"])
    assert safety.reason == "safety" and safety.status == "verified"
    message = bot.message(request)
    assert "Restore production: done" in message.text and not any(b["type"] == "actions" for b in message.blocks)
    result_text = json.dumps(message.blocks, ensure_ascii=False)
    assert "Row counts after" in result_text and f"safety backup #{safety.id}" in result_text
    # a finished restore says what it did, not what it will do (issue 17 §4)
    assert "What was replaced" in result_text and "rows before →" in result_text
    assert "will be replaced" not in result_text and "rows now" not in result_text
    assert "the restore stops if that changes" not in result_text and "applied in one transaction" in result_text
    reply = local_slack.messages(kind="message")[-1]
    assert reply.thread_ts == request.message_ts and f"<@{REQUESTER}>" in reply.text
    events = [(e.actor, e.action, e.outcome) for e in reversed(bot.runtime.store.events()) if e.run_id == request.id]
    assert events == [(REQUESTER, "restore", "requested"), (ALICE, "approve", "approved"), (REQUESTER, "restore", "ok")]
    # the restore is a run of its own (a heartbeat, its phase as the step, the request it ran for)
    [run] = RunStore(bot.runtime.store).list(environment="production")
    assert (run.kind, run.state, run.step, run.approval_id, run.actor) == ("restore", "succeeded", "restore",
                                                                           request.id, REQUESTER)
    safety = bot.get(request).result["safety_backup_id"]           # the safety backup protects the restore
    assert run.details == {"backup_id": item.id, "mode": "full", "tables": item.tables, "protected_by": safety}
    assert (run.from_revision, run.target_revision) == (REV_0002, REV_0002) and run.finished_at is not None
    assert run.result["from"] == [REV_0002] and run.result["to"] == [REV_0002] and run.result["error"] is None
    assert run.result["safety_backup_id"] == safety and final.result["run_id"] == run.id
    assert f"run `{run.id}`" in result_text
    seen = ("\n".join(json.dumps(c.body, default=str) for c in local_slack.calls()) + log_lines.getvalue()
            + json.dumps([[r.summary, r.result, r.details] for r in RunStore(bot.runtime.store).list()]))
    assert PASSWORD not in seen and BOT_TOKEN not in seen


def test_full_restore_request_names_the_types_and_functions_it_drops(restore_bot):
    """A failed migration left an enum type (sa.Enum) and a function behind: the approvers see them
    named, and after the restore they are gone, so re-running the migration can create them again."""
    bot = restore_bot
    item = bot.backup()
    execute(bot.url, "CREATE TYPE expense_kind AS ENUM ('fixed', 'variable')",
            "CREATE TABLE budgets (id int PRIMARY KEY, kind expense_kind)",
            "CREATE FUNCTION budget_total(kind expense_kind) RETURNS numeric LANGUAGE sql AS 'SELECT 0'")
    bot.command(f"restore {item.id}")
    [request] = bot.requests()
    assert "1 type(s) created since the backup will be dropped: expense_kind" in request.params["warnings"]
    shown = [b["text"]["text"] for b in bot.message(request).blocks if b["type"] == "section"]
    assert (":warning: 1 function(s) created since the backup will be dropped: budget_total(public.expense_kind)\n"
            ":warning: 1 type(s) created since the backup will be dropped: expense_kind") in "\n".join(shown)
    bot.click(request, ALICE)
    assert bot.get(request).state == "done", bot.get(request).result_summary
    with psycopg.connect(bot.url) as conn:
        assert conn.execute("SELECT to_regtype('expense_kind'), to_regprocedure('budget_total(expense_kind)'), "
                            "to_regclass('budgets')").fetchone() == (None, None, None)


def test_table_restore_leaves_other_tables_alone(restore_bot):
    bot = restore_bot
    dumped = rows(bot.url, "expenses")
    item = bot.backup()
    execute(bot.url, "DELETE FROM expenses WHERE id % 2 = 0", "UPDATE incomes SET amount = amount + 7")
    incomes_changed = rows(bot.url, "incomes")
    bot.command(f"restore {item.id} tables=expenses")
    [request] = bot.requests()
    assert request.params["mode"] == "tables" and request.params["tables"] == ["public.expenses"]
    shown = json.dumps(bot.message(request).blocks, ensure_ascii=False)
    assert "public.expenses" in shown and "public.incomes" not in shown
    bot.click(request, ALICE)
    assert bot.get(request).state == "done", bot.get(request).result_summary
    assert rows(bot.url, "expenses") == dumped
    assert rows(bot.url, "incomes") == incomes_changed
    [run] = RunStore(bot.runtime.store).list()
    assert (run.kind, run.state) == ("restore", "succeeded")
    assert run.details == {"backup_id": item.id, "mode": "tables", "tables": ["public.expenses"],
                           "protected_by": bot.get(request).result["safety_backup_id"]}


def test_restore_stops_when_the_revision_changed_after_approval_was_asked(restore_bot):
    bot = restore_bot
    item = bot.backup()
    bot.command(f"restore {item.id}")
    [request] = bot.requests()
    upgrade(bot.url, REV_0003)                                         # someone migrated meanwhile
    execute(bot.url, "DELETE FROM incomes")
    bot.click(request, ALICE)
    final = bot.get(request)
    assert final.state == "failed"
    assert "changed since the restore was requested" in final.result_summary
    assert "nothing was restored" in final.result_summary
    assert rows(bot.url, "incomes") == []                              # untouched
    assert "Failed" in json.dumps(bot.message(request).blocks)
    [run] = RunStore(bot.runtime.store).list()                        # a failed run, followed up as one
    assert (run.kind, run.state, run.approval_id) == ("restore", "failed", request.id)
    assert run.summary == final.result_summary and run.result["error"] == final.result_summary
    assert final.result == {"run_id": run.id, "outcome": "failed"}
    [escalation] = bot.runtime.store.events(action="escalate")          # §7.2 level 2, about this run
    assert escalation.run_id == run.id and escalation.outcome == "level 2" and escalation.details["automatic"]


@pytest.mark.parametrize("text, expected", [
    ("restore 999999", "unknown backup id 999999 for production: see `/migrate backups production` for the catalogue"),
    ("restore {id} tables=nope", "unknown table 'nope'"),
    ("restore {failed}", "only verified backups can be restored"),
    ("restore {schema}", "is schema-only"),
])
def test_restore_refused_up_front_asks_nobody(restore_bot, local_slack, text, expected):
    bot = restore_bot
    item = bot.backup()
    schema = bot.backup(kind="schema")
    with bot.runtime.store.engine.begin() as conn:  # a catalogue entry whose verification failed
        failed_id = conn.exec_driver_sql(
            "INSERT INTO backups (environment, kind, format, reason, status, level, name, location, started_at, "
            "tables, row_counts, actor, details) SELECT environment, kind, format, reason, 'failed', 'toc', "
            "name || '-failed', location, started_at, tables, row_counts, actor, details FROM backups "
            f"WHERE id = {item.id} RETURNING id").scalar_one()
    before = rows(bot.url, "expenses")
    bot.command(text.format(id=item.id, failed=failed_id, schema=schema.id))
    [refusal] = bot.ephemerals(REQUESTER)
    assert expected in refusal and "refused" in refusal and "\n" not in refusal
    assert bot.requests() == [] and local_slack.calls("chat.postMessage") == []
    assert rows(bot.url, "expenses") == before
    assert bot.runtime.store.events()[0].outcome == "error"


@pytest.mark.parametrize("text, expected", [
    ("restore", "`/migrate restore` needs the id of a backup"),
    ("restore abc", "'abc' is neither a configured environment nor a backup id"),
    ("restore 3 tables=a;b", "'a;b' is not a table name"),
    ("restore 3 4", "takes one backup id and at most one tables="),
])
def test_malformed_restore_commands_are_refused_in_the_ack(restore_bot, local_slack, text, expected):
    answer = restore_bot.command(text, recorded=False)      # refused in the ack: nothing is submitted
    assert expected in answer.text and "\n" not in answer.text
    assert restore_bot.requests() == [] and local_slack.calls("chat.postMessage") == []


def test_only_approvers_can_start_a_restore(restore_bot):
    bot = restore_bot
    item = bot.backup()
    execute(bot.url, "DELETE FROM expenses")
    bot.command(f"restore {item.id}")
    [request] = bot.requests()
    bot.click(request, MALLORY)
    bot.click(request, REQUESTER)
    assert bot.get(request).state == "pending" and rows(bot.url, "expenses") == []
    assert len(bot.ephemerals(MALLORY)) == 1 and len(bot.ephemerals(REQUESTER)) == 1


def test_cli_yes_restore_is_audited_as_the_approval(restore_bot):
    from bot.flows import Redactor, restore_with_yes

    bot = restore_bot
    dumped = rows(bot.url, "expenses")
    item = bot.backup()
    execute(bot.url, "DELETE FROM expenses")
    final = restore_with_yes(bot.runtime.settings, bot.runtime.store, "production", str(item.id), [], "cli:ops",
                             redactor=Redactor(bot.runtime.settings))
    assert final.state == "done" and rows(bot.url, "expenses") == dumped
    assert [(d.approver, d.decision) for d in final.decisions] == [("cli:ops", "yes")]
    [run] = RunStore(bot.runtime.store).list()
    assert (run.kind, run.state, run.actor, run.approval_id) == ("restore", "succeeded", "cli:ops", final.id)
    assert final.result["run_id"] == run.id
    events = [(e.actor, e.action, e.outcome) for e in reversed(bot.runtime.store.events()) if e.run_id == final.id]
    assert events == [("cli:ops", "restore", "approved"), ("cli:ops", "restore", "ok")]
    with pytest.raises(backups.BackupError, match="unknown table 'nope'"):
        restore_with_yes(bot.runtime.settings, bot.runtime.store, "production", str(item.id), ["nope"], "cli:ops",
                         redactor=Redactor(bot.runtime.settings))


def test_console_demo_can_press_the_approval_buttons():
    """The console demo's `click approve [as U…]`: the requester is refused, the approver's click runs it."""
    import io

    from bot.console import DEMO_APPROVER, DEMO_USER, Demo

    out = io.StringIO()
    with Demo(out) as demo:
        env = demo.runtime.settings.environments["production"]
        item = backups.backup("production", env, demo.runtime.store, actor=DEMO_USER)
        demo.run("click approve")                                     # nothing to click yet
        demo.run(f"/migrate restore {item.id}")
        wait_for(lambda: demo.runtime.flows.approvals.requests.list(), timeout=60, what="the approval request")
        wait_for(lambda: demo.runtime.flows.approvals.requests.list()[0].message_ts, timeout=60, what="its message")
        demo.run(f"click approve as {DEMO_USER}")
        demo.run("click approve")
        [request] = demo.runtime.flows.approvals.requests.list()
        assert request.state == "done" and request.approvers == [DEMO_APPROVER]
    text = out.getvalue()
    assert "(no approval request with buttons to click" in text
    assert f"{DEMO_USER} clicked Approve" in text and "You asked for this restore; someone else has to approve it." in text
    assert f"{DEMO_APPROVER} clicked Approve" in text and "Restore production: done" in text
    assert "Row counts after" in text and "Traceback" not in text


def test_a_restore_asked_elsewhere_is_posted_in_the_approvals_channel(restore_bot, local_slack):
    bot = restore_bot
    item = bot.backup()
    before = bot.audited()
    local_slack.join("C0ELSEWHERE")            # invited there too (test_slack_delivery: where it is not)
    signed_post(bot.server.url + "/slack/events",
                slash_command_body(f"restore {item.id}", user_id=REQUESTER, channel_id="C0ELSEWHERE"))
    bot.settle(before)
    [request] = bot.requests()
    assert request.channel == CHANNEL and bot.message(request) is not None
    [pointer] = [m for m in local_slack.messages(kind="ephemeral") if m.user == REQUESTER]
    assert pointer.channel == "C0ELSEWHERE"
    assert pointer.text == f"Approval for restore on production requested in <#{CHANNEL}>."
