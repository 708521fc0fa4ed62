"""§1 precheck end to end against the real PostgreSQL and the sample app's real Alembic."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from runbook.precheck import report_to_json, run_precheck
from tests.support.configs import settings_for, with_password, write_config
from tests.support.sample_app import REV_0001, REV_0002, REV_0003
from tests.support.sessions import Sessions
from tests.support.waiting import wait_for

PASSWORD = "Pr3check-S3cret"


def run_cli(config, *args, timeout=60):
    return subprocess.run([sys.executable, "-m", "bot.cli", "--config", str(config), *args],
                          capture_output=True, text=True, timeout=timeout)


def test_pending_revisions_listed_in_order_and_preview_covers_only_them(sample_db, tmp_path):
    url = sample_db(REV_0001)
    settings = settings_for(tmp_path, url)
    report = run_precheck("production", settings.environments["production"])
    data = report_to_json(report)
    assert data["verdict"] == "go", data["reasons"]
    assert data["current"] == [REV_0001] and data["heads"] == [REV_0003]
    assert [p["revision"] for p in data["pending"]] == [REV_0002, REV_0003]
    assert [p["reversible"] for p in data["pending"]] == [True, False]
    assert all(p["message"] for p in data["pending"])
    preview = data["sql_preview"]
    assert "CREATE TABLE categories" in preview
    assert "CREATE TABLE expenses" not in preview and "CREATE TABLE alembic_version" not in preview
    checks = {c["name"]: c for c in data["checks"]}
    assert checks["connectivity"]["status"] == "ok"
    assert checks["pending revisions"]["status"] == "warn" and REV_0003 in checks["pending revisions"]["detail"]
    # nothing is marked done that was not checked
    human = [c for c in data["checks"] if not c["automatic"]]
    assert len(human) == 4 and all(c["status"] == "warn" for c in human)
    assert checks["Backup completed successfully"]["status"] == "warn"
    assert "no backup yet" in checks["Backup completed successfully"]["detail"]
    assert checks["Sufficient disk space available"]["status"] in {"ok", "warn", "fail"}
    assert "free where backups go" in checks["Sufficient disk space available"]["detail"]


def test_at_head_nothing_pending(sample_db, tmp_path):
    settings = settings_for(tmp_path, sample_db("head"))
    data = report_to_json(run_precheck("production", settings.environments["production"]))
    assert data["pending"] == [] and data["sql_preview"] == ""
    assert "nothing to migrate: already at head" in data["reasons"]


def test_lock_queue_makes_a_no_go_naming_root_and_queue_head(sample_db, tmp_path):
    url = sample_db(REV_0001)
    settings = settings_for(tmp_path, url)
    with Sessions(url) as sessions:
        holder = sessions.open(application_name="app-worker", autocommit=False)
        holder.execute("SELECT count(*) FROM expenses")  # idle in transaction, holds ACCESS SHARE
        alter = sessions.start("ALTER TABLE expenses ADD COLUMN note text", application_name="migrator")
        sessions.wait_until_waiting(alter.pid)
        readers = [sessions.start("SELECT count(*) FROM expenses", application_name="reader") for _ in range(2)]
        for reader in readers:
            sessions.wait_until_waiting(reader.pid)
        report = run_precheck("production", settings.environments["production"])
        data = report_to_json(report)
        assert data["verdict"] == "no-go"
        waits = {w["pid"]: w for w in data["lock_waits"]}
        holder_pid = holder.info.backend_pid
        assert set(waits) == {alter.pid, *(r.pid for r in readers)}
        assert all(w["root_blocker"] == holder_pid for w in waits.values())
        assert waits[alter.pid]["blocked_by"] == [holder_pid]
        assert any(reason.startswith("locks:") and f"pid {holder_pid}" in reason for reason in data["reasons"])
        root = report.activity.roots[0]
        assert root.pid == holder_pid and root.head.pid == alter.pid
        holder.rollback()


def test_long_query_is_reported(sample_db, tmp_path):
    url = sample_db(REV_0001)
    settings = settings_for(tmp_path, url, thresholds={"long_query_seconds": 0.5})
    with Sessions(url) as sessions:
        sleeper = sessions.start("SELECT pg_sleep(20)", application_name="report-job")

        def reported():
            data = report_to_json(run_precheck("production", settings.environments["production"]))
            return data if data["long_queries"] else None

        data = wait_for(reported, timeout=15)
        assert data["verdict"] == "no-go"
        long = data["long_queries"][0]
        assert long["pid"] == sleeper.pid and "pg_sleep" in long["query"] and long["seconds"] >= 0.5


def test_cli_precheck_json_and_exit_codes(sample_db, tmp_path):
    url = with_password(sample_db(REV_0001), PASSWORD)
    config = write_config(tmp_path, url)
    result = run_cli(config, "precheck", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["verdict"] == "go" and [p["revision"] for p in data["pending"]] == [REV_0002, REV_0003]
    for key in ("reasons", "current", "heads", "sql_preview", "checks", "long_queries", "lock_waits"):
        assert key in data
    assert PASSWORD not in result.stdout + result.stderr
    text = run_cli(config, "precheck")
    assert text.returncode == 0 and "GO" in text.stdout and REV_0003 in text.stdout and "irreversible" in text.stdout
    assert PASSWORD not in text.stdout + text.stderr
    # every command is an event
    status = run_cli(config, "status", "--json")
    assert status.returncode == 0
    last = json.loads(status.stdout)["last_event"]
    assert last["action"] == "precheck" and last["actor"].startswith("cli:") and last["outcome"] == "go"


def test_unreachable_database_is_a_clear_no_go(tmp_path):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    config = write_config(tmp_path, f"postgresql://app:{PASSWORD}@127.0.0.1:{port}/budget")
    result = run_cli(config, "precheck", "--json")
    assert result.returncode == 1, result.stderr
    data = json.loads(result.stdout)
    assert data["verdict"] == "no-go"
    assert data["checks"][0]["name"] == "connectivity" and data["checks"][0]["status"] == "fail"
    assert f"127.0.0.1:{port}/budget" in data["checks"][0]["detail"]
    assert PASSWORD not in result.stdout + result.stderr


def test_silent_server_hits_the_connect_timeout(tmp_path):
    """A server that accepts TCP but never answers: no-go within the configured timeout."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        settings = settings_for(tmp_path, f"postgresql://app:{PASSWORD}@127.0.0.1:{silent.getsockname()[1]}/budget",
                                connect_timeout=1)
        started = time.monotonic()
        report = run_precheck("production", settings.environments["production"])
        elapsed = time.monotonic() - started
        assert report.verdict == "no-go"
        assert report.checks[0].status == "fail" and "timeout" in report.checks[0].detail.lower()
        assert elapsed < 10
        assert PASSWORD not in json.dumps(report_to_json(report))
    finally:
        silent.close()


