"""The supervisor of one alembic subprocess: started tethered and without a shell, its output
pumped into the run's log, the migrator's session watched for lock waits and their root blocker,
progress reported, and a hard timeout enforced (pg_cancel_backend, then the process group killed).
runbook/rehearse.py runs the app's Alembic against a copy through the same supervisor."""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Sequence

import psycopg

from runbook import activity
from runbook.config import Environment
from runbook.migrate.environment import migrator_application_name
from runbook.migrate.log import RunLog
from runbook.migrate.results import BlockerReport, Progress, blocker_line
from runbook.revisions import one_line
from runbook.target import TargetError
from runbook.tether import tethered

# How often the supervisor looks at the migrator's session (cheap: one pg_stat_activity row).
WATCH_SECONDS = 0.1
# After pg_cancel_backend, how long the subprocess gets to exit before its group is killed.
CANCEL_GRACE_SECONDS = 5.0


@dataclass
class Attempt:
    returncode: int | None
    output: str
    seconds: float
    timed_out: bool
    blocker: BlockerReport | None
    migrator_pid: int | None


class Supervisor:
    """One run: the lock's connection is held elsewhere; this one watches the migrator.

    `name`, `env`, `run_id` and `direction` say which run it is (`direction` may change between
    steps: a rehearsal goes up, then down); `monitor` is the connection it watches from, `log` where
    it writes; `timeout_seconds` bounds each alembic subprocess; `started` (time.monotonic()) is when
    the run began, `on_progress` is given a Progress at most every `progress_every` seconds."""

    def __init__(self, *, name: str, env: Environment, run_id: str, direction: str, monitor: psycopg.Connection,
                 log: RunLog, timeout_seconds: float, started: float,
                 on_progress: Callable[[Progress], None] | None = None, progress_every: float = 1.0):
        self.name, self.env, self.run_id, self.direction = name, env, run_id, direction
        self.monitor, self.log = monitor, log
        self.app_name = migrator_application_name(run_id)
        self.on_progress = on_progress
        self.progress_every = progress_every
        self.timeout_seconds = timeout_seconds
        self.started = started
        self.step: str | None = None
        self.step_index = 0
        self.step_count = 0
        self.attempt = 0
        self.phase = "locking"

    # -- progress -------------------------------------------------------------------------

    def report(self, phase: str | None = None, *, step_started: float | None = None, pid: int | None = None,
               waiting: bool = False, blocked_by: Sequence[int] = (), blocker: BlockerReport | None = None) -> None:
        if phase is not None:
            self.phase = phase
        if self.on_progress is None:
            return
        now = time.monotonic()
        progress = Progress(run_id=self.run_id, environment=self.name, direction=self.direction, phase=self.phase,
                            step=self.step, step_index=self.step_index, step_count=self.step_count,
                            attempt=self.attempt, elapsed_seconds=now - self.started,
                            step_elapsed_seconds=(now - step_started) if step_started else 0.0,
                            migrator_pid=pid, waiting_on_lock=waiting, blocked_by=tuple(blocked_by),
                            blocker=blocker)
        try:
            self.on_progress(progress)
        except Exception as exc:  # a Slack hiccup must never stop a migration
            self.log.write(f"progress callback failed: {type(exc).__name__}")

    # -- the migrator's session -----------------------------------------------------------

    def _migrator(self) -> tuple[int, str | None, list[int]] | None:
        row = self.monitor.execute(
            "SELECT pid, wait_event_type, CASE WHEN wait_event_type = 'Lock' THEN pg_blocking_pids(pid) END "
            "FROM pg_stat_activity WHERE application_name = %s ORDER BY backend_start LIMIT 1",
            [self.app_name]).fetchone()
        return (row[0], row[1], list(row[2] or [])) if row else None

    def _blocker(self, migrator_pid: int, waited_from: float) -> BlockerReport:
        """The root of the migrator's queue, from the same snapshot the §4 monitor uses."""
        t = self.env.thresholds
        snap = activity.snapshot(self.monitor, long_query_seconds=t.long_query_seconds,
                                 idle_in_transaction_seconds=t.idle_in_transaction_seconds)
        wait = next((w for w in snap.lock_waits if w.pid == migrator_pid), None)
        root = None
        if wait is not None and wait.root_blocker is not None:
            root = next((r for r in snap.roots if r.pid == wait.root_blocker
                         and any(q.pid == migrator_pid for q in r.queue)), None)
        session = root.session if root else None
        return BlockerReport(
            attempt=self.attempt, at=datetime.now(timezone.utc), migrator_pid=migrator_pid,
            waited_seconds=wait.seconds if wait else time.monotonic() - waited_from,
            lock_mode=wait.mode if wait else None, relation=wait.relation if wait else None,
            root_pid=wait.root_blocker if wait else None,
            application=session.application if session else None, user=session.user if session else None,
            state=session.state if session else None, xact_seconds=session.xact_seconds if session else None,
            query=self.log.scrub(session.query) if session else "",
            prepared_gid=root.prepared_gid if root else None)

    def cancel(self) -> None:
        """pg_cancel_backend for the migrator's session(s), found by application_name."""
        try:
            self.monitor.execute("SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
                                 [self.app_name])
        except psycopg.Error as exc:
            self.log.write(f"pg_cancel_backend failed: {one_line(str(exc))}")

    def terminate(self) -> None:
        try:
            self.monitor.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                 "WHERE application_name = %s", [self.app_name])
        except psycopg.Error as exc:
            self.log.write(f"pg_terminate_backend failed: {one_line(str(exc))}")

    # -- one alembic subprocess -----------------------------------------------------------

    def run_alembic(self, argv: list[str], env_vars: dict[str, str]) -> Attempt:
        shown = " ".join([*self.env.alembic, *argv[len(self.env.alembic):]])
        self.log.write(f"attempt {self.attempt}: {shown} (cwd {self.env.app_dir})")
        started = time.monotonic()
        try:
            proc = subprocess.Popen(tethered(argv), cwd=self.env.app_dir, env=env_vars, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                                    start_new_session=True)
        except OSError as exc:
            return Attempt(None, f"cannot run {self.env.alembic[0]!r}: {one_line(str(exc))}", 0.0, False, None, None)
        lines: list[str] = []

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                self.log.write(line, source="alembic")
                lines.append(self.log.scrub(line.rstrip("\n")))

        reader = threading.Thread(target=pump, name=f"alembic-output-{self.run_id}", daemon=True)
        reader.start()
        pid: int | None = None
        blocker: BlockerReport | None = None
        waited_from: float | None = None
        timed_out = False
        last_progress = 0.0
        while True:
            try:
                proc.wait(timeout=WATCH_SECONDS)
                break
            except subprocess.TimeoutExpired:
                pass
            now = time.monotonic()
            if now - started > self.timeout_seconds:
                timed_out = True
                self.log.write(f"hard timeout ({self.timeout_seconds:g} s): cancelling the migrator's backend")
                self._stop(proc)
                break
            waiting, blocked_by = False, []
            try:
                seen = self._migrator()
                if seen is not None:
                    pid, wait_type, blocked_by = seen
                    waiting = wait_type == "Lock"
                    if waiting and waited_from is None:
                        waited_from = now
                    if waiting and blocker is None:
                        blocker = self._blocker(pid, waited_from or now)
                        self.log.write(blocker_line(blocker))
                    elif not waiting:
                        waited_from = None
            except (psycopg.Error, TargetError) as exc:
                self.log.write(f"monitor query failed: {one_line(str(exc))}")
            if now - last_progress >= self.progress_every or (waiting and blocker is not None and last_progress == 0):
                last_progress = now
                self.report(step_started=started, pid=pid, waiting=waiting, blocked_by=blocked_by,
                            blocker=blocker if waiting else None)
        reader.join(timeout=10)
        seconds = time.monotonic() - started
        self.log.write(f"attempt {self.attempt} ended: exit {proc.returncode} after {seconds:.2f} s")
        return Attempt(proc.returncode, "\n".join(lines), seconds, timed_out, blocker, pid)

    def _stop(self, proc: subprocess.Popen) -> None:
        self.cancel()
        try:
            proc.wait(timeout=CANCEL_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            self.log.write("the subprocess did not exit after the cancel: killing its process group")
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                proc.kill()
            proc.wait(timeout=30)
        # Whatever is left of the session must not keep its locks or its transaction.
        self.terminate()


