"""Runs marked interrupted (their process died, found at the next start; or stopped by a shutdown):
their approval request is closed in place, their live monitor message turned into its final
"interrupted" view, and they get the §7.3 incident summary, once each.

A real `runbook-bot serve` process runs a real, slow migration approved over signed HTTP and is
killed with SIGKILL; the next start (Runtime.build, what `serve` runs) finds the run, fails the
request (executing -> failed, conditional), updates its Slack message by the stored channel+ts
(no buttons; the step it was in; what to do next), updates the monitor by the channel+ts the run
kept (runs.details) and posts the incident summary in its thread. A second start does none of it
again; two replicas starting at once do it once between them. A restore is a run too: one killed
while it waits for a lock the test holds is followed up the same way, and the target is unchanged
(its psql died with the bot, before the COMMIT). Real PostgreSQL (the target and the shared state
database), real Alembic, pg_dump and pg_restore; only Slack is faked.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import psycopg
import pytest
from sqlalchemy import update

from bot.approvals import ACTION_APPROVE
from bot.server import Runtime
from runbook import backup as backups
from runbook.config import parse_settings
from runbook.state import Store
from runbook.state.approvals import ApprovalStore
from runbook.state.models import RunRow
from runbook.state.runs import RunStore
from tests.support.bots import BOT_TOKEN, ROOT, approve_migration, bots, pg_state_url, start_bot  # noqa: F401  (fixtures)
from tests.support.configs import config_text, with_password
from tests.support.migrations import app_copy
from tests.support.sample_app import APP_DIR, REV_0003
from tests.support.sessions import Sessions
from tests.support.slack import SIGNING_SECRET, block_actions_body, local_slack, slash_command_body  # noqa: F401
from tests.support.waiting import all_at_once, wait_for

PASSWORD = "Interrupt3d-Run-Secret"
CHANNEL = "C0INTERRUP"
REQUESTER, ALICE = "U0REQUEST1", "U0ALICE001"
SLOW = ("0004_slow",
        """
        op.execute("CREATE TABLE slow_marker (id serial PRIMARY KEY)")
        op.execute("SELECT pg_sleep(300)")
        """,
        "op.execute('DROP TABLE slow_marker')")


@pytest.fixture
def runtimes():
    """Runtime.build(...) of each 'next start', closed at the end."""
    built: list[Runtime] = []
    yield built
    for runtime in built:
        runtime.close()


def write_config(tmp_path: Path, target: str, state_url: str, pg_bin_dir: Path,
                 lock_wait_timeout: str | None = None) -> Path:
    """`lock_wait_timeout`: how long a restore waits for the tables' locks (backups.lock_wait_timeout)."""
    extra = (f"    pg_bin_dir: {json.dumps(str(pg_bin_dir))}\n    migration: {{lock_timeout: 2s, retries: 0}}\n"
             "    watch: {every_seconds: 5}")
    backups_dir = json.dumps(str(tmp_path / "backups"))
    text = config_text(target, channel=CHANNEL, approvers=(ALICE,), state_url=state_url,
                       backups_dir=str(tmp_path / "backups"), approvals={"required": 1}, extra_env=extra)
    if lock_wait_timeout is not None:
        text = text.replace(f"backups: {{dir: {backups_dir}}}",
                            f"backups: {{dir: {backups_dir}, lock_wait_timeout: {lock_wait_timeout}}}")
        assert lock_wait_timeout in text
    app_dir = app_copy(tmp_path, [SLOW])
    path = tmp_path / "runbook-bot.yaml"
    path.write_text(text.replace(json.dumps(str(APP_DIR)), json.dumps(str(app_dir))))
    return path


def next_start(config: Path, slack_url: str, runtimes: list[Runtime]) -> Runtime:
    """What `runbook-bot serve` does first when it starts again."""
    runtime = Runtime.build(parse_settings(config.read_text(), source=config), bot_token=BOT_TOKEN,
                            api_url=slack_url, signing_secret=SIGNING_SECRET, warm=False)
    runtimes.append(runtime)
    return runtime


def query(url: str, sql: str) -> list[tuple]:
    with psycopg.connect(url, autocommit=True, application_name="test-observer") as conn:
        return conn.execute(sql).fetchall()


