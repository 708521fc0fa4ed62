"""APScheduler jobs and the leader lock: the watch runs once cluster-wide (reference/slack.md §4).

APScheduler 3.x cannot share a job store between processes, so each replica keeps its own
in-memory schedule (fixed job ids, static config) and two guards decide who acts:

* the leader gate: with a PostgreSQL state database, a session advisory lock held on one
  dedicated autocommit connection (outside SQLAlchemy's pool, so nobody else ever uses the
  session that owns it). The lock goes with the session: a replica that dies or loses its
  connection loses leadership and another one takes it at its next tick.
  With SQLite (one host, one file) a second scheduler cannot run at all: an exclusive
  `flock` on a file beside the database refuses it with one line;
* the claim row: `INSERT … ON CONFLICT DO NOTHING` per (job, wall-clock slot), inside the run
  (bot/watch.py), so even two leaders during a failover run a slot once.

Slots are wall-clock aligned (an interval counted from the Unix epoch), so every replica agrees
on them; misfire_grace_time is explicit, coalesce on, max_instances 1, UTC.
"""
from __future__ import annotations

import fcntl
import logging
import os
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psycopg
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

from bot.watch import AlwaysLeader, WatchRunner, job_id
from runbook.config import Settings
from runbook.target import redact

log = logging.getLogger("runbook_bot.scheduler")

# pg_try_advisory_lock key of the scheduler leader: "RBSC" (the state migrations use "RBOT").
LEADER_LOCK_KEY = 0x52425343
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


class SchedulerRefused(Exception):
    """This process must not run the scheduler; the message is one line for the operator."""


class PostgresLeader:
    """Leader while holding a session advisory lock on a dedicated connection to the state database."""

    def __init__(self, state_url: str, *, key: int = LEADER_LOCK_KEY, connect_timeout: int = 5) -> None:
        self.dsn = state_url.replace("postgresql+psycopg://", "postgresql://", 1)
        self.key = key
        self.connect_timeout = connect_timeout
        self._conn: psycopg.Connection | None = None
        self._leader = False
        self._lock = threading.Lock()

    def is_leader(self) -> bool:
        """Checked at every run: a leader pings its connection, a follower tries the lock."""
        with self._lock:
            try:
                if self._conn is None or self._conn.closed:
                    self._leader = False
                    # keepalives: a leader cut off by the network notices within a minute, not hours
                    self._conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=self.connect_timeout,
                                                 application_name="runbook-bot/scheduler-leader", keepalives=1,
                                                 keepalives_idle=10, keepalives_interval=5, keepalives_count=3)
                if self._leader:
                    self._conn.execute("SELECT 1")
                else:
                    row = self._conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,)).fetchone()
                    self._leader = bool(row and row[0])
                    if self._leader:
                        log.info("this replica is now the scheduler leader")
            except psycopg.Error as exc:
                if self._leader:
                    log.warning("lost the scheduler leadership: %s", redact(str(exc).splitlines()[0] if str(exc) else ""))
                self._drop()
            return self._leader

    def _drop(self) -> None:
        self._leader = False
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg.Error:
                pass
        self._conn = None

    def close(self) -> None:
        with self._lock:
            self._drop()       # closing the session releases the advisory lock


class FileLeader(AlwaysLeader):
    """SQLite: the only scheduler on this database, or none (an exclusive flock beside the file)."""

    def __init__(self, database: Path) -> None:
        self.database = database
        self.path = Path(f"{database}.scheduler.lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "another process"
            os.close(fd)
            raise SchedulerRefused(
                f"another runbook-bot scheduler ({holder}) already runs on the SQLite state database "
                f"{self.database}: stop it, or set state_url to postgresql://... to run several replicas"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}".encode(), 0)
        self._fd = fd

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)        # releases the flock
            self._fd = None


def leader_for(state_url: str) -> Any:
    """The gate that fits the state database."""
    if state_url.startswith(("postgresql://", "postgresql+psycopg://")):
        return PostgresLeader(state_url)
    database = state_url[len("sqlite:///"):] if state_url.startswith("sqlite:///") else ""
    if not database or database == ":memory:":
        return AlwaysLeader()      # a private in-memory database: nobody else can share it
    return FileLeader(Path(database))


class WatchScheduler:
    """A BackgroundScheduler with one watch job per environment, gated by the leader."""

    def __init__(self, settings: Settings, runner: WatchRunner, *, leader: Any = None) -> None:
        self.settings = settings
        self.runner = runner
        self.leader = leader if leader is not None else leader_for(settings.state_url)
        runner.leader = self.leader
        workers = max(2, min(10, len(settings.environments) + 1))
        self.scheduler = BackgroundScheduler(
            jobstores={"default": MemoryJobStore()},
            executors={"default": ThreadPoolExecutor(workers)},
            timezone=timezone.utc,
        )
        self.started = False

    def start(self) -> "WatchScheduler":
        """Raises SchedulerRefused when another scheduler owns a SQLite state database."""
        acquire = getattr(self.leader, "acquire", None)
        if callable(acquire):
            acquire()
        for name, env in self.settings.environments.items():
            every = env.watch.every_seconds
            self.scheduler.add_job(
                self._run, IntervalTrigger(seconds=every, start_date=EPOCH, timezone=timezone.utc),
                args=[name], id=job_id(name), name=f"watch {name} every {every} s", replace_existing=True,
                misfire_grace_time=env.watch.misfire_grace_seconds, coalesce=True, max_instances=1,
            )
        self.scheduler.start()
        self.started = True
        try:
            self.runner.report_leadership()
        except Exception as exc:  # the gate is asked again at every slot; a start must not fail on it
            log.warning("could not ask the scheduler leader gate at start (%s)", type(exc).__name__)
        log.info("watch scheduled for %s", ", ".join(self.settings.environments))
        return self

    def _run(self, environment: str) -> str | None:
        try:
            return self.runner.run(environment)
        except Exception as exc:  # a failing run must not kill the schedule; the next slot tries again
            log.error("watch %s failed (%s)", environment, type(exc).__name__,
                      exc_info=self.runner.redactor.safe_exc_info(exc))
            return None

    def every(self, job: str, seconds: int, fn: Any) -> None:
        """A plain interval job on every replica, not gated by the leader: `fn` must be safe to run
        anywhere at once (the approvals expiry sweep moves rows by conditional UPDATEs)."""
        def run() -> None:
            try:
                fn()
            except Exception as exc:  # the next tick tries again
                log.error("%s failed (%s)", job, type(exc).__name__, exc_info=self.runner.redactor.safe_exc_info(exc))

        self.scheduler.add_job(run, IntervalTrigger(seconds=seconds, start_date=EPOCH, timezone=timezone.utc),
                               id=job, name=f"{job} every {seconds} s", replace_existing=True,
                               misfire_grace_time=seconds, coalesce=True, max_instances=1)

    def jobs(self) -> list[Any]:
        return self.scheduler.get_jobs()

    def shutdown(self, wait: bool = True) -> None:
        if self.started:
            self.scheduler.shutdown(wait=wait)
            self.started = False
        close = getattr(self.leader, "close", None)
        if callable(close):
            close()


__all__ = ["FileLeader", "LEADER_LOCK_KEY", "PostgresLeader", "SchedulerRefused", "WatchScheduler", "leader_for"]
