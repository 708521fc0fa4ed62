"""§3: upgrade and downgrade as a supervised subprocess of the app's own Alembic.

One run, under the operation lock (design rule 13) from start to end:

    lock -> no pg_dump connected -> the database still at the approved revision -> plan
         -> [before(held): the backup] -> baseline -> alembic, step by step or at once
         -> version verified after every attempt -> validation (§5) -> on failure, §6.5

* The app's Alembic runs as `<env.alembic> upgrade|downgrade REV` in app_dir, never through a
  shell, with the URL only in `url_env` (design rule 11), and tethered to this process
  (runbook/tether.py) so it cannot outlive a killed bot.
* PGOPTIONS carries lock_timeout and statement_timeout from `migration` and an
  application_name `rbmigrate/<run id>`: not `runbook-bot/...`, so activity reports (and the
  live monitor) show the migration's own session (design rule 14).
* A lock timeout (LockNotAvailable) is retried with exponential backoff and jitter up to
  `migration.retries`; between tries the root blocker seen while the migrator waited is
  reported through `on_blocker`. On PostgreSQL an attempt is one transaction per alembic
  subprocess (all pending revisions with the default env.py, one revision with step_by_step),
  so a failed attempt leaves the database at its last good revision; the version table is
  read after every attempt to know, not assume.
* `migration.timeout_seconds` bounds each subprocess: the migrator's backend is cancelled
  (pg_cancel_backend by its application_name), then its process group killed.
* The full output (stdout and stderr, redacted, timestamped) goes to a log file (§3.3); the
  result keeps its tail.

Everything is reported through plain dataclasses; refusals are results too (outcome
"refused", with the reason), never exceptions.
"""
from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import threading
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Literal, Sequence
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg

from runbook import activity, backup, guard
from runbook.config import Environment
from runbook.precheck import project_of, target_of
from runbook.revisions import AlembicProject, RevisionError, last_error_line, one_line
from runbook.subprocess_env import app_subprocess_env
from runbook.target import Target, TargetError, password_of, redact
from runbook.tether import tethered

MIGRATOR_PREFIX = "rbmigrate"
Direction = Literal["upgrade", "downgrade"]
# error: the run could not reach the target or broke unexpectedly (the CLI exits 2 for it).
Outcome = Literal["succeeded", "nothing to do", "failed", "validation failed", "refused", "error"]

# How often the supervisor looks at the migrator's session (cheap: one pg_stat_activity row).
WATCH_SECONDS = 0.1
# After pg_cancel_backend, how long the subprocess gets to exit before its group is killed.
CANCEL_GRACE_SECONDS = 5.0
BACKOFF_CAP_SECONDS = 60.0
TAIL_LINES = 40
# The gate is checked again when the backup before the run took longer than this.
GATE_RECHECK_AFTER_SECONDS = 1.0


def migrator_application_name(run_id: str) -> str:
    return f"{MIGRATOR_PREFIX}/{run_id}"


# ---------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class BlockerReport:
    """Who kept the migrator from its lock, as seen while it waited."""

    attempt: int
    at: datetime
    migrator_pid: int | None
    waited_seconds: float
    lock_mode: str | None
    relation: str | None
    root_pid: int | None              # 0: a prepared transaction; None: not observed
    application: str | None
    user: str | None
    state: str | None
    xact_seconds: float | None
    query: str
    prepared_gid: str | None = None
    retry_in_seconds: float | None = None   # None: no retry follows

    @property
    def observed(self) -> bool:
        return self.root_pid is not None


@dataclass(frozen=True)
class Progress:
    """What the run is doing now; the Slack side renders it (at most every 2 s)."""

    run_id: str
    environment: str
    direction: str
    phase: str                        # locking, backup, migrating, waiting to retry, validating, done
    step: str | None                  # the revision being applied (or undone to)
    step_index: int                   # 1-based; 0 before the first step
    step_count: int
    attempt: int
    elapsed_seconds: float
    step_elapsed_seconds: float
    migrator_pid: int | None
    waiting_on_lock: bool = False
    blocked_by: tuple[int, ...] = ()
    blocker: BlockerReport | None = None


@dataclass(frozen=True)
class StepResult:
    target: str                       # what `alembic upgrade|downgrade` was asked for
    ok: bool
    attempts: int
    seconds: float
    version_after: list[str]
    error: str | None = None
    timed_out: bool = False