def migrator_sessions(target: str, like: str = "%") -> list[tuple]:
    return query(target, "SELECT pid FROM pg_stat_activity WHERE application_name LIKE 'rbmigrate/%%' "
                         f"AND query LIKE '{like}'")


def buttons(message: Any) -> list[dict]:
    return [e for b in message.blocks if b["type"] == "actions" for e in b["elements"]]


def shown(message: Any) -> str:
    return json.dumps(message.blocks, ensure_ascii=False)


def updates_of(slack: Any, ts: str) -> list[Any]:
    return [c for c in slack.calls("chat.update") if c.body.get("ts") == ts]


def summaries_in(slack: Any, thread_ts: str | None) -> list[Any]:
    return [m for m in slack.messages(kind="message")
            if m.text.startswith("Incident summary:") and (thread_ts is None or m.thread_ts == thread_ts)]


def everything_slack_saw(slack: Any) -> str:
    calls = "\n".join(json.dumps(c.body, default=str) + c.raw.decode("utf-8", "replace") for c in slack.calls())
    return calls + "\n".join(f.text for f in slack.files())


def assert_closed_in_place(slack: Any, request: Any, run: Any) -> None:
    """The request's own message (same channel and ts), interrupted: the step, what to do, no buttons."""
    message = slack.message(request.channel, request.message_ts)
    assert message.text.startswith("Migration production: interrupted"), message.text
    assert buttons(message) == [] and message.updates >= 1
    text = shown(message)
    assert run.step in text and run.id in text and "Stopped before it finished" in text
    for command in ("/migrate status production", "/migrate validate production", "/migrate rollback production",
                    "/migrate run production"):
        assert command in text, command
    assert "running" not in message.text.lower()


