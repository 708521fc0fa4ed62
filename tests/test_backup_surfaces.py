"""Backups on every surface: `runbook-bot backup/backups/restore` as real processes, and
/migrate backup and /migrate backups over signed HTTP to the real Bolt app, real Flows, the
engine, the real pg_dump and the local Slack Web API. No password in any output, message or event."""
from __future__ import annotations

import json
import subprocess
import sys

import psycopg
import pytest

from bot.flows import BackupProgress
from runbook import backup as engine
from runbook.state import Store
from tests.support.configs import settings_for, with_password, write_config
from tests.support.sample_app import REV_0003
from tests.support.slack import USER_ID
from tests.test_backup import add_random_bytes
from tests.test_end_to_end import BOT_TOKEN, ack_text, command, everything_slack_saw, slack, start  # noqa: F401

PASSWORD = "Surface-Db-Passw0rd"


def slack_settings(directory, url, **kwargs):
    """The settings of the Slack tests: the user who types the commands is an approver, since
    `/migrate backup` is the approvers' by default (retention may delete older backups)."""
    return settings_for(directory, url, approvers=(USER_ID,), **kwargs)


def pg_bin_line(bin_dir) -> str:
    return f"    pg_bin_dir: {json.dumps(str(bin_dir))}"


def cli(config, *args, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bot.cli", "--config", str(config), *args],
                          capture_output=True, text=True, timeout=timeout)


