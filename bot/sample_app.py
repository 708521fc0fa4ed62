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


# -- a lock queue, as an app that forgets to commit makes one ----------------------------------

APP_SESSION_NAME = "home-budget-api"      # what the watch's alerts name the sessions by


class StuckTransaction:
    """A real lock queue on the sample database (runbook §4.2): one app session updates an expense
    and stays idle in its transaction, holding the row lock; `waiters` more sessions update the same
    row and queue behind it (`queue_one` adds one). `release()` rolls the first one back: the queue
    drains, nothing changed (every statement is `amount = amount`). The console demo's `lock` and
    `unlock`."""

    def __init__(self, pg_url: str, waiters: int = 2, *, timeout: float = 10.0) -> None:
        self._url = pg_url
        self._timeout = timeout
        self._conns: list = []
        self._threads: list = []
        self.waiter_pids: list[int] = []
        try:
            holder = self._connect(autocommit=False)
            self._row = holder.execute("SELECT min(id) FROM expenses").fetchone()[0]
            holder.execute("UPDATE expenses SET amount = amount WHERE id = %s", (self._row,))
            self.holder_pid = holder.info.backend_pid
            for _ in range(waiters):        # one after the other: the queue's order is always the same
                self.queue_one()
        except BaseException:
            self.release()
            raise

    def _connect(self, *, autocommit: bool):
        import psycopg

        conn = psycopg.connect(self._url, autocommit=autocommit, application_name=APP_SESSION_NAME,
                               # should the demo die without releasing it, the server ends the queue
                               options="-c idle_in_transaction_session_timeout=30min -c statement_timeout=30min")
        self._conns.append(conn)
        return conn

    def queue_one(self) -> int:
        """One more session updates the row and waits; returns its pid once it waits on the lock."""
        import threading

        conn = self._connect(autocommit=True)
        pid = conn.info.backend_pid
        self.waiter_pids.append(pid)

        def update() -> None:
            try:
                conn.execute("UPDATE expenses SET amount = amount WHERE id = %s", (self._row,))
            except Exception:      # cancelled or terminated with the demo: nothing to report
                pass

        thread = threading.Thread(target=update, name=f"stuck-waiter-{pid}", daemon=True)
        self._threads.append(thread)
        thread.start()
        self._wait_until_queued()
        return pid

    def _wait_until_queued(self) -> None:
        """Until every waiter waits on a lock (polled, with a deadline)."""
        import time

        import psycopg

        deadline = time.monotonic() + self._timeout
        with psycopg.connect(self._url, autocommit=True, application_name="runbook-bot/demo") as conn:
            while True:
                waiting = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s) "
                                       "AND wait_event_type = 'Lock'", (self.waiter_pids,)).fetchone()[0]
                if waiting == len(self.waiter_pids):
                    return
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the sessions did not queue within {self._timeout:.0f} s")
                time.sleep(0.05)

    def release(self) -> None:
        """The holder rolls back; the waiters finish; every connection closes."""
        if self._conns:
            try:
                self._conns[0].rollback()
            except Exception:
                pass
        for thread in self._threads:
            thread.join(timeout=10)
        for conn in self._conns:
            try:
                conn.close()
            except Exception:
                pass
        self._conns, self._threads = [], []