def test_a_bot_killed_mid_migration_closes_its_request_and_posts_the_summary_at_the_next_start(
        sample_db, pg_state_url, tmp_path, pg_bin_dir, local_slack, bots, runtimes):
    target = with_password(sample_db(REV_0003), PASSWORD)
    config = write_config(tmp_path, target, pg_state_url, pg_bin_dir)
    bot = start_bot("bot", config, tmp_path, local_slack.url)
    bots.append(bot)
    bot.wait_healthy()
    store = Store(pg_state_url)
    try:
        request = approve_migration(bot, store, requester=REQUESTER, approver=ALICE, channel=CHANNEL)
        requests = ApprovalStore(store)
        wait_for(lambda: migrator_sessions(target, "%pg_sleep%"), timeout=120, what="the migration to sleep")
        running = wait_for(lambda: (m := local_slack.message(request.channel, request.message_ts))
                           and "running" in m.text and m, timeout=30, what="the request to say running")
        assert buttons(running) == [] and requests.get(request.id).state == "executing"
        # the live monitor (§4) in the request's thread, and where it is, kept on the run
        monitor = wait_for(lambda: next((m for m in local_slack.messages(CHANNEL, kind="message")
                                         if m.thread_ts == request.message_ts
                                         and m.text.startswith("Migration production: running alembic")), None),
                           timeout=30, what="the live monitor")
        [live] = RunStore(store).list(environment="production")
        wait_for(lambda: RunStore(store).get(live.id).detail("monitor"), timeout=10, what="the monitor's ts, kept")
        # and the state it shows: the reconcile re-renders it if Slack misses its last update
        assert RunStore(store).get(live.id).detail("monitor") == {"channel": CHANNEL, "ts": monitor.ts,
                                                                  "rendered": "running"}

        bot.kill()                                         # SIGKILL: no shutdown, no follow-up of its own
        wait_for(lambda: not migrator_sessions(target), timeout=30, what="the orphaned migrator session to end")
        [run] = RunStore(store).list(environment="production")
        assert run.state == "running" and requests.get(request.id).state == "executing"   # nobody knows yet
        assert summaries_in(local_slack, None) == []
        updates_before = len(updates_of(local_slack, request.message_ts))
        monitor_updates = len(updates_of(local_slack, monitor.ts))
        assert "running alembic" in local_slack.message(CHANNEL, monitor.ts).text      # says so until followed up

        next_start(config, local_slack.url, runtimes)
        run = RunStore(store).get(run.id)
        assert run.state == "interrupted" and run.step.startswith("upgrade 0004_slow"), run.step
        # the monitor, updated in place once: interrupted, the step it was in, no live numbers
        assert len(updates_of(local_slack, monitor.ts)) == monitor_updates + 1
        final = local_slack.message(CHANNEL, monitor.ts)
        assert final.text == f"Migration production: interrupted — {run.step}", final.text
        assert RunStore(store).get(run.id).detail("monitor")["rendered"] == "interrupted"   # nothing to reconcile
        assert run.id in shown(final) and "its process (pid" in shown(final) and buttons(final) == []
        for live_number in ("Elapsed", "This attempt", "Active queries", "Lock waits", "running alembic"):
            assert live_number not in shown(final), live_number
        closed = requests.get(request.id)
        assert closed.state == "failed" and closed.result["outcome"] == "interrupted"
        assert closed.result["run_id"] == run.id and closed.result["step"] == run.step
        assert closed.result_summary.startswith(f"interrupted during '{run.step}': its process (pid {bot.pid} ")
        assert len(updates_of(local_slack, request.message_ts)) == updates_before + 1
        assert_closed_in_place(local_slack, request, run)
        # the §7.3 summary, in the request's thread, saying it was interrupted and where; its file too
        [summary] = summaries_in(local_slack, request.message_ts)
        assert summary.channel == CHANNEL
        assert summary.text == "Incident summary: migrate on production (interrupted)"
        assert f"interrupted during '{run.step}'" in shown(summary).replace("ˋ", "'")
        [upload] = [f for f in local_slack.files() if f.filename.startswith(f"incident_production_{run.id}")]
        assert upload.thread_ts == request.message_ts and "interrupted during" in upload.text
        [notice] = [m for m in local_slack.messages(kind="message") if "interrupted run" in m.text]
        assert notice.text == "1 interrupted run found at start; not resumed"
        [event] = store.events(action="incident")
        assert event.run_id == run.id and event.outcome == "posted"
        assert query(target, "SELECT version_num FROM alembic_version") == [(REV_0003,)]

        # a second start: the request, its message, the monitor and the summary are left as they are
        posted_before = len(local_slack.calls("chat.postMessage"))
        next_start(config, local_slack.url, runtimes)
        assert len(updates_of(local_slack, request.message_ts)) == updates_before + 1
        assert len(updates_of(local_slack, monitor.ts)) == monitor_updates + 1
        assert len(summaries_in(local_slack, None)) == 1 and len(store.events(action="incident")) == 1
        assert len(local_slack.calls("chat.postMessage")) == posted_before
        assert requests.get(request.id).version == closed.version

        seen = everything_slack_saw(local_slack) + bot.log() + json.dumps(
            [[e.summary, e.details] for e in store.events(limit=1000)])
        assert PASSWORD not in seen and BOT_TOKEN not in seen
    finally:
        store.close()


# -- a run row whose process is dead (as the killed bot leaves it), without the slow part -------

def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def executing_request_with_a_dead_run(config: Path, slack_url: str, runtimes: list[Runtime]) -> tuple[Any, Any]:
    """A real migrate request, posted by a bot, approved and executing; its run's process is gone."""
    first = next_start(config, slack_url, runtimes)
    request = first.flows.migrations.request("production", "upgrade", "head", REQUESTER, "/migrate run", CHANNEL)
    requests = ApprovalStore(first.store)
    assert requests.transition(request.id, ["pending"], "approved")
    assert requests.transition(request.id, ["approved"], "executing")
    first.flows.approvals.sync_message(request.id)
    run = RunStore(first.store).start(kind="migrate", environment="production", actor=REQUESTER,
                                      from_revision=REV_0003, target_revision="0004_slow", approval_id=request.id)
    with first.store.session() as session, session.begin():
        session.execute(update(RunRow).where(RunRow.id == run.id)
                        .values(pid=dead_pid(), step="upgrade 0004_slow (1/1)"))
    return requests.get(request.id), RunStore(first.store).get(run.id)