@dataclass
class MigrationResult:
    run_id: str
    environment: str
    direction: str
    outcome: str
    target: str                       # the resolved goal ("base" for everything undone)
    from_revisions: list[str]
    to_revisions: list[str]           # read from the database at the end
    planned_steps: list[str] = field(default_factory=list)
    steps: list[StepResult] = field(default_factory=list)
    attempts: int = 0
    error: str | None = None          # one line, redacted
    log_path: str | None = None
    log_tail: str = ""
    blockers: list[BlockerReport] = field(default_factory=list)
    started_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    finished_at: datetime | None = None
    duration_seconds: float = 0.0
    touched_tables: list[str] = field(default_factory=list)
    revisions: list[Any] = field(default_factory=list)     # runbook.revisions.Revision, in run order
    validation: Any = None            # runbook.validate.ValidationReport
    recommendation: Any = None        # runbook.rollback.Recommendation when something went wrong
    backup: Any = None                # what `before` returned
    timed_out: bool = False
    gate: Any = None                  # runbook.gate.GateCheck, the last one taken before the first statement
    gate_overridden: bool = False

    @property
    def ok(self) -> bool:
        return self.outcome in ("succeeded", "nothing to do")

    @property
    def steps_done(self) -> list[str]:
        return [s.target for s in self.steps if s.ok]

    def summary(self) -> str:
        frm = ", ".join(self.from_revisions) or "base"
        to = ", ".join(self.to_revisions) or "base"
        text = f"{self.direction} {self.environment} {frm} -> {to} (target {self.target}): {self.outcome}"
        if self.error:
            text += f": {self.error}"
        return text


# ---------------------------------------------------------------------------
# Guards


def _pgoptions(env: Environment, app_name: str, server_version: int) -> str:
    options = [f"-c lock_timeout={env.migration.lock_timeout.replace(' ', '')}",
               f"-c statement_timeout={env.migration.statement_timeout.replace(' ', '')}",
               f"-c application_name={app_name}"]
    if server_version >= 140000:
        # A backend notices a vanished client (the tether killed alembic) within seconds and
        # rolls back, instead of finishing a long statement for nobody.
        options.append("-c client_connection_check_interval=2s")
    # Deliberately kept: the operator's own PGOPTIONS (a search_path, a role) applies to the
    # migrator's session as to every tool (runbook.subprocess_env passes it); ours come after it
    # and win on the same setting.
    inherited = os.environ.get("PGOPTIONS", "").strip()
    return " ".join(([inherited] if inherited else []) + options)


def alembic_environment(env: Environment, url: str, app_name: str, server_version: int) -> dict[str, str]:
    """The environment of an alembic subprocess run against `url` (the target, or a rehearsal's copy):
    the subprocess allowlist (runbook.subprocess_env), the URL only in `url_env`, the timeouts and
    application_name in PGOPTIONS (design rules 11, 14)."""
    return app_subprocess_env(env.url_env, _without_application_name(url), env.app_env, extra={
        "PGOPTIONS": _pgoptions(env, app_name, server_version), "PGAPPNAME": app_name})


def _without_application_name(url: str) -> str:
    """A URL's own application_name would win over PGOPTIONS and hide the migrator's session."""
    parts = urlsplit(url)
    if not parts.query:
        return url
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "application_name"]
    return urlunsplit(parts._replace(query=urlencode(query)))


# ---------------------------------------------------------------------------
# The log (§3.3)


class RunLog:
    """Timestamped, redacted lines to a file, and the last lines kept for messages."""

    def __init__(self, path: Path, secrets: Sequence[str]):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._secrets = [s for s in secrets if s]
        self._tail: deque[str] = deque(maxlen=TAIL_LINES)
        self._lock = threading.Lock()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        self._file = os.fdopen(fd, "a", encoding="utf-8")

    def scrub(self, text: str) -> str:
        return redact(text, *self._secrets)

    def write(self, line: str, *, source: str = "bot") -> None:
        line = self.scrub(line.rstrip("\n"))
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
        with self._lock:
            self._file.write(f"{stamp} [{source}] {line}\n")
            self._file.flush()
            if source != "bot":
                self._tail.append(line)

    @property
    def tail(self) -> str:
        with self._lock:
            return "\n".join(self._tail)

    def close(self) -> None:
        with self._lock:
            self._file.close()


def default_log_dir(env: Environment) -> Path:
    """Next to the backups (§2.5 storage): <backups.dir>/migration-logs. Backups kept at a URL
    (s3://…) have no local directory: the logs then go where dumps are staged."""
    where = str(env.backups.dir)
    if "://" in where:
        staging = env.backups.staging_dir or Path(tempfile.gettempdir()) / "runbook-bot"
        return Path(staging) / "migration-logs"
    return Path(where) / "migration-logs"


# ---------------------------------------------------------------------------
# The supervisor


@dataclass
class _Attempt:
    returncode: int | None
    output: str
    seconds: float
    timed_out: bool
    blocker: BlockerReport | None
    migrator_pid: int | None


class _Supervisor:
    """One run: the lock's connection is held elsewhere; this one watches the migrator."""

    def __init__(self, name: str, env: Environment, run_id: str, direction: str, monitor: psycopg.Connection,
                 log: RunLog, on_progress: Callable[[Progress], None] | None, progress_every: float,
                 timeout_seconds: float, started: float):
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

    def run_alembic(self, argv: list[str], env_vars: dict[str, str]) -> _Attempt:
        shown = " ".join([*self.env.alembic, *argv[len(self.env.alembic):]])
        self.log.write(f"attempt {self.attempt}: {shown} (cwd {self.env.app_dir})")
        started = time.monotonic()
        try:
            proc = subprocess.Popen(tethered(argv), cwd=self.env.app_dir, env=env_vars, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                                    start_new_session=True)
        except OSError as exc:
            return _Attempt(None, f"cannot run {self.env.alembic[0]!r}: {one_line(str(exc))}", 0.0, False, None, None)
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
                        self.log.write(_blocker_line(blocker))
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
        return _Attempt(proc.returncode, "\n".join(lines), seconds, timed_out, blocker, pid)

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


