"""Configuration: valid files load; every malformed file gets one line naming the key, exit 2."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from runbook.config import ConfigError, parse_settings

GOOD = """
state_url: sqlite:///state.db
slack: {channel: C0123456789}
environments:
  production:
    database_url: ${DB_URL}
    app_dir: app
    approvals: {approvers: [U012AB3CD, S0GROUP1], required: 1}
    thresholds: {long_query_seconds: 120}
escalation:
  owner: {slack: U0OWNER01, github: zeevbensender}
"""


def parse(text: str, **environ: str):
    return parse_settings(text, source=Path("/etc/rb/runbook-bot.yaml"), environ=environ)


def test_good_file_loads_with_defaults_and_relative_paths():
    settings = parse(GOOD, DB_URL="postgresql://app:pw@db.internal:5432/budget")
    name, env = settings.environment(None)
    assert name == "production"
    assert env.dsn == "postgresql://app:pw@db.internal:5432/budget"
    assert env.app_dir == Path("/etc/rb/app")
    assert env.thresholds.long_query_seconds == 120
    assert env.thresholds.lock_wait_seconds == 30
    assert env.backups.keep == 3 and env.backups.dir == Path("/etc/rb/backups")
    assert env.approvals.approvers == ["U012AB3CD", "S0GROUP1"]
    assert settings.state_url == "sqlite:////etc/rb/state.db"
    assert "pw" not in repr(env)  # the URL is a secret


def test_default_for_unset_variable():
    settings = parse(GOOD.replace("${DB_URL}", "${DB_URL:-postgresql://localhost/x}"))
    assert settings.environments["production"].dsn == "postgresql://localhost/x"


@pytest.mark.parametrize("text, env, expected", [
    (GOOD, {}, "environments.production.database_url: environment variable DB_URL is not set"),
    (GOOD.replace("    app_dir: app\n", ""), {"DB_URL": "postgresql://x/y"},
     "environments.production.app_dir: required key is missing"),
    (GOOD.replace("long_query_seconds: 120", "long_query_seconds: soon"), {"DB_URL": "postgresql://x/y"},
     "environments.production.thresholds.long_query_seconds: Input should be a valid number"),
    (GOOD.replace("    app_dir: app\n", "    app_dir: app\n    colour: blue\n"), {"DB_URL": "postgresql://x/y"},
     "environments.production.colour: unknown key"),
    (GOOD + "extra: 1\n", {"DB_URL": "postgresql://x/y"}, "extra: unknown key"),
    (GOOD.replace("C0123456789", "general"), {"DB_URL": "postgresql://x/y"}, "slack.channel: not a valid value"),
    (GOOD.replace("U012AB3CD,", "alice,"), {"DB_URL": "postgresql://x/y"},
     "environments.production.approvals.approvers[0]: not a valid value"),
    (GOOD, {"DB_URL": "mysql://x/y"}, "environments.production.database_url: Value error, must be a postgresql:// URL"),
    ("environments: {}\n", {}, "environments: "),
    ("environments: [oops\n", {}, "not valid YAML at line"),
    ("- a\n- b\n", {}, "the top level must be a mapping"),
])
def test_malformed_config_gets_one_line_naming_the_key(text, env, expected):
    with pytest.raises(ConfigError) as caught:
        parse(text, **env)
    message = str(caught.value)
    assert expected in message
    assert "\n" not in message
    assert "mysql://x/y" not in message  # values are never echoed


def test_unknown_environment_is_named():
    settings = parse(GOOD, DB_URL="postgresql://x/y")
    with pytest.raises(ConfigError, match="unknown environment 'staging'; configured: production"):
        settings.environment("staging")


@pytest.mark.parametrize("bad, key", [
    ("environments:\n  prod:\n    database_url: postgresql://u:S3cretPw@h/db\n", "environments.prod.app_dir"),
    ("environments:\n  prod:\n    database_url: postgresql://u:S3cretPw@h/db\n    app_dir: .\n    nope: 1\n",
     "environments.prod.nope: unknown key"),
])
def test_cli_reports_bad_config_in_one_line_with_exit_2(tmp_path, bad, key):
    config = tmp_path / "runbook-bot.yaml"
    config.write_text(bad)
    result = subprocess.run([sys.executable, "-m", "bot.cli", "--config", str(config), "precheck"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert key in lines[0] and lines[0].startswith("runbook-bot: config error:")
    assert "Traceback" not in result.stderr and "S3cretPw" not in result.stderr


def test_cli_missing_config_file(tmp_path):
    result = subprocess.run([sys.executable, "-m", "bot.cli", "--config", str(tmp_path / "none.yaml"), "precheck"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "configuration file not found" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_cli_unknown_command_is_one_line():
    result = subprocess.run([sys.executable, "-m", "bot.cli", "frobnicate"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "invalid choice" in result.stderr
