"""The CLI precheck's state store in a child process (runbook.state.sidecar): real processes, a real
SQLite or PostgreSQL state database, the real CLI."""
from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import update

from runbook.state import StateError, Store
from runbook.state.models import RunRow
from runbook.state.runs import RunStore
from runbook.state.sidecar import StoreSidecar, serve
from tests.support.bots import free_port
from tests.support.configs import with_password, write_config
from tests.support.migrations import assert_no_secret
from tests.support.sample_app import REV_0001

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "S1decar-S3cret"


def cli(config: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bot.cli", "--config", str(config), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def pg_bin_line(pg_bin_dir: Path) -> str:
    return f"    pg_bin_dir: {json.dumps(str(pg_bin_dir))}"


def test_cli_precheck_reads_the_catalogue_and_records_through_the_sidecar(sample_db, pg_bin_dir, tmp_path):
    url = with_password(sample_db(REV_0001), PASSWORD)
    config = write_config(tmp_path, url, extra_env=pg_bin_line(pg_bin_dir))
    before = json.loads(cli(config, "precheck", "--json").stdout)
    backup = {c["name"]: c for c in before["checks"]}["Backup completed successfully"]
    assert backup["status"] == "warn" and "no backup yet" in backup["detail"]

    made = cli(config, "backup")
    assert made.returncode == 0, made.stderr
    result = cli(config, "precheck", "--json")
    assert result.returncode == 0, result.stderr
    backup = {c["name"]: c for c in json.loads(result.stdout)["checks"]}["Backup completed successfully"]
    assert backup["status"] == "ok" and "ago" in backup["detail"], backup

    events = Store(f"sqlite:///{tmp_path / 'state.db'}").events(action="precheck", limit=5)
    assert [e.outcome for e in events] == ["go", "go"]
    assert events[0].actor.startswith("cli:") and events[0].details["checks"]["connectivity"] == "ok"
    assert_no_secret(PASSWORD, result.stdout, result.stderr, made.stdout, made.stderr,
                     *(json.dumps(e.details) + e.summary for e in events))


def test_cli_precheck_reports_runs_that_died_while_nobody_watched(sample_db, tmp_path):
    config = write_config(tmp_path, sample_db(REV_0001))
    store = Store(f"sqlite:///{tmp_path / 'state.db'}")
    store.migrate()
    run = RunStore(store).start(kind="migrate", environment="production", actor="cli:ops")
    dead_pid = subprocess.Popen([sys.executable, "-c", "pass"])
    dead_pid.wait()
    with store.session() as session, session.begin():
        session.execute(update(RunRow).where(RunRow.id == run.id).values(pid=dead_pid.pid))

    result = cli(config, "precheck")
    assert result.returncode == 0, result.stderr
    assert f"runbook-bot: migrate run {run.id} on production was interrupted: " in result.stderr
    assert RunStore(store).list(limit=1)[0].state == "interrupted"
    assert "was interrupted" not in cli(config, "precheck").stderr          # reaped once


def test_an_unreachable_state_database_is_one_line_and_changes_nothing(sample_db, tmp_path):
    url = sample_db(REV_0001)
    state_url = f"postgresql://bot:{PASSWORD}@127.0.0.1:{free_port()}/state"
    config = write_config(tmp_path, url, state_url=state_url)
    with psycopg.connect(url) as conn:
        before = conn.execute("SELECT count(*), sum(amount) FROM expenses").fetchone()

    result = cli(config, "precheck", "--json")
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("runbook-bot: cannot open the state database: "), lines
    assert "Traceback" not in result.stderr
    assert_no_secret(PASSWORD, result.stderr)
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*), sum(amount) FROM expenses").fetchone() == before


def test_a_sidecar_that_dies_is_a_one_line_error_not_a_hang(tmp_path):
    sidecar = StoreSidecar.start()
    try:
        assert sidecar.open(f"sqlite:///{tmp_path / 'state.db'}", "cli:ops").result() == []
        event = sidecar.record(actor="cli:ops", action="precheck", environment="production", outcome="go")
        assert event.id == 1 and event.at.tzinfo is not None
        sidecar._process.kill()
        with pytest.raises(StateError, match=r"^the state store process ended unexpectedly \(exit status -9\)$"):
            sidecar.record(actor="cli:ops", action="precheck", environment="production", outcome="no-go")
    finally:
        sidecar.close()
    assert [e.outcome for e in Store(f"sqlite:///{tmp_path / 'state.db'}").events()] == ["go"]


def test_replies_come_in_order_and_values_round_trip(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'state.db'}")
    store.migrate()
    recorded = store.record(actor="U0ALICE01", action="risk.ack", environment="production", outcome="ok",
                            summary="reviewed", details={"revision": "0002", "file_sha256": "ab" * 32})
    with StoreSidecar.start() as sidecar:
        opened = sidecar.open(store.url, "cli:ops")
        acks = sidecar.events(environment="production", action="risk.ack")
        none = sidecar.events(environment="staging", action="risk.ack")
        backup = sidecar.last_backup_at("production")
        assert (backup.result(), none.result(), opened.result()) == (None, [], [])   # read out of order
        assert acks.result() == [recorded]


def test_malformed_requests_get_one_line_errors():
    requests = io.StringIO("\n".join([
        "not json",
        json.dumps({"op": "events"}),                                   # before open
        json.dumps({"op": "open", "url": f"postgresql://u:{PASSWORD}@[::1", "actor": "cli:x"}),
        json.dumps({"op": "record", "actor": "cli:x", "action": "precheck", "outcome": "go"}),
        json.dumps({"op": "drop everything"}),
    ]) + "\n")
    replies = io.StringIO()
    assert serve(requests, replies) == 0
    answers = [json.loads(line) for line in replies.getvalue().splitlines()]
    assert len(answers) == 5 and not any(a["ok"] for a in answers)
    errors = [a["error"] for a in answers]
    assert errors[0].startswith("the state store failed: ")
    assert errors[1] == "the state store was not opened"
    assert errors[2].startswith("state_url is not usable: ")
    assert all("\n" not in e and "Traceback" not in e for e in errors)
    assert_no_secret(PASSWORD, *errors)
    # a failed open is the reason every later request gets
    assert errors[3] == errors[4] == errors[2]