# runbook/rehearse.py runs the app's Alembic against a copy through the same supervisor.
Supervisor = _Supervisor


def _blocker_line(b: BlockerReport) -> str:
    if not b.observed:
        return f"migrator pid {b.migrator_pid} waits on a lock; its blocker was not seen"
    who = f"prepared transaction {b.prepared_gid}" if b.root_pid == 0 else (
        f"pid {b.root_pid} ({b.application or '?'}, {b.state or '?'}"
        + (f", transaction open {b.xact_seconds:.0f} s" if b.xact_seconds is not None else "") + ")")
    return (f"migrator pid {b.migrator_pid} waits for {b.lock_mode or 'a lock'} on {b.relation or '?'}; "
            f"root blocker {who}: {b.query}")


_EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Timeout)|FAILED)\b[^:]{0,80}:\s*\S")
_FRAME = re.compile(r'^\s*File "(?P<path>[^"]+)", line (?P<line>\d+)')


def error_line(output: str, app_dir: Path) -> str:
    """The line that says what went wrong in alembic's output: the last exception line (SQLAlchemy
    puts "[SQL: ...]" and a "Background on this error" link after it), with the app's own file
    and line where the traceback passed through it."""
    lines = output.splitlines()
    for index in range(len(lines) - 1, -1, -1):
        if _EXCEPTION_LINE.match(lines[index].strip()):
            where = ""
            for frame in lines[:index]:
                match = _FRAME.match(frame)
                if match and Path(match.group("path")).resolve().is_relative_to(Path(app_dir).resolve()):
                    where = f" ({Path(match.group('path')).resolve().relative_to(Path(app_dir).resolve())} " \
                            f"line {match.group('line')})"
            return lines[index].strip() + where
    return last_error_line(output, app_dir)


def _is_lock_timeout(output: str) -> bool:
    return "LockNotAvailable" in output or "due to lock timeout" in output


def _backoff(attempt: int, base: float) -> float:
    """Exponential backoff with jitter: between half and all of base * 2^(attempt-1), capped."""
    ceiling = min(BACKOFF_CAP_SECONDS, base * (2 ** (attempt - 1)))
    return random.uniform(ceiling / 2, ceiling) if ceiling > 0 else 0.0


# ---------------------------------------------------------------------------
# Planning


@dataclass
class Plan:
    current: list[str]
    target: str
    revisions: list[Any]          # Revision, in the order they are applied (upgrade) or undone (downgrade)
    steps: list[str]              # the argument of each alembic call
    expected_after: list[list[str]]   # the version table after each step


def plan(project: AlembicProject, current: list[str], direction: str, target: str, step_by_step: bool) -> Plan:
    """What will run, validated against the scripts; RevisionError (one line) when it cannot."""
    if len(current) > 1:
        raise RevisionError(f"the database has several current revisions ({', '.join(current)}): merge them first")
    resolved = project.resolve(target, current)
    if resolved == "heads":
        raise RevisionError(f"several heads: merge needed ({', '.join(project.heads())})")
    at = ", ".join(current) or "base"
    if direction == "upgrade":
        revisions = project.pending(current, resolved)
        if not revisions and project.downgrades(current, resolved):
            raise RevisionError(f"{target!r} ({resolved}) is behind the current revision {at}: "
                                "that is a rollback, not a migration")
        if step_by_step and all(len(r.down_revisions) <= 1 for r in revisions):
            steps = [r.revision for r in revisions]
        else:
            steps = [resolved] if revisions else []
        expected = [[s] for s in steps]
    else:
        revisions = project.downgrades(current, resolved)
        if not revisions and project.pending(current, resolved):
            raise RevisionError(f"{target!r} ({resolved}) is ahead of the current revision {at}: "
                                "that is a migration, not a rollback")
        if step_by_step and all(len(r.down_revisions) <= 1 for r in revisions):
            steps = [(r.down_revisions[0] if r.down_revisions else "base") for r in revisions]
        else:
            steps = [resolved] if revisions else []
        expected = [[] if s == "base" else [s] for s in steps]
    return Plan(current=current, target=resolved, revisions=revisions, steps=steps, expected_after=expected)


# ---------------------------------------------------------------------------
# The run


