"""`runbook-bot doctor` (issue 17 §3) as a new operator runs it: a real PostgreSQL, the sample app's
real Alembic, real client tools (and a fake old pg_dump), the local Slack Web API."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from bot.localslack import LocalSlack
from runbook.state import Store
from tests.support.configs import with_password
from tests.support.sample_app import ALEMBIC_ARGV, APP_DIR

CHANNEL = "C0DOCTOR01"
TOKEN = "xoxb-doctor-test"
PASSWORD_ROLE, RIGHT_PASSWORD, WRONG_PASSWORD = "doctor_pw", "Right-Pa55word", "Wrong-Pa55word"
PLAIN_ROLE = "doctor_plain"


def environment_yaml(name: str, url: str, *, app_dir: Path = APP_DIR, pg_bin_dir: Path | None = None,
                     backups: Path | None = None) -> str:
    lines = [f"  {name}:",
             f"    database_url: {json.dumps(url)}",
             f"    app_dir: {json.dumps(str(app_dir))}",
             f"    alembic: {json.dumps(ALEMBIC_ARGV)}",
             "    connect_timeout_seconds: 3"]
    if pg_bin_dir is not None:
        lines.append(f"    pg_bin_dir: {json.dumps(str(pg_bin_dir))}")
    if backups is not None:
        lines.append(f"    backups: {{dir: {json.dumps(str(backups))}}}")
    return "\n".join(lines)


def write_doctor_config(directory: Path, *environments: str) -> Path:
    path = directory / "runbook-bot.yaml"
    path.write_text("\n".join(["state_url: sqlite:///state.db", f"slack: {{channel: {CHANNEL}}}",
                               "environments:", *environments, ""]))
    return path


def run_doctor(config: Path, *args: str, slack: LocalSlack | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLACK_")}
    if slack is not None:
        env.update(SLACK_BOT_TOKEN=TOKEN, SLACK_API_URL=slack.url)
    return subprocess.run([sys.executable, "-m", "bot.cli", "--config", str(config), "doctor", *args],
                          capture_output=True, text=True, timeout=120, env=env)


@pytest.fixture(scope="module")
def roles(pg_server):
    """A role that must give its password (one pg_hba line for it alone: the embedded server trusts
    everyone else) and a plain role without pg_monitor, CREATEDB or any table of its own."""
    with psycopg.connect(pg_server.admin_url, autocommit=True) as conn:
        for role, password in ((PASSWORD_ROLE, RIGHT_PASSWORD), (PLAIN_ROLE, None)):
            if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role]).fetchone() is None:
                conn.execute(f"CREATE ROLE {role} LOGIN" + (f" PASSWORD '{password}'" if password else ""))
        hba = Path(conn.execute("SHOW hba_file").fetchone()[0])
        if not os.access(hba, os.W_OK):
            pytest.skip("the test server's pg_hba.conf is not writable here")
        text = hba.read_text()
        line = f"local all {PASSWORD_ROLE} scram-sha-256\nhost all {PASSWORD_ROLE} all scram-sha-256\n"
        if line not in text:
            hba.write_text(line + text)
            conn.execute("SELECT pg_reload_conf()")
    return {"password": PASSWORD_ROLE, "plain": PLAIN_ROLE}


def old_pg_dump_dir(directory: Path, real_bin: Path) -> Path:
    """A pg_bin_dir whose pg_dump says it is PostgreSQL 12 (pg_restore and psql are the real ones)."""
    bin_dir = directory / "old-bin"
    bin_dir.mkdir()
    fake = bin_dir / "pg_dump"
    fake.write_text("#!/bin/sh\necho 'pg_dump (PostgreSQL) 12.22'\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    for tool in ("pg_restore", "psql"):
        (bin_dir / tool).symlink_to(real_bin / tool)
    return bin_dir


def test_doctor_passes_on_a_good_configuration(sample_db, pg_bin_dir, tmp_path):
    url = sample_db("head")
    config = write_doctor_config(tmp_path, environment_yaml("production", url, pg_bin_dir=pg_bin_dir))
    Store(f"sqlite:///{tmp_path / 'state.db'}").migrate()      # the bot has run once
    with LocalSlack(joined=(CHANNEL,)) as slack:
        result = run_doctor(config, slack=slack)
        assert [c.method for c in slack.calls() if c.method != "upload"] == ["auth.test", "conversations.info"]
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    names = [line.split(":", 1)[0].split(None, 1)[1] for line in lines]
    assert names == ["configuration", "database", "privileges", "client tools", "app's alembic", "backups",
                     "state database", "slack token", "slack channel"]
    assert all(line.startswith("ok ") for line in lines), result.stdout
    assert "pg_dump 16" in result.stdout and "`" + " ".join(ALEMBIC_ARGV) + " heads` runs" in result.stdout
    assert result.stderr == ""
    assert not (tmp_path / "backups").exists()          # the doctor only reads


def test_doctor_names_each_problem_in_one_line(sample_db, pg_bin_dir, roles, tmp_path):
    url = sample_db("head")
    config = write_doctor_config(
        tmp_path,
        environment_yaml("wrongpw", with_password(url, WRONG_PASSWORD, user=roles["password"])),
        environment_yaml("production", url, app_dir=tmp_path / "no-such-app",
                         pg_bin_dir=old_pg_dump_dir(tmp_path, pg_bin_dir)),
        environment_yaml("plain", with_password(url, "unused", user=roles["plain"]), pg_bin_dir=pg_bin_dir))
    with LocalSlack() as slack:
        slack.add_channel(CHANNEL, name="migrations")        # it exists; the bot was never invited
        result = run_doctor(config, slack=slack)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.splitlines()

    def line(name: str, environment: str | None = None) -> str:
        prefix = f"{name}: {environment}: " if environment else f"{name}: "
        found = [l for l in lines if l.split(None, 1)[1].startswith(prefix)]
        assert len(found) == 1, (name, environment, result.stdout)
        return found[0]

    wrong = line("database", "wrongpw")
    assert wrong.startswith("fail") and "password authentication failed" in wrong and "check the user and password" in wrong
    assert WRONG_PASSWORD not in result.stdout + result.stderr
    app = line("app's alembic", "production")
    assert app.startswith("fail") and "no-such-app does not exist" in app and "set app_dir" in app
    tools = line("client tools", "production")
    assert tools.startswith("fail") and "pg_dump 12.22" in tools and "older than the server (PostgreSQL 16" in tools
    assert "set pg_bin_dir" in tools
    monitor = line("privileges: other sessions", "plain")
    assert monitor.startswith("fail") and f"GRANT pg_monitor TO {PLAIN_ROLE};" in monitor
    assert line("privileges: CREATEDB", "plain").startswith("warn")
    owner = line("privileges: ownership", "plain")
    assert owner.startswith("fail") and "expenses" in owner and f"GRANT postgres TO {PLAIN_ROLE};" in owner
    channel = line("slack channel")
    assert channel.startswith("fail") and f"not a member of {CHANNEL} (#migrations)" in channel
    assert "/invite @runbook-bot" in channel
    assert line("slack token").startswith("ok")


def test_doctor_json_shape_and_one_environment(sample_db, pg_bin_dir, tmp_path):
    url = sample_db("head")
    config = write_doctor_config(tmp_path, environment_yaml("production", url, pg_bin_dir=pg_bin_dir),
                                 environment_yaml("staging", url, app_dir=tmp_path))
    result = run_doctor(config, "--env", "production", "--json")      # no SLACK_BOT_TOKEN: a warning only
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(result.stdout)
    assert set(data) == {"config", "ok", "exit", "checks"} and data["ok"] is True and data["exit"] == 0
    assert all(set(c) == {"name", "status", "detail", "fix", "environment"} for c in data["checks"])
    assert {c["environment"] for c in data["checks"]} == {None, "production"}     # staging left out
    by_name = {c["name"]: c for c in data["checks"]}
    assert by_name["state database"]["status"] == "warn" and "does not exist yet" in by_name["state database"]["detail"]
    assert by_name["slack"]["status"] == "warn" and "SLACK_BOT_TOKEN" in by_name["slack"]["fix"]

    everything = json.loads(run_doctor(config, "--json").stdout)          # staging holds no alembic.ini
    staging = [c for c in everything["checks"] if c["environment"] == "staging" and c["name"] == "app's alembic"]
    assert staging[0]["status"] == "fail" and "holds no alembic.ini" in staging[0]["detail"]
    assert everything["exit"] == 1


def test_doctor_on_a_bad_configuration_is_one_line_exit_2(tmp_path):
    config = tmp_path / "runbook-bot.yaml"
    config.write_text("environments:\n  production:\n    database_url: postgresql://x@h/db\n    app_dirr: .\n")
    result = run_doctor(config)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("runbook-bot: config error: ")
    missing = run_doctor(tmp_path / "absent.yaml", "--json")
    assert missing.returncode == 2 and "configuration file not found" in missing.stderr