def test_unknown_environment_on_the_cli_is_one_line(sample_db, tmp_path):
    config = write_config(tmp_path, sample_db(REV_0001))
    result = run_cli(config, "precheck", "--env", "staging")
    assert result.returncode == 2
    assert result.stderr.strip() == "runbook-bot: config error: unknown environment 'staging'; configured: production"


def test_precheck_into_a_closed_pipe_ends_quietly(sample_db, tmp_path):
    """`runbook-bot precheck | head -1`: the reader is gone before the report is written. Like any
    Unix tool the command ends without a word (issue 17 §4), not "precheck failed: Broken pipe"."""
    config = write_config(tmp_path, sample_db(REV_0001))
    read_end, write_end = os.pipe()
    os.close(read_end)                      # head has read its line and exited
    try:
        result = subprocess.run([sys.executable, "-m", "bot.cli", "--config", str(config), "precheck"],
                                stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(write_end)
    assert result.stderr == ""
    assert result.returncode == 141         # 128 + SIGPIPE, as a shell reports a tool SIGPIPE ended


@pytest.mark.parametrize("thread", ["none", "still at work"])
def test_the_console_script_flushes_and_runs_exit_handlers_before_it_ends(thread):
    """bot.cli.run ends the process without tearing its modules down (a precheck's last 20-30 ms):
    piped output is still written whole, exit handlers still run, and a thread still at work is
    waited for as an ordinary exit waits for it."""
    script = (
        "import atexit, sys, threading, time\n"
        "from bot import cli\n"
        "atexit.register(lambda: print('exit handler ran', file=sys.stderr))\n"
        "if sys.argv[1] == 'still at work':\n"
        "    threading.Thread(target=lambda: (time.sleep(0.5), print('thread done', file=sys.stderr))).start()\n"
        "sys.argv = ['runbook-bot', 'manifest']\n"
        "cli.run()\n")
    result = subprocess.run([sys.executable, "-c", script, thread], capture_output=True, text=True, timeout=60)
    expected = subprocess.run([sys.executable, "-m", "bot.cli", "manifest"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and len(result.stdout) > 1000 and result.stdout == expected.stdout
    assert "exit handler ran" in result.stderr
    assert ("thread done" in result.stderr) == (thread == "still at work")


def test_a_migration_leaves_the_next_precheck_the_revision_it_reached(sample_db, tmp_path, monkeypatch):
    """A fresh precheck starts its render from the revision remembered last time (runbook.prerender):
    a migrate or rollback run remembers where it left the database, so the first precheck after it
    renders the right range at once instead of guessing the old one (two Alembic processes)."""
    from runbook import migrate
    from runbook.precheck import project_of
    from tests.support.migrations import environment

    monkeypatch.setenv("RUNBOOK_BOT_CACHE_DIR", str(tmp_path / "cache"))
    _, name, env = environment(tmp_path, sample_db(REV_0001))
    run_precheck(name, env)
    assert project_of(env).remembered_current(env.dsn) == [REV_0001]

    assert migrate.upgrade(name, env, actor="cli:ops", target=REV_0002).outcome == "succeeded"
    assert project_of(env).remembered_current(env.dsn) == [REV_0002]
    assert migrate.downgrade(name, env, actor="cli:ops", target="-1").outcome == "succeeded"
    assert project_of(env).remembered_current(env.dsn) == [REV_0001]


def _touch(path) -> None:
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


def test_cold_cli_precheck_runs_alembic_once_and_its_preview_and_review_agree(sample_db, tmp_path):
    """Issue 18: the first precheck after a revision changed renders the pending range once, and
    the SQL preview and the risk review are that one render. A fresh process starts the render from
    the revision seen last time; when the database has moved since, it renders the right range."""
    from tests.support.migrations import alembic_runs as _runs
    from tests.support.migrations import app_copy, counting_alembic
    from tests.support.sample_app import ALEMBIC_ARGV, APP_DIR, upgrade

    url = sample_db(REV_0001)
    app = app_copy(tmp_path)
    argv, log = counting_alembic(tmp_path)
    config = write_config(tmp_path, url)
    config.write_text(config.read_text().replace(json.dumps(str(APP_DIR)), json.dumps(str(app)))
                      .replace(json.dumps(ALEMBIC_ARGV), json.dumps(argv)))
    env = {**os.environ, "RUNBOOK_BOT_CACHE_DIR": str(tmp_path / "cache")}     # nothing cached: cold

    def precheck() -> dict:
        result = subprocess.run([sys.executable, "-m", "bot.cli", "--config", str(config), "precheck", "--json"],
                                capture_output=True, text=True, timeout=120, env=env)
        assert result.returncode in (0, 1), result.stderr
        return json.loads(result.stdout)

    data = precheck()
    assert _runs(log) == [f"upgrade {REV_0001}:{REV_0003} --sql"]
    risk = data["risk"]
    preview = " ".join(data["sql_preview"].split())
    marked = [line.split(" -> ")[1] for line in data["sql_preview"].splitlines() if line.startswith("-- Running upgrade")]
    assert [r["revision"] for r in risk["revisions"]] == marked == [REV_0002, REV_0003]
    assert all(r["status"] == "reviewed" and r["sql_lines"] > 1 for r in risk["revisions"])
    statements = [f["statement"] for r in risk["revisions"] for f in r["findings"] + r["silenced"]]
    assert "CREATE INDEX ix_expenses_category_id ON expenses (category_id)" in statements
    assert all(statement in preview for statement in statements)

    # the database moved on since: the early render guessed the old range, the precheck renders its own
    upgrade(url, REV_0002, app_dir=app)
    _touch(app / "alembic" / "versions" / f"{REV_0003}.py")
    moved = precheck()
    assert [p["revision"] for p in moved["pending"]] == [REV_0003]
    assert [r["revision"] for r in moved["risk"]["revisions"]] == [REV_0003]
    assert f"Running upgrade {REV_0002} -> {REV_0003}" in moved["sql_preview"]
    assert f"-> {REV_0002}" not in moved["sql_preview"]
    since = _runs(log)[1:]          # the guess (unless it was stopped before it began) and the right one
    assert since.count(f"upgrade {REV_0002}:{REV_0003} --sql") == 1
    assert set(since) <= {f"upgrade {REV_0001}:{REV_0003} --sql", f"upgrade {REV_0002}:{REV_0003} --sql"}

    # and the guess is right again: one process, started before the configuration was validated
    before = len(_runs(log))
    _touch(app / "alembic" / "versions" / f"{REV_0003}.py")
    again = precheck()
    assert again["sql_preview"] == moved["sql_preview"] and again["risk"]["revisions"][0]["status"] == "reviewed"
    assert _runs(log)[before:] == [f"upgrade {REV_0002}:{REV_0003} --sql"]