def run(name: str, env: Environment, *, direction: Direction = "upgrade", target: str | None = None,
        expected_current: Sequence[str] | None = None, actor: str = "runbook-bot", store: Any = None,
        approval_id: str | None = None, run_id: str | None = None,
        before: Callable[[guard.Held], Any] | None = None, validate_after: bool = True,
        on_progress: Callable[[Progress], None] | None = None,
        on_blocker: Callable[[BlockerReport], None] | None = None,
        log_dir: Path | None = None, project: AlembicProject | None = None,
        progress_every: float = 1.0, lock_wait_seconds: float = 0.0,
        backoff_seconds: float | None = None, timeout_seconds: float | None = None,
        restore_from: Any = None, gate_override: Any = None,
        sleep: Callable[[float], None] = time.sleep) -> MigrationResult:
    """Upgrade (or downgrade) one environment under every guard; never raises for the target's faults.

    `expected_current`: the revision(s) the request was approved at; the run stops if the
    database moved since. `before(held, current)` runs under the same lock first (the backup), with
    the revision read under it. `gate_override`: a runbook.gate.GateOverride letting the run through
    a closed no-go gate (runbook.ops decides who may give one).
    `store`: the state Store (a runs row with a heartbeat, events); optional.
    `restore_from`: the verified backup a §6.5 restore would use when `before` takes none (what the
    recommendation may ask to restore depends on what that backup holds).
    """
    from runbook.state.runs import Heartbeat, RunStore, new_run_id

    run_id = run_id or new_run_id()
    target = target or ("head" if direction == "upgrade" else "-1")
    clock = time.monotonic()
    project = project or project_of(env)
    tgt = target_of(env)
    secret = password_of(env.dsn)
    result = MigrationResult(run_id=run_id, environment=name, direction=direction, outcome="failed",
                             target=target, from_revisions=list(expected_current or []), to_revisions=[])
    runs = RunStore(store) if store is not None else None
    kind = "migrate" if direction == "upgrade" else "rollback"
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d_%H%M%S")
    where = log_dir or default_log_dir(env)
    try:
        log = RunLog(where / f"{kind}_{name}_{stamp}_{run_id}.log", [secret, env.dsn])
    except OSError as exc:      # e.g. a backups.dir that cannot be written: stop before anything starts
        result.outcome, result.to_revisions = "error", list(result.from_revisions)
        result.error = redact(f"cannot write the run's log in {where}: {exc.strerror or type(exc).__name__}",
                              secret)
        result.finished_at = datetime.now(timezone.utc)
        if store is not None:
            store.record(actor=actor, action=kind, environment=name, outcome="error", summary=result.summary(),
                         run_id=run_id)
        return result
    if runs is not None:
        runs.start(kind=kind, environment=name, actor=actor, target_revision=target, approval_id=approval_id,
                   run_id=run_id)
    result.log_path = str(log.path)
    if runs is not None:
        runs.set_log_path(run_id, str(log.path))
    log.write(f"run {run_id}: {direction} {name} ({tgt.label}) to {target}, asked by {actor}")

    def event(action: str, outcome: str, summary: str, details: dict[str, Any] | None = None) -> None:
        if store is not None:
            try:
                store.record(actor=actor, action=action, environment=name, outcome=outcome,
                             summary=log.scrub(summary), details=details or {}, run_id=run_id)
            except Exception as exc:  # the audit trail failing must be visible, not fatal mid-migration
                log.write(f"could not record event {action}: {type(exc).__name__}")

    beat = Heartbeat(runs, run_id) if runs is not None else None
    try:
        if beat is not None:
            beat.__enter__()
        _run_locked(result, name, env, tgt, project, direction, target, expected_current, before, validate_after,
                    on_progress, on_blocker, log, event, beat, progress_every, lock_wait_seconds,
                    env.migration.retry_backoff_seconds if backoff_seconds is None else backoff_seconds,
                    env.migration.timeout_seconds if timeout_seconds is None else timeout_seconds, sleep, clock,
                    store=store, restore_from=restore_from, gate_override=gate_override)
    except Exception as exc:  # last resort: the run ends recorded, with one redacted line
        result.outcome = "error"
        result.error = log.scrub(one_line(f"{type(exc).__name__}: {exc}"))
        log.write(f"unexpected error: {result.error}")
    finally:
        if beat is not None:
            beat.__exit__(None, None, None)
        result.finished_at = datetime.now(timezone.utc)
        result.duration_seconds = time.monotonic() - clock
        result.log_tail = log.tail
        log.write(result.summary())
        log.close()
        if runs is not None:
            state = {"succeeded": "succeeded", "nothing to do": "succeeded", "refused": "refused"}.get(
                result.outcome, "failed")
            try:
                runs.finish(run_id, state, summary=log.scrub(result.summary()), result=result_to_json(result))
            except Exception:
                pass
        event(kind, result.outcome, result.summary(),
              {"from": result.from_revisions, "to": result.to_revisions, "target": result.target,
               "steps": result.steps_done, "attempts": result.attempts, "log": result.log_path})
    return result