def test_two_replicas_starting_together_close_the_request_and_post_the_summary_once(
        sample_db, pg_state_url, tmp_path, pg_bin_dir, local_slack, runtimes):
    config = write_config(tmp_path, with_password(sample_db(REV_0003), PASSWORD), pg_state_url, pg_bin_dir)
    request, run = executing_request_with_a_dead_run(config, local_slack.url, runtimes)
    assert "running" in local_slack.message(request.channel, request.message_ts).text
    updates_before = len(updates_of(local_slack, request.message_ts))
    failures = all_at_once(lambda: next_start(config, local_slack.url, runtimes))
    assert failures == [] and len(runtimes) == 3
    store = runtimes[0].store
    assert RunStore(store).get(run.id).state == "interrupted"
    assert ApprovalStore(store).get(request.id).state == "failed"
    assert len(updates_of(local_slack, request.message_ts)) == updates_before + 1      # updated once, in place
    assert_closed_in_place(local_slack, request, RunStore(store).get(run.id))
    assert len(summaries_in(local_slack, request.message_ts)) == 1 and len(summaries_in(local_slack, None)) == 1
    assert len([m for m in local_slack.messages(kind="message") if "interrupted run" in m.text]) == 1
    assert [e.run_id for e in store.events(action="incident")] == [run.id]
    closing = [e for e in store.events(limit=100) if e.run_id == request.id and e.outcome == "interrupted"]
    assert len(closing) == 1 and closing[0].details["run_id"] == run.id
    # whoever comes late with the same run (a reaper tick that read it, the run's own thread finishing,
    # another replica) changes nothing: the request's UPDATE and the summary's claim are conditional
    late = RunStore(store).get(run.id)
    for runtime in runtimes:
        assert runtime.flows.migrations.follow_up_interrupted([late]) == []
        assert runtime.flows.escalator.after_run(run.id) is None
    assert len(updates_of(local_slack, request.message_ts)) == updates_before + 1
    assert len(summaries_in(local_slack, None)) == 1 and len(store.events(action="incident")) == 1
    assert PASSWORD not in everything_slack_saw(local_slack)


