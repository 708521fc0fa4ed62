"""Configuration: valid files load; every malformed file gets one line naming the key, exit 2."""
from __future__ import annotations

import re
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


# -- issue 12 §2 i: every documented example loads; every documented duration reaches PostgreSQL ----

ROOT = Path(__file__).resolve().parent.parent
_FENCE = re.compile(r"^(?P<indent> *)```yaml\n(?P<body>.*?)^(?P=indent)```", re.S | re.M)
_NEEDED_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")     # ${VAR} without a :-default


def yaml_examples() -> list[tuple[str, str]]:
    """(label, text) of every ```yaml block in README.md and docs/*.md."""
    found = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for number, match in enumerate(_FENCE.finditer(doc.read_text(encoding="utf-8")), 1):
            lines = match.group("body").splitlines(keepends=True)
            indent = len(match.group("indent"))
            found.append((f"{doc.relative_to(ROOT)}#{number}", "".join(line[indent:] for line in lines)))
    return found


def test_the_readme_has_a_configuration_example():
    """Guards the test below against passing on zero examples (a renamed fence, a moved file)."""
    assert any("environments:" in text for _, text in yaml_examples())


def interval_settings(env) -> dict[str, str]:
    return {"migration.lock_timeout": env.migration.lock_timeout,
            "migration.statement_timeout": env.migration.statement_timeout,
            "watch.statement_timeout": env.watch.statement_timeout,
            "watch.lock_timeout": env.watch.lock_timeout,
            "validation.statement_timeout": env.validation.statement_timeout,
            "validation.lock_timeout": env.validation.lock_timeout,
            "backups.lock_wait_timeout": env.backups.lock_wait_timeout}


def assert_postgres_takes(pg_url: str, env) -> None:
    """Each timeout as the bot hands it over: a `-c name=value` option of the connection, which
    PostgreSQL refuses (TargetError) when it cannot parse the value."""
    from runbook.target import Target

    for value in interval_settings(env).values():
        with Target(pg_url).connect("config-test", statement_timeout=value, lock_timeout=value) as conn:
            conn.execute("SELECT 1")


@pytest.mark.parametrize("label, text", yaml_examples(), ids=[label for label, _ in yaml_examples()])
def test_every_yaml_example_in_the_docs_loads_with_the_real_loader(label, text, pg_url, tmp_path):
    environ = {name: pg_url if name.endswith("URL") else "placeholder"
               for name in _NEEDED_VAR.findall(text)}
    settings = parse_settings(text, source=tmp_path / "runbook-bot.yaml", environ=environ)
    for name, env in settings.environments.items():
        assert env.dsn == pg_url, name
        assert_postgres_takes(pg_url, env)


@pytest.mark.parametrize("written, expected", [
    ("0", "0"), ("'0'", "0"), ("5s", "5s"), ("'5 s'", "5s"), ("100ms", "100ms"), ("2min", "2min"),
    ("1h", "1h"), ("1d", "1d"), ("250us", "250us"), ("1500", "1500"), ("1.5s", "1.5s"), ("2.5", "2.5"),
])
def test_every_documented_duration_form_loads_and_postgres_takes_it(written, expected, pg_url):
    text = (f"environments:\n  production:\n    database_url: {pg_url}\n    app_dir: app\n"
            f"    migration: {{lock_timeout: {written}, statement_timeout: {written}}}\n"
            f"    watch: {{statement_timeout: {written}, lock_timeout: {written}}}\n"
            f"    validation: {{statement_timeout: {written}, lock_timeout: {written}}}\n"
            f"    backups: {{lock_wait_timeout: {written}}}\n")
    env = parse(text).environments["production"]
    assert set(interval_settings(env).values()) == {expected}
    assert_postgres_takes(pg_url, env)


@pytest.mark.parametrize("written", ["soon", "-1", "true", "5 S", "5s;drop"])
def test_a_bad_duration_is_one_line_naming_the_key(written):
    text = ("environments:\n  production:\n    database_url: postgresql://x/y\n    app_dir: app\n"
            f"    migration: {{statement_timeout: '{written}'}}\n" if written != "true" else
            "environments:\n  production:\n    database_url: postgresql://x/y\n    app_dir: app\n"
            "    migration: {statement_timeout: true}\n")
    with pytest.raises(ConfigError) as caught:
        parse(text)
    assert str(caught.value) == ("/etc/rb/runbook-bot.yaml: environments.production.migration.statement_timeout: "
                                 "Value error, must be a duration such as 5s, 100ms, 2min or 0 (no limit)")