def _run_locked(result: MigrationResult, name: str, env: Environment, tgt: Target, project: AlembicProject,
                direction: str, target: str, expected_current: Sequence[str] | None, before, validate_after: bool,
                on_progress, on_blocker, log: RunLog, event, beat, progress_every: float,
                lock_wait_seconds: float, backoff_seconds: float, timeout_seconds: float, sleep, clock: float,
                *, store: Any = None, restore_from: Any = None, gate_override: Any = None) -> None:
    from runbook import rollback, validate

    operation = "migrate" if direction == "upgrade" else "rollback"
    try:
        lock_cm = guard.exclusive(tgt, name, operation, wait_seconds=lock_wait_seconds)
        held = lock_cm.__enter__()
    except guard.OperationRunning as exc:
        return _refuse(result, log, str(exc))
    except TargetError as exc:
        result.outcome, result.error = "error", str(exc)
        log.write(f"cannot take the operation lock: {exc}")
        return None
    try:
        with tgt.connect("migrate-monitor") as monitor:
            sup = _Supervisor(name, env, result.run_id, direction, monitor, log, on_progress, progress_every,
                              timeout_seconds, clock)
            sup.report("checking")
            dumps = backup.dump_in_progress(monitor)      # reference/postgres.md §5: never overlap the two
            if dumps:
                dump = dumps[0]
                return _refuse(result, log, f"a pg_dump is connected to {name} (pid {dump.pid}, "
                                            f"{dump.application or 'pg_dump'}, {dump.seconds:.0f} s): a migration "
                                            "would block it or make it fail; try again when the dump has finished")
            current = project.current(monitor)
            if not result.from_revisions:
                result.from_revisions = list(current)
            if expected_current is not None and sorted(current) != sorted(expected_current):
                result.from_revisions = list(current)
                return _refuse(result, log, f"{name} is at {', '.join(current) or 'base'}, not at "
                                            f"{', '.join(expected_current) or 'base'} as approved: it changed since; "
                                            "check `status` and ask again")
            try:
                the_plan = plan(project, current, direction, target, env.migration.step_by_step)
            except RevisionError as exc:
                return _refuse(result, log, str(exc))
            result.target = the_plan.target
            result.planned_steps = list(the_plan.steps)
            result.revisions = list(the_plan.revisions)
            result.to_revisions = list(current)
            if beat is not None:
                beat.runs.set_revisions(result.run_id, ", ".join(current) or "base", the_plan.target)
            if direction == "downgrade":
                refusal = rollback.irreversible_refusal(the_plan.revisions, name)
                if refusal:
                    return _refuse(result, log, refusal)
            if not the_plan.steps:
                result.outcome = "nothing to do"
                log.write(f"nothing to do: {name} is at {', '.join(current) or 'base'}")
                return None
            result.touched_tables, expected_indexes = _touched(project, env, current, the_plan, direction, log)
            log.write("plan: " + " -> ".join(the_plan.steps)
                      + (f"; tables touched: {', '.join(result.touched_tables)}" if result.touched_tables else ""))
            # The no-go gate (runbook/gate.py): checked before the backup, so a closed gate costs no dump,
            # and again once a backup took time, immediately before the first Alembic statement.
            if not _gate_passes(result, name, env, monitor, project, the_plan, store, gate_override, log, event):
                return None
            event(f"{operation}.start", "started", f"{direction} {name} from {', '.join(current) or 'base'} to "
                  f"{the_plan.target} in {len(the_plan.steps)} step(s)", {"steps": the_plan.steps})
            if before is not None:
                sup.report("backup")
                _beat(beat, "backup")
                backup_started = time.monotonic()
                try:
                    result.backup = before(held, list(current))
                except Exception as exc:
                    result.error = log.scrub(one_line(f"the backup before the migration failed: {exc}"))
                    log.write(result.error)
                    return None
                if time.monotonic() - backup_started > GATE_RECHECK_AFTER_SECONDS and not _gate_passes(
                        result, name, env, monitor, project, the_plan, store, gate_override, log, event):
                    return None
            # Both directions: a rollback's validation compares row counts, indexes and foreign keys
            # with before the run as a migration's does (issue 12 §2 h).
            baseline = validate.take_baseline(monitor, env)

            env_vars = alembic_environment(env, env.dsn, sup.app_name, monitor.info.server_version)
            log.write(f"PGOPTIONS: {env_vars['PGOPTIONS']}")
            sup.step_count = len(the_plan.steps)
            failed = False
            for index, (step, expected_after) in enumerate(zip(the_plan.steps, the_plan.expected_after), 1):
                sup.step, sup.step_index = step, index
                _beat(beat, f"{direction} {step} ({index}/{len(the_plan.steps)})")
                step_result = _run_step(sup, result, env, project, monitor, direction, step, expected_after,
                                        env_vars, on_blocker, backoff_seconds, sleep, log, event)
                result.steps.append(step_result)
                if not step_result.ok:
                    failed = True
                    break
            result.to_revisions = _read_version(project, monitor, log) or result.to_revisions
            if failed:
                result.outcome = "failed"
            else:
                result.outcome = "succeeded"
            if not failed and validate_after:
                sup.report("validating")
                _beat(beat, "validating")
                result.validation = validate.validate(
                    name, env, expected=the_plan.expected_after[-1], project=project,
                    baseline=baseline, touched_tables=result.touched_tables,
                    expected_indexes=expected_indexes if direction == "upgrade" else (),
                    may_drop=result.touched_tables if direction == "downgrade" else ())
                log.write("validation: " + ("passed" if result.validation.passed else
                                            "FAILED: " + "; ".join(f"{c.name}: {c.detail}"
                                                                   for c in result.validation.failed)))
                if not result.validation.passed:
                    result.outcome = "validation failed"
                    result.error = result.error or "validation failed: " + ", ".join(
                        c.name for c in result.validation.failed)
            if result.outcome in ("failed", "validation failed"):
                applied_tables = result.touched_tables
                if sorted(result.to_revisions) != sorted(current):
                    applied_tables = rollback.tables_between(project, env.dsn, current, result.to_revisions) \
                        or result.touched_tables
                result.recommendation = rollback.fit_to_backup(rollback.decide(
                    project=project, start=current, current=result.to_revisions, direction=direction,
                    failure=result.error, validation=result.validation, touched_tables=applied_tables),
                    result.backup if result.backup is not None else restore_from, monitor)
                log.write("recommendation: " + result.recommendation.headline)
            sup.report("done")
    except TargetError as exc:
        if result.outcome not in ("refused",):
            result.outcome = "error" if not result.steps else "failed"
        result.error = result.error or str(exc)
        log.write(f"target error: {exc}")
    finally:
        lock_cm.__exit__(None, None, None)
    return None


