"""Configurations and helpers for the escalation and incident-summary tests (issue 6)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from runbook.config import Settings, parse_settings
from tests.support.configs import write_config
from tests.support.sample_app import APP_DIR

ROOT = Path(__file__).resolve().parent.parent.parent
OWNER = "U0OWNER001"                  # tests/support/configs.py's escalation owner
RUNBOOK_URL = "https://github.example/acme/home_budget/blob/main/docs/migration-runbook.md"
GUIDELINES_URL = "https://github.example/acme/home_budget/blob/main/backend/db_migration_guidelines.md"
DASHBOARD_URL = "https://grafana.example/d/home-budget-db"
GITHUB_TOKEN = "ghp_TestToken0123456789abcdefSECRET"


def escalation_config(tmp_path: Path, url: str, *, app_dir: Path | None = None, pg_bin_dir: Path | None = None,
                      migration: dict | None = None, validation: dict | None = None, escalation: str = "",
                      owner: str = OWNER, channel: str = "C0ESCALATE1", approvers: tuple[str, ...] = ("U0APPROVE1",),
                      ) -> Path:
    """runbook-bot.yaml for one environment 'production' with links, dashboards and `escalation` lines
    (YAML indented two spaces, under `escalation:`) added."""
    extra = []
    if pg_bin_dir is not None:
        extra.append(f"    pg_bin_dir: {json.dumps(str(pg_bin_dir))}")
    if migration is not None:
        extra.append(f"    migration: {json.dumps(migration)}")
    if validation is not None:
        extra.append(f"    validation: {json.dumps(validation)}")
    path = write_config(tmp_path, url, channel=channel, extra_env="\n".join(extra), approvers=approvers,
                        backups_dir=str(tmp_path / "backups"), state_url=f"sqlite:///{tmp_path / 'state.db'}")
    text = path.read_text()
    if app_dir is not None:
        text = text.replace(json.dumps(str(APP_DIR)), json.dumps(str(app_dir)))
    text = text.replace("  owner: {slack: U0OWNER001, github: zeevbensender}",
                        f"  owner: {{slack: {owner}, github: zeevbensender}}")
    text += (f"  links: {{runbook: {json.dumps(RUNBOOK_URL)}, guidelines: {json.dumps(GUIDELINES_URL)}}}\n"
             f"  dashboards: {{database: {json.dumps(DASHBOARD_URL)}}}\n" + escalation)
    path.write_text(text)
    return path


def load(path: Path) -> Settings:
    return parse_settings(path.read_text(), source=path)


def cli(config: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    """`runbook-bot --config CONFIG ARGS` as a real process; `env` is added to this process's."""
    return subprocess.run([sys.executable, "-m", "bot.cli", "--config", str(config), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})


def hook_script(tmp_path: Path, body: str, name: str = "pause_app.py") -> list[str]:
    """A pause hook: a Python script (run as an argv, never through a shell)."""
    script = tmp_path / name
    script.write_text(body)
    return [sys.executable, str(script)]