def test_a_run_a_cli_command_reaped_first_is_still_followed_up_by_the_next_bot_start(
        sample_db, pg_state_url, tmp_path, pg_bin_dir, local_slack, runtimes):
    config = write_config(tmp_path, with_password(sample_db(REV_0003), PASSWORD), pg_state_url, pg_bin_dir)
    request, run = executing_request_with_a_dead_run(config, local_slack.url, runtimes)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SLACK_")}
    cli = subprocess.run([sys.executable, "-m", "bot.cli", "--config", str(config), "backups"], cwd=ROOT,
                         env=environ, capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr
    assert f"run {run.id} on production was interrupted" in cli.stderr       # the CLI reaped it, no Slack
    store = runtimes[0].store
    assert RunStore(store).get(run.id).state == "interrupted" and ApprovalStore(store).get(request.id).state == "executing"
    assert summaries_in(local_slack, None) == []

    next_start(config, local_slack.url, runtimes)
    assert ApprovalStore(store).get(request.id).state == "failed"
    assert_closed_in_place(local_slack, request, RunStore(store).get(run.id))
    [summary] = summaries_in(local_slack, request.message_ts)
    assert summary.text == "Incident summary: migrate on production (interrupted)"
    assert "upgrade 0004_slow (1/1)" in shown(summary)
    assert [m for m in local_slack.messages(kind="message") if "interrupted run" in m.text] == []   # the CLI said it
    next_start(config, local_slack.url, runtimes)
    assert len(summaries_in(local_slack, None)) == 1
    assert PASSWORD not in everything_slack_saw(local_slack) + cli.stdout + cli.stderr


# -- a restore is a run: killed while it waits for a lock, followed up like a migration ---------

def target_state(url: str) -> list[Any]:
    """What a restore would change: every row of the sample's tables, and the revision."""
    return [query(url, f"SELECT * FROM {table} ORDER BY id") for table in ("expenses", "incomes", "categories")] + \
        [query(url, "SELECT version_num FROM alembic_version")]


def restore_sessions(url: str) -> list[tuple]:
    return query(url, "SELECT pid, wait_event_type FROM pg_stat_activity "
                      "WHERE application_name = 'runbook-bot/pg_restore'")


@dataclass
class HeldRestore:
    """A restore approved over signed HTTP on a `serve` process, waiting in its restore step for a lock
    the application (the test) holds: `release()` lets go of it."""

    bot: Any
    store: Store
    target: str
    item: Any                  # the backup it restores
    request: Any
    run: Any
    before: list[Any]          # the target as it is, which the restore would change
    release: Any


@contextmanager
def restore_held_at_a_lock(sample_db, pg_state_url, tmp_path, pg_bin_dir, slack_url, bots,
                           bot_env: dict[str, str] | None = None) -> Iterator[HeldRestore]:
    target = with_password(sample_db(REV_0003), PASSWORD)
    # a restore that would wait for the application's locks far longer than the test lives
    config = write_config(tmp_path, target, pg_state_url, pg_bin_dir, lock_wait_timeout="10min")
    settings = parse_settings(config.read_text(), source=config)
    store = Store(pg_state_url)
    store.migrate()
    try:
        item = backups.backup("production", settings.environments["production"], store, actor=REQUESTER)
        with psycopg.connect(target, autocommit=True) as conn:          # what the restore would bring back
            conn.execute("DELETE FROM expenses WHERE id > 10")
        before = target_state(target)
        bot = start_bot("bot", config, tmp_path, slack_url, extra_env=bot_env)
        bots.append(bot)
        bot.wait_healthy()
        assert bot.post(slash_command_body(f"restore {item.id}", user_id=REQUESTER, channel_id=CHANNEL)).status == 200
        requests = ApprovalStore(store)
        request = wait_for(lambda: next((r for r in requests.list() if r.kind == "restore" and r.message_ts), None),
                           timeout=60, what="the restore request, posted")
        with Sessions(target) as sessions:
            app = sessions.open(autocommit=False)
            app.execute("SELECT count(*) FROM expenses")                 # the application, idle in a transaction
            assert bot.post(block_actions_body(ACTION_APPROVE, request.id, user_id=ALICE, channel_id=request.channel,
                                               message_ts=request.message_ts)).status == 200
            runs = RunStore(store)
            run = wait_for(lambda: next((r for r in runs.list(environment="production")
                                         if r.kind == "restore" and r.step == "restore"), None),
                           timeout=120, what="the restore run to reach its restore step")
            wait_for(lambda: [s for s in restore_sessions(target) if s[1] == "Lock"], timeout=60,
                     what="the restore's psql to wait for the application's lock")
            assert run.state == "running" and run.approval_id == request.id and run.pid == bot.pid
            # the safety backup, taken before the restore step, protects the run (retention keeps it)
            safety = backups.list_backups(store, "production")[0]
            assert safety.reason == "safety" and safety.details["before_restore_of"] == item.id
            assert run.details == {"backup_id": item.id, "mode": "full", "tables": item.tables,
                                   "protected_by": safety.id}
            assert requests.get(request.id).state == "executing"
            yield HeldRestore(bot, store, target, item, request, run, before, app.rollback)
    finally:
        store.close()


def test_a_bot_killed_mid_restore_leaves_the_target_unchanged_and_is_followed_up_once_at_the_next_start(
        sample_db, pg_state_url, tmp_path, pg_bin_dir, local_slack, bots, runtimes):
    with restore_held_at_a_lock(sample_db, pg_state_url, tmp_path, pg_bin_dir, local_slack.url, bots) as held:
        bot, store, target, item, request, run, before = (held.bot, held.store, held.target, held.item,
                                                          held.request, held.run, held.before)
        config = tmp_path / "runbook-bot.yaml"
        runs, requests = RunStore(store), ApprovalStore(store)
        bot.kill()                                                     # SIGKILL, mid-restore
        held.release()                                                 # the application lets go of its lock
        # the restore's session ends without its script: psql died with the bot, before the COMMIT
        wait_for(lambda: not restore_sessions(target), timeout=60, what="the restore's session to end")
        assert target_state(target) == before                          # the target is unchanged
        assert runs.get(run.id).state == "running" and requests.get(request.id).state == "executing"
        assert summaries_in(local_slack, None) == []
        updates_before = len(updates_of(local_slack, request.message_ts))

        next_start(config, local_slack.url, runtimes)
        run = runs.get(run.id)
        assert (run.kind, run.state, run.step) == ("restore", "interrupted", "restore")
        assert run.summary.startswith(f"interrupted during 'restore': its process (pid {bot.pid} ")
        closed = requests.get(request.id)
        assert closed.state == "failed" and closed.result["outcome"] == "interrupted"
        assert (closed.result["run_id"], closed.result["kind"], closed.result["backup_id"]) == (run.id, "restore",
                                                                                              item.id)
        assert len(updates_of(local_slack, request.message_ts)) == updates_before + 1     # in place, once
        message = local_slack.message(request.channel, request.message_ts)
        assert message.text.startswith("Restore production: interrupted"), message.text
        assert buttons(message) == [] and "running" not in message.text.lower()
        text = shown(message)
        for expected in ("Stopped before it finished", "`restore`", run.id, "one transaction",
                         f"/migrate restore production {item.id}", "/migrate status production",
                         "/migrate backups production"):
            assert expected in text, expected
        [summary] = summaries_in(local_slack, request.message_ts)
        assert summary.text == "Incident summary: restore on production (interrupted)"
        assert "interrupted during 'restore'" in shown(summary).replace("ˋ", "'")
        assert f"#{item.id}" in shown(summary) and item.name in shown(summary)     # the backup it restores
        [upload] = [f for f in local_slack.files() if f.filename.startswith(f"incident_production_{run.id}")]
        assert upload.thread_ts == request.message_ts
        [notice] = [m for m in local_slack.messages(kind="message") if "interrupted run" in m.text]
        assert notice.text == "1 interrupted run found at start; not resumed"
        assert f"*restore* of backup #{item.id}, the whole database" in shown(notice)
        assert "A restore is not resumed either" in shown(notice)
        assert [e.run_id for e in store.events(action="incident")] == [run.id]
        assert store.events(action="escalate") == []          # an interruption is summarised, not escalated

        posted_before = len(local_slack.calls("chat.postMessage"))
        next_start(config, local_slack.url, runtimes)              # a second start: nothing again
        assert len(updates_of(local_slack, request.message_ts)) == updates_before + 1
        assert len(local_slack.calls("chat.postMessage")) == posted_before
        assert len(store.events(action="incident")) == 1 and requests.get(request.id).version == closed.version

        seen = everything_slack_saw(local_slack) + bot.log() + json.dumps(
            [[e.summary, e.details] for e in store.events(limit=1000)])
        assert PASSWORD not in seen and BOT_TOKEN not in seen


def test_sigterm_during_a_restore_marks_it_interrupted_rolls_it_back_and_follows_it_up_once(
        sample_db, pg_state_url, tmp_path, pg_bin_dir, local_slack, bots):
    """A shutdown whose grace runs out: the restore's run is marked interrupted, its psql killed before the
    COMMIT, its request closed, one summary; the executor finishing late (psql gone) changes none of it
    and does not escalate the failure it sees."""
    with restore_held_at_a_lock(sample_db, pg_state_url, tmp_path, pg_bin_dir, local_slack.url, bots,
                                bot_env={"RUNBOOK_BOT_SHUTDOWN_GRACE_SECONDS": "1"}) as held:
        held.bot.terminate()
        assert held.bot.wait(timeout=60) == 0, held.bot.log()[-3000:]
        held.release()
        wait_for(lambda: not restore_sessions(held.target), timeout=60, what="the restore's session to end")
        assert target_state(held.target) == held.before                 # rolled back: the target is unchanged
        run = RunStore(held.store).get(held.run.id)
        assert (run.state, run.step) == ("interrupted", "restore") and "1 s grace period ran out" in run.summary
        closed = ApprovalStore(held.store).get(held.request.id)
        assert closed.state == "failed" and closed.result["outcome"] == "interrupted"
        assert closed.result["run_id"] == run.id
        message = local_slack.message(held.request.channel, held.request.message_ts)
        assert message.text.startswith("Restore production: interrupted") and buttons(message) == []
        said = local_slack.wait_for_message(lambda m: m.text == "1 interrupted run at shutdown; not resumed",
                                            kind="message", timeout=10)
        assert run.id in shown(said)
        assert [m.text for m in summaries_in(local_slack, held.request.message_ts)] == [
            "Incident summary: restore on production (interrupted)"]
        assert len(summaries_in(local_slack, None)) == 1 and held.store.events(action="escalate") == []
        seen = everything_slack_saw(local_slack) + held.bot.log()
        assert PASSWORD not in seen and BOT_TOKEN not in seen