def _gate_passes(result: MigrationResult, name: str, env: Environment, monitor: psycopg.Connection,
                 project: AlembicProject, the_plan: Plan, store: Any, override: Any, log: RunLog, event) -> bool:
    """The no-go gate on the run's own monitor connection; a closed one refuses the run, unless
    `override` (a runbook.gate.GateOverride that runbook.ops authorised) lets it through, recorded."""
    from runbook import gate

    checked = gate.check(monitor, name, env, direction=result.direction, revisions=the_plan.revisions,
                         touched_tables=result.touched_tables, project=project, store=store, target=the_plan.target)
    result.gate = checked
    log.write(checked.summary())
    if checked.open:
        return True
    operation = "migrate" if result.direction == "upgrade" else "rollback"
    if override is None:
        _refuse(result, log, checked.summary() + " (wait for it to clear, or have an approver override the gate "
                                                 "with a reason)")
        return False
    if not result.gate_overridden:
        result.gate_overridden = True
        event(f"{operation}.gate_override", "overridden",
              f"{override.actor} let the run through a closed gate ({override.reason}): {checked.summary()}",
              {"actor": override.actor, "reason": override.reason, "gate_reasons": checked.reasons})
    return True


def _refuse(result: MigrationResult, log: RunLog, reason: str) -> None:
    result.outcome = "refused"
    result.error = log.scrub(reason)
    log.write(f"refused: {result.error}")


def _beat(beat, step: str) -> None:
    if beat is not None:
        beat.set_step(step)


def _read_version(project: AlembicProject, monitor: psycopg.Connection, log: RunLog) -> list[str] | None:
    try:
        return project.current(monitor)
    except psycopg.Error as exc:
        log.write(f"cannot read the version table: {one_line(str(exc))}")
        return None


def _touched(project: AlembicProject, env: Environment, current: list[str], the_plan: Plan, direction: str,
             log: RunLog) -> tuple[list[str], list[str]]:
    """Tables (and new indexes) from the offline SQL of the revisions this run applies or undoes."""
    from runbook.validate import indexes_in_sql, tables_in_sql

    try:
        preview = project.sql_preview(env.dsn, current, the_plan.target, direction=direction)
    except RevisionError as exc:
        log.write(f"no SQL preview, so no table list from it: {exc}")
        return [], []
    return tables_in_sql(preview), indexes_in_sql(preview) if direction == "upgrade" else []


