"""The sample app (examples/home_budget) driven the way runbook-bot drives a real one: used by the console demo, the tests and the benchmarks.

Alembic always runs as a subprocess of the sample app (`python -m alembic` in its
directory, DATABASE_URL in the environment), never inside the test process.
"""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

from runbook.subprocess_env import app_subprocess_env

ROOT = Path(__file__).resolve().parent.parent
APP_DIR = ROOT / "examples" / "home_budget"
ALEMBIC_ARGV = [sys.executable, "-m", "alembic"]
URL_ENV = "DATABASE_URL"

# Revision ids of the sample app, oldest first.
REV_0001 = "0001_expenses_incomes"
REV_0002 = "0002_categories"
REV_0003 = "0003_backfill_categories"
REVISIONS = (REV_0001, REV_0002, REV_0003)


def alembic(pg_url: str, *args: str, app_dir: Path = APP_DIR, timeout: float = 120,
            check: bool = True) -> subprocess.CompletedProcess:
    """Run the app's alembic with `args` (e.g. "upgrade", "head"); raises AssertionError on failure."""
    env = app_subprocess_env(URL_ENV, pg_url)    # as the bot runs an app's alembic: no bot secret
    result = subprocess.run([*ALEMBIC_ARGV, *args], cwd=app_dir, env=env, capture_output=True,
                            text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"alembic {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result


def upgrade(pg_url: str, revision: str = "head", **kwargs) -> None:
    alembic(pg_url, "upgrade", revision, **kwargs)


def downgrade(pg_url: str, revision: str, **kwargs) -> None:
    alembic(pg_url, "downgrade", revision, **kwargs)


def _seed_module():
    spec = importlib.util.spec_from_file_location("home_budget_seed", APP_DIR / "seed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def seed(pg_url: str, rows: int = 50) -> dict[str, int]:
    """examples/home_budget/seed.py's seed(): needs the database at 0001 or later."""
    return _seed_module().seed(pg_url, rows=rows)


def sample_db_at(pg_url: str, revision: str, seed_rows: int = 50) -> str:
    """Migrate `pg_url` to `revision` ("0001", "0002_categories", "head"...; "base" leaves it
    unversioned and empty), seeding `seed_rows` expenses at 0001 first so later data
    migrations have rows to work on. Returns pg_url."""
    if revision == "base":
        return pg_url
    if seed_rows:
        upgrade(pg_url, REV_0001)
        seed(pg_url, rows=seed_rows)
        if not REV_0001.startswith(revision):
            upgrade(pg_url, revision)
    else:
        upgrade(pg_url, revision)
    return pg_url