def expenses(url: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT * FROM expenses ORDER BY id").fetchall()


# ---------------------------------------------------------------------------
# the command line


def test_cli_backup_backups_and_restore_with_yes(sample_db, pg_bin_dir, tmp_path):
    url = sample_db("head")
    config = write_config(tmp_path, with_password(url, PASSWORD), extra_env=pg_bin_line(pg_bin_dir))
    made = cli(config, "backup", "--json")
    assert made.returncode == 0, made.stderr
    entry = json.loads(made.stdout)
    assert entry["status"] == "verified" and entry["level"] == "full" and entry["restorable"]
    assert entry["row_counts"]["public.expenses"] == 50 and len(entry["sha256"]) == 64

    tables = cli(config, "backup", "--table", "expenses", "--verify", "restore")
    assert tables.returncode == 0, tables.stderr
    assert f"Backup #{entry['id'] + 1} production (tables, custom): VERIFIED" in tables.stdout
    assert "verified to: restore" in tables.stdout

    listed = cli(config, "backups", "--json")
    assert [b["kind"] for b in json.loads(listed.stdout)["backups"]] == ["tables", "full"]
    assert "#1" in cli(config, "backups").stdout

    original = expenses(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DELETE FROM expenses WHERE id > 10")
    refused = cli(config, "restore", str(entry["id"]))              # the plan, nothing done
    assert refused.returncode == 2
    assert "  expenses: 10 rows now -> 50 rows in the backup: replaced" in refused.stdout
    assert refused.stderr.strip() == ("runbook-bot: nothing was restored: add --yes to run it (recorded as your "
                                      "approval)")
    assert len(expenses(url)) == 10

    restored = cli(config, "restore", str(entry["id"]), "--yes", "--json")
    assert restored.returncode == 0, restored.stderr
    answer = json.loads(restored.stdout)
    assert answer["state"] == "done" and answer["row_counts_after"]["public.expenses"] == 50
    assert expenses(url) == original
    events = Store(f"sqlite:///{tmp_path}/state.db").events(limit=20)
    approvals = [e for e in events if e.outcome == "approved"]
    assert approvals and approvals[0].actor.startswith("cli:") and approvals[0].details.get("via") == "--yes"
    assert [e.outcome for e in events if e.action == "backup"] == ["verified", "verified"]

    unknown = cli(config, "restore", "999", "--yes")
    assert unknown.returncode == 1
    assert unknown.stderr.strip() == ("runbook-bot: restore refused: unknown backup id 999 for production: "
                                      "see `backups production` for the catalogue")
    for done in (made, tables, listed, refused, restored, unknown):
        assert PASSWORD not in done.stdout + done.stderr


def test_cli_restore_without_yes_prints_the_plan_a_slack_approver_reads_and_changes_nothing(sample_db, pg_bin_dir,
                                                                                           tmp_path):
    """Issue 12 §2 g: what is replaced (rows now and in the backup), what a full restore drops (tables,
    and other objects created since the backup), the backup and the revision guard; exit 2, nothing
    restored, no safety backup, no run."""
    from runbook.state.runs import RunStore

    url = sample_db("head")
    config = write_config(tmp_path, with_password(url, PASSWORD), extra_env=pg_bin_line(pg_bin_dir),
                          state_url=f"sqlite:///{tmp_path}/state.db")
    made = cli(config, "backup", "--json")
    assert made.returncode == 0, made.stderr
    entry = json.loads(made.stdout)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DELETE FROM expenses WHERE id > 20")
        conn.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
        conn.execute("INSERT INTO notes SELECT g, 'n' FROM generate_series(1, 3) g")
        conn.execute("CREATE FUNCTION note_count() RETURNS bigint LANGUAGE sql AS 'SELECT count(*) FROM notes'")

    full = cli(config, "restore", str(entry["id"]))
    assert full.returncode == 2, full.stderr
    lines = full.stdout.splitlines()
    assert lines[0].startswith(f"Restore plan production (") and lines[0].endswith(
        f"): the whole database from backup #{entry['id']}")
    assert "  expenses: 20 rows now -> 50 rows in the backup: replaced" in lines
    assert "  notes: 3 rows now -> no table in the backup: DROPPED (not in the backup)" in lines
    assert "  ! 1 table(s) created since the backup will be dropped: notes" in lines
    assert any(line.startswith("  ! 1 function(s) created since the backup will be dropped: note_count")
               for line in lines), full.stdout
    assert f"Backup #{entry['id']} {entry['name']}: full," in full.stdout
    assert f"taken at revision {REV_0003}" in full.stdout
    assert f"is at revision {REV_0003}: the restore stops if that changes before it runs" in full.stdout
    assert full.stderr.strip() == "runbook-bot: nothing was restored: add --yes to run it (recorded as your approval)"

    as_json = cli(config, "restore", str(entry["id"]), "--json")
    assert as_json.returncode == 2
    plan = json.loads(as_json.stdout)
    assert plan["confirmed"] is False and plan["blockers"] == [] and plan["mode"] == "full"
    assert {c["table"]: (c["rows_now"], c["rows_in_backup"], c["action"]) for c in plan["changes"]}[
        "public.notes"] == (3, None, "drop")

    tables = cli(config, "restore", str(entry["id"]), "--table", "expenses")
    assert tables.returncode == 2
    assert "  expenses: 20 rows now -> 50 rows in the backup: replaced" in tables.stdout
    assert "notes" not in tables.stdout and "(chosen tables)" in tables.stdout

    unknown = cli(config, "restore", "999")
    assert unknown.returncode == 1 and unknown.stdout == ""
    assert unknown.stderr.strip() == ("runbook-bot: restore refused: unknown backup id 999 for production: "
                                      "see `backups production` for the catalogue")

    assert len(expenses(url)) == 20                                   # nothing was restored
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM notes").fetchone()[0] == 3
    store = Store(f"sqlite:///{tmp_path}/state.db")
    try:
        assert RunStore(store).list() == []
        assert [b.id for b in engine.list_backups(store, "production")] == [entry["id"]]   # no safety backup
        assert [e.outcome for e in store.events(limit=20) if e.action == "restore.plan"] == \
            ["refused", "shown", "shown", "shown"]
    finally:
        store.close()
    for done in (made, full, as_json, tables, unknown):
        assert PASSWORD not in done.stdout + done.stderr


def test_cli_backup_refusals_are_one_line(sample_db, tmp_path, pg_bin_dir):
    url = sample_db("head")
    config = write_config(tmp_path, with_password(url, PASSWORD))          # no pg_bin_dir: PATH has pg_dump 15
    old = cli(config, "backup")
    assert old.returncode == 2 and old.stderr.count("\n") == 1
    assert "pg_dump 15." in old.stderr and "older than the server (PostgreSQL 16." in old.stderr
    config = write_config(tmp_path, with_password(url, PASSWORD), extra_env=pg_bin_line(pg_bin_dir))
    unknown = cli(config, "backup", "--table", "nope")
    assert unknown.returncode == 2 and unknown.stderr.startswith("runbook-bot: unknown table 'nope' in production")
    both = cli(config, "backup", "--schema-only", "--table", "expenses")
    assert both.returncode == 2 and "not allowed with argument" in both.stderr
    assert json.loads(cli(config, "backups", "--json").stdout)["backups"] == []
    for done in (old, unknown, both):
        assert PASSWORD not in done.stdout + done.stderr and "Traceback" not in done.stderr


# ---------------------------------------------------------------------------
# Slack


def test_migrate_backup_and_backups_over_slack(sample_db, pg_bin_dir, tmp_path, slack):
    url = sample_db("head")
    settings = slack_settings(tmp_path, with_password(url, PASSWORD), channel="C0RUNBOOK1",
                            extra_env=pg_bin_line(pg_bin_dir))
    runtime, server = start(settings, slack)
    try:
        answer = command(server, runtime, "backup")
        assert ack_text(answer) == "Working on `/migrate backup production`…"
        [posted] = slack.messages(kind="message")
        assert posted.text.startswith("Full backup production #1: verified (full read)")
        rendered = json.dumps(posted.blocks)
        made = engine.get_backup(Store(settings.state_url), "production", 1)
        assert made.sha256 in rendered and made.location in rendered and "full read" in rendered

        command(server, runtime, "backup schema")
        command(server, runtime, "backup tables=expenses,incomes")
        kinds = [m.text.split(" production")[0] for m in slack.messages(kind="message")]
        assert kinds == ["Full backup", "Schema-only backup", "Table backup"]

        command(server, runtime, "backups")
        listing = slack.messages(kind="message")[-1]
        assert listing.text.startswith("Backups production: 3 verified, newest #3")
        assert all(f"*#{i}*" in json.dumps(listing.blocks) for i in (1, 2, 3))

        store = Store(settings.state_url)
        assert [(e.actor, e.action, e.outcome) for e in store.events(limit=4)] == [
            (USER_ID, "backups", "ok"), (USER_ID, "backup", "verified"), (USER_ID, "backup", "verified"),
            (USER_ID, "backup", "verified")]
        assert PASSWORD not in everything_slack_saw(slack) and BOT_TOKEN not in everything_slack_saw(slack)
        recorded = json.dumps([e.__dict__ for e in store.events(limit=50)], default=str)
        catalogue = json.dumps([engine.backup_to_json(b) for b in engine.list_backups(store, "production")])
        assert PASSWORD not in recorded + catalogue
    finally:
        server.close()
        runtime.close()


@pytest.mark.parametrize("text, expected", [
    ("backup bogus", "'bogus' is neither a configured environment nor a backup option (schema, tables=a,b)."),
    ("backup tables=", "tables= needs at least one table name."),
    ("backup tables=a;b", "'a;b' is not a table name"),
    ("backups staging", "Unknown environment 'staging'. Configured: production."),
])
def test_malformed_backup_commands_are_refused_in_the_ack(tmp_path, slack, text, expected):
    settings = slack_settings(tmp_path, "postgresql://app@127.0.0.1:1/budget")
    runtime, server = start(settings, slack)
    try:
        answer = command(server, runtime, text)
        assert answer.status == 200 and expected in ack_text(answer) and "\n" not in ack_text(answer)
        assert slack.methods() == ["auth.test"]
        assert Store(settings.state_url).events() == []
    finally:
        server.close()
        runtime.close()


def test_unknown_table_and_unreachable_target_get_one_ephemeral_line(sample_db, pg_bin_dir, tmp_path, slack):
    url = sample_db("head")
    settings = slack_settings(tmp_path, with_password(url, PASSWORD), extra_env=pg_bin_line(pg_bin_dir))
    runtime, server = start(settings, slack)
    try:
        command(server, runtime, "backup tables=nope")
        [error] = slack.messages(kind="ephemeral")
        assert error.user == USER_ID and "\n" not in error.text.strip()
        assert "unknown table 'nope' in production; tables: alembic_version, categories, expenses, incomes" in error.text
        assert slack.messages(kind="message") == []
        assert engine.list_backups(Store(settings.state_url), "production") == []
    finally:
        server.close()
        runtime.close()
    settings = slack_settings(tmp_path, f"postgresql://app:{PASSWORD}@127.0.0.1:1/budget", connect_timeout=1,
                            extra_env=pg_bin_line(pg_bin_dir))
    runtime, server = start(settings, slack)
    try:
        command(server, runtime, "backup")
        error = slack.messages(kind="ephemeral")[-1]
        assert "cannot connect to 127.0.0.1:1/budget" in error.text and PASSWORD not in everything_slack_saw(slack)
    finally:
        server.close()
        runtime.close()


def test_a_long_backup_posts_one_progress_message_and_updates_it(pg_url, pg_bin_dir, tmp_path, slack, monkeypatch):
    add_random_bytes(pg_url, 48)
    monkeypatch.setattr(BackupProgress, "post_after", 0.05)
    monkeypatch.setattr(BackupProgress, "every", 0.02)
    monkeypatch.setattr(BackupProgress, "update_every", 0.05)
    settings = slack_settings(tmp_path, pg_url, extra_env=pg_bin_line(pg_bin_dir))
    runtime, server = start(settings, slack)
    try:
        command(server, runtime, "backup")
        [posted] = slack.messages(kind="message")                 # one message, updated in place
        assert posted.updates >= 2
        assert posted.versions[0]["text"].startswith(":hourglass_flowing_sand: Full backup of production running: dump,")
        assert posted.text.startswith("Full backup production #1: verified")
        stored = engine.get_backup(Store(settings.state_url), "production", 1).details["message"]
        # the status its final update showed: the reconcile leaves it alone
        assert stored == {"channel": posted.channel, "ts": posted.ts, "rendered": "verified"}
        assert slack.calls("chat.update")[-1].body["ts"] == posted.ts
    finally:
        server.close()
        runtime.close()


def test_a_backup_killed_mid_dump_is_failed_and_its_partial_removed_at_the_next_start(sample_db, pg_bin_dir,
                                                                                       tmp_path):
    """Issue 13 §3: kill -9 during a backup left a `running` row and a `.partial-…` file until the next backup
    (or 6 h). The next start of any command sweeps them, once the target's operation lock is free."""
    import os
    import signal

    from tests.support.sessions import Sessions
    from tests.support.waiting import wait_for

    url = sample_db(REV_0003)
    config = write_config(tmp_path, with_password(url, PASSWORD), extra_env=pg_bin_line(pg_bin_dir))
    store = Store(f"sqlite:///{tmp_path / 'state.db'}")
    store.migrate()
    with Sessions(url) as sessions:
        holder = sessions.open(autocommit=False)
        holder.execute("LOCK TABLE expenses IN ACCESS EXCLUSIVE MODE")   # pg_dump waits for its lock
        proc = subprocess.Popen([sys.executable, "-m", "bot.cli", "--config", str(config), "backup"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            running = wait_for(lambda: [b for b in engine.list_backups(store, "production") if b.status == "running"],
                               timeout=60, what="the backup's running row")[0]
            partial = tmp_path / "backups" / f".partial-{running.name}"
            wait_for(partial.exists, timeout=30, what="the partial archive")
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        holder.rollback()
    assert engine.get_backup(store, "production", running.id).status == "running"      # left behind
    swept = cli(config, "backups")                                                    # the next start
    assert swept.returncode == 0, swept.stderr
    assert f"backup #{running.id} of production was interrupted: marked failed" in swept.stderr
    left = engine.get_backup(store, "production", running.id)
    assert left.status == "failed" and "interrupted" in left.error and not partial.exists()
    assert "was interrupted" not in cli(config, "backups").stderr                    # once