def _run_step(sup: _Supervisor, result: MigrationResult, env: Environment, project: AlembicProject,
              monitor: psycopg.Connection, direction: str, step: str, expected_after: list[str],
              env_vars: dict[str, str], on_blocker, backoff_seconds: float, sleep, log: RunLog, event) -> StepResult:
    """One alembic call, retried on lock timeouts; the version table is read after every attempt."""
    attempts_allowed = env.migration.retries + 1
    started = time.monotonic()
    before = _read_version(project, monitor, log) or []
    last: _Attempt | None = None
    for attempt in range(1, attempts_allowed + 1):
        sup.attempt = attempt
        result.attempts += 1
        sup.report("migrating")
        last = sup.run_alembic([*env.alembic, direction, step], env_vars)
        version = _read_version(project, monitor, log)
        if version is None:
            version = before
        if last.returncode == 0 and not last.timed_out:
            if sorted(version) == sorted(expected_after):
                event(f"{'migrate' if direction == 'upgrade' else 'rollback'}.step", "ok",
                      f"{direction} {step}: at {', '.join(version) or 'base'} after {last.seconds:.1f} s"
                      + (f" (attempt {attempt})" if attempt > 1 else ""),
                      {"step": step, "attempt": attempt, "seconds": round(last.seconds, 3)})
                return StepResult(step, True, attempt, time.monotonic() - started, version)
            error = (f"alembic exited 0 but the database is at {', '.join(version) or 'base'}, "
                     f"not {', '.join(expected_after) or 'base'}")
            return _step_failed(sup, result, direction, step, attempt, started, version, error, event)
        if last.timed_out:
            result.timed_out = True
            error = (f"{direction} {step} did not finish within {sup.timeout_seconds:g} s: the migrator's backend "
                     f"was cancelled and the process stopped; the database is at {', '.join(version) or 'base'}")
            return _step_failed(sup, result, direction, step, attempt, started, version, error, event)
        if _is_lock_timeout(last.output):
            retry = attempt < attempts_allowed
            delay = _backoff(attempt, backoff_seconds) if retry else None
            blocker = last.blocker or BlockerReport(
                attempt=attempt, at=datetime.now(timezone.utc), migrator_pid=last.migrator_pid,
                waited_seconds=0.0, lock_mode=None, relation=None, root_pid=None, application=None, user=None,
                state=None, xact_seconds=None, query="")
            blocker = _with_retry(blocker, delay)
            result.blockers.append(blocker)
            moved = sorted(version) != sorted(before)
            log.write(f"lock timeout on attempt {attempt}/{attempts_allowed}; database at "
                      f"{', '.join(version) or 'base'}" + (" (moved: committed revisions stay)" if moved else
                                                          " (unchanged)")
                      + (f"; retrying in {delay:.1f} s" if retry else "; no retries left"))
            event(f"{'migrate' if direction == 'upgrade' else 'rollback'}.blocked", "lock_timeout",
                  _blocker_line(blocker), {"step": step, "attempt": attempt, "root_pid": blocker.root_pid,
                                           "retry_in_seconds": delay})
            if on_blocker is not None:
                try:
                    on_blocker(blocker)
                except Exception as exc:
                    log.write(f"blocker callback failed: {type(exc).__name__}")
            if sorted(version) == sorted(expected_after):    # the timeout hit after the step's last commit
                return StepResult(step, True, attempt, time.monotonic() - started, version)
            if retry:
                sup.report("waiting to retry")
                sleep(delay or 0.0)
                before = version
                continue
            error = (f"lock timeout ({env.migration.lock_timeout}) on every one of {attempts_allowed} attempt(s); "
                     f"the database is at {', '.join(version) or 'base'}")
            return _step_failed(sup, result, direction, step, attempt, started, version, error, event)
        reason = error_line(last.output, env.app_dir) or f"alembic exited {last.returncode}"
        error = log.scrub(one_line(f"{direction} {step} failed: {reason}"))
        return _step_failed(sup, result, direction, step, attempt, started, version, error, event)
    raise AssertionError("unreachable")  # pragma: no cover


def _with_retry(blocker: BlockerReport, delay: float | None) -> BlockerReport:
    from dataclasses import replace

    return replace(blocker, retry_in_seconds=delay)


def _step_failed(sup: _Supervisor, result: MigrationResult, direction: str, step: str, attempt: int, started: float,
                 version: list[str], error: str, event) -> StepResult:
    result.error = error
    sup.log.write(error)
    event(f"{'migrate' if direction == 'upgrade' else 'rollback'}.step", "failed", error,
          {"step": step, "attempt": attempt})
    return StepResult(step, False, attempt, time.monotonic() - started, version, error, result.timed_out)


# ---------------------------------------------------------------------------
# The request side: what an approval request shows, checked before anyone is asked


@dataclass(frozen=True)
class Proposal:
    """What `/migrate run` or `/migrate rollback` asks approvers to approve.

    `refusal` is set (one line) when the request must not be made at all: an irreversible
    downgrade, an unknown or backwards target, nothing to do. Approving pins `current`: the run
    gets it back as `expected_current` and stops if the database moved meanwhile.
    """

    environment: str
    direction: str
    current: list[str]
    target: str
    revisions: list[Any]              # Revision, in run order
    steps: list[str]
    sql_preview: str = ""             # the SQL of the run, offline: upgrade(), or a rollback's downgrade()
    touched_tables: list[str] = field(default_factory=list)
    refusal: str | None = None
    # issue 7: runbook.review.RiskReview of the revisions an upgrade applies (None: a downgrade, review
    # disabled, or nothing to do); `risk_error` when squawk could not run; `promotion` the gate's
    # runbook.promotion.PromotionCheck on an environment with promote_from.
    risk: Any = None
    risk_error: str | None = None
    promotion: Any = None
    # issue 16: the latest rehearsal of this range (runbook.rehearse.Match; set by runbook.ops.propose)
    rehearsal: Any = None


