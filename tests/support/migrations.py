"""Helpers for the migrate / rollback / validate tests: throwaway copies of the sample app with
extra revisions, environments pointing at them, and a check that no secret leaked anywhere."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import psycopg

from runbook.config import Environment, Settings
from tests.support.configs import settings_for
from tests.support.sample_app import APP_DIR, REV_0003

PASSWORD = "s3cret-Migr4te-pw"

REVISION_TEMPLATE = '''"""{message}

Revision ID: {revision}
Revises: {down}
"""
from alembic import op
import sqlalchemy as sa

revision = "{revision}"
down_revision = {down_literal}
branch_labels = None
depends_on = None


def upgrade() -> None:
{upgrade}


def downgrade() -> None:
{downgrade}
'''


def app_copy(tmp_path: Path, revisions: list[tuple[str, str, str]] | None = None, *, name: str = "app") -> Path:
    """A copy of examples/home_budget in tmp_path with extra revisions appended after 0003.

    `revisions`: (revision id, upgrade body, downgrade body), chained in order; bodies are
    Python statements (indented here).
    """
    target = tmp_path / name
    shutil.copytree(APP_DIR, target, ignore=shutil.ignore_patterns("__pycache__"))
    down = REV_0003
    for revision, upgrade, downgrade in revisions or []:
        text = REVISION_TEMPLATE.format(
            message=f"test revision {revision}", revision=revision, down=down, down_literal=json.dumps(down),
            upgrade=textwrap.indent(textwrap.dedent(upgrade).strip(), "    "),
            downgrade=textwrap.indent(textwrap.dedent(downgrade).strip(), "    "))
        (target / "alembic" / "versions" / f"{revision}.py").write_text(text)
        down = revision
    return target


def environment(tmp_path: Path, url: str, *, app_dir: Path | None = None, migration: dict | None = None,
                validation: dict | None = None, state: str = "state.db",
                pg_bin_dir: Path | None = None) -> tuple[Settings, str, Environment]:
    """(settings, name, env) for one environment 'production' on `url`, optionally on a copied app.
    `pg_bin_dir`: where pg_dump is (the pre-migration backup needs one at least as new as the server)."""
    extra = [f"    pg_bin_dir: {json.dumps(str(pg_bin_dir))}"] if pg_bin_dir is not None else []
    if migration is not None:
        extra.append(f"    migration: {json.dumps(migration)}")
    if validation is not None:
        extra.append(f"    validation: {json.dumps(validation)}")
    settings = settings_for(tmp_path, url, extra_env="\n".join(extra), state_url=f"sqlite:///{state}")
    name, env = settings.environment(None)
    if app_dir is not None:
        env = env.model_copy(update={"app_dir": app_dir})
        settings = settings.model_copy(update={"environments": {name: env}})
    return settings, name, env


def config_file(tmp_path: Path, url: str, *, app_dir: Path | None = None, migration: dict | None = None,
                validation: dict | None = None, pg_bin_dir: Path | None = None) -> Path:
    """The same environment as a configuration file, for the CLI."""
    settings, _, _ = environment(tmp_path, url, migration=migration, validation=validation, pg_bin_dir=pg_bin_dir)
    path = tmp_path / "runbook-bot.yaml"
    if app_dir is not None:
        path.write_text(path.read_text().replace(json.dumps(str(APP_DIR)), json.dumps(str(app_dir))))
    return path


def assert_no_secret(secret: str, *texts: object, files: tuple[Path, ...] = ()) -> None:
    for text in texts:
        assert secret not in str(text)
    for path in files:
        assert secret not in path.read_text(errors="replace"), f"{path} holds the password"


def counting_alembic(tmp_path: Path) -> tuple[list[str], Path]:
    """(an `alembic` argv that logs each invocation's arguments, one line each, then runs the real
    one; the log) for counting the app's Alembic processes."""
    log = tmp_path / "alembic-runs.log"
    wrapper = tmp_path / "counting_alembic.py"
    wrapper.write_text("import runpy, sys\n"
                       f"with open({str(log)!r}, 'a') as f:\n"
                       "    f.write(' '.join(sys.argv[1:]) + '\\n')\n"
                       "sys.argv = ['alembic', *sys.argv[1:]]\n"
                       "runpy.run_module('alembic', run_name='__main__')\n")
    return [sys.executable, str(wrapper)], log


def alembic_runs(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


ROOT = Path(__file__).resolve().parents[2]


def run_cli(config: Path, *args: str, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """`runbook-bot --config CONFIG ARGS…` as a user runs it: a fresh interpreter, its output captured."""
    return subprocess.run([sys.executable, "-m", "bot.cli", "--config", str(config), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, **kwargs)


def alembic_version(url: str) -> list[str]:
    """The revisions the database at `url` is at (its alembic_version rows)."""
    with psycopg.connect(url) as conn:
        return [r[0] for r in conn.execute("SELECT version_num FROM alembic_version")]