def propose(name: str, env: Environment, *, direction: Direction = "upgrade", target: str | None = None,
            project: AlembicProject | None = None, store: Any = None) -> Proposal:
    """Read the database and the scripts; TargetError when the database cannot be read.

    `store` (the state Store) gives the risk review its acknowledgements and the promotion gate
    its evidence; an environment with promote_from is refused without it."""
    from runbook import promotion, review, rollback
    from runbook.validate import tables_in_sql

    target = target or ("head" if direction == "upgrade" else "-1")
    project = project or project_of(env)
    risk, risk_error = None, None
    with target_of(env).connect("migrate-request") as conn:
        current = project.current(conn)
        try:
            the_plan = plan(project, current, direction, target, env.migration.step_by_step)
        except RevisionError as exc:
            return Proposal(name, direction, current, target, [], [], refusal=str(exc))
        if direction == "upgrade" and the_plan.revisions and env.review.enabled:
            try:
                acks = review.acknowledgements(store, name) if store is not None else []
                risk = review.review(name, env, conn, project=project, revisions=the_plan.revisions,
                                     acknowledgements=acks)
            except review.ReviewError as exc:
                risk_error = str(exc)
    refusal = rollback.irreversible_refusal(the_plan.revisions, name) if direction == "downgrade" else None
    if not the_plan.steps:
        refusal = f"nothing to do: {name} is already at {', '.join(current) or 'base'}"
    gate = None
    if direction == "upgrade" and the_plan.steps and env.promote_from:
        gate = promotion.check(store, name, env, the_plan.target, project)
        refusal = refusal or (None if gate.allowed else gate.reason)
    preview = ""
    if the_plan.steps:
        try:    # a rollback shows the downgrade() SQL of what it undoes (design rule 12)
            preview = project.sql_preview(env.dsn, current, the_plan.target, direction=direction)
        except RevisionError as exc:
            preview = f"-- the {direction} SQL could not be rendered offline: {exc}"
    return Proposal(name, direction, current, the_plan.target, the_plan.revisions, the_plan.steps, preview,
                    tables_in_sql(preview), refusal, risk=risk, risk_error=risk_error, promotion=gate)


# ---------------------------------------------------------------------------
# Convenience and JSON


def upgrade(name: str, env: Environment, target: str = "head", **kwargs: Any) -> MigrationResult:
    return run(name, env, direction="upgrade", target=target, **kwargs)


def downgrade(name: str, env: Environment, target: str = "-1", **kwargs: Any) -> MigrationResult:
    return run(name, env, direction="downgrade", target=target, **kwargs)


def result_to_json(result: MigrationResult) -> dict[str, Any]:
    """The `migrate --json` / `rollback --json` contract, and what the runs table keeps."""
    from runbook import rollback, validate

    def blocker(b: BlockerReport) -> dict[str, Any]:
        return {"attempt": b.attempt, "at": b.at.isoformat(), "migrator_pid": b.migrator_pid,
                "waited_seconds": round(b.waited_seconds, 3), "lock_mode": b.lock_mode, "relation": b.relation,
                "root_pid": b.root_pid, "application": b.application, "user": b.user, "state": b.state,
                "xact_seconds": None if b.xact_seconds is None else round(b.xact_seconds, 3), "query": b.query,
                "prepared_gid": b.prepared_gid, "retry_in_seconds":
                    None if b.retry_in_seconds is None else round(b.retry_in_seconds, 3)}

    return {
        "run_id": result.run_id, "environment": result.environment, "direction": result.direction,
        "outcome": result.outcome, "ok": result.ok, "target": result.target,
        "from": list(result.from_revisions), "to": list(result.to_revisions),
        "planned_steps": list(result.planned_steps),
        "steps": [{"target": s.target, "ok": s.ok, "attempts": s.attempts, "seconds": round(s.seconds, 3),
                   "version_after": list(s.version_after), "error": s.error, "timed_out": s.timed_out}
                  for s in result.steps],
        "attempts": result.attempts, "error": result.error, "log_path": result.log_path,
        "log_tail": result.log_tail, "blockers": [blocker(b) for b in result.blockers],
        "started_at": result.started_at.isoformat(),
        "finished_at": result.finished_at.isoformat() if result.finished_at else None,
        "duration_seconds": round(result.duration_seconds, 3), "timed_out": result.timed_out,
        "touched_tables": list(result.touched_tables),
        "revisions": [{"revision": r.revision, "message": r.message, "reversible": r.reversible}
                      for r in result.revisions],
        "gate": None if result.gate is None else {"open": result.gate.open, "reasons": list(result.gate.reasons),
                                                   "tables": list(result.gate.tables),
                                                   "overridden": result.gate_overridden},
        "validation": validate.report_to_json(result.validation) if result.validation is not None else None,
        "recommendation": rollback.recommendation_to_json(result.recommendation)
        if result.recommendation is not None else None,
    }


__all__ = ["BlockerReport", "alembic_environment", "Supervisor", "MigrationResult", "Plan", "Progress", "Proposal", "RunLog", "StepResult",
           "default_log_dir", "downgrade", "error_line", "migrator_application_name", "plan", "propose",
           "result_to_json", "run", "upgrade"]
