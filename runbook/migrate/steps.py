"""One step of a run: one alembic call, retried on lock timeouts with exponential backoff and
jitter, the version table read after every attempt to know, not assume, where the database is."""
from __future__ import annotations

import random
import time
from dataclasses import replace
from datetime import datetime, timezone
from typing import Callable

import psycopg

from runbook.migrate.alembic_output import error_line, is_lock_timeout
from runbook.migrate.log import RunLog
from runbook.migrate.results import BlockerReport, MigrationResult, StepResult, blocker_line
from runbook.migrate.supervisor import Attempt, Supervisor
from runbook.revisions import AlembicProject, one_line

BACKOFF_CAP_SECONDS = 60.0


def _backoff(attempt: int, base: float) -> float:
    """Exponential backoff with jitter: between half and all of base * 2^(attempt-1), capped."""
    ceiling = min(BACKOFF_CAP_SECONDS, base * (2 ** (attempt - 1)))
    return random.uniform(ceiling / 2, ceiling) if ceiling > 0 else 0.0


def read_version(project: AlembicProject, monitor: psycopg.Connection, log: RunLog) -> list[str] | None:
    try:
        return project.current(monitor)
    except psycopg.Error as exc:
        log.write(f"cannot read the version table: {one_line(str(exc))}")
        return None


def run_step(sup: Supervisor, *, result: MigrationResult, project: AlembicProject, direction: str, step: str,
             expected_after: list[str], env_vars: dict[str, str], event: Callable[..., None],
             backoff_seconds: float, sleep: Callable[[float], None] = time.sleep,
             on_blocker: Callable[[BlockerReport], None] | None = None) -> StepResult:
    """One alembic call (`alembic <direction> <step>`), retried on lock timeouts; the version table is read
    after every attempt. The environment, the monitor connection and the log are the supervisor's;
    `result` (the run's) counts the attempts and keeps the blockers; `event(action, outcome, summary,
    details)` records the step's audit events."""
    env, monitor, log = sup.env, sup.monitor, sup.log
    attempts_allowed = env.migration.retries + 1
    started = time.monotonic()
    before = read_version(project, monitor, log) or []
    last: Attempt | None = None
    for attempt in range(1, attempts_allowed + 1):
        sup.attempt = attempt
        result.attempts += 1
        sup.report("migrating")
        last = sup.run_alembic([*env.alembic, direction, step], env_vars)
        version = read_version(project, monitor, log)
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
        if is_lock_timeout(last.output):
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
                  blocker_line(blocker), {"step": step, "attempt": attempt, "root_pid": blocker.root_pid,
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
    return replace(blocker, retry_in_seconds=delay)


def _step_failed(sup: Supervisor, result: MigrationResult, direction: str, step: str, attempt: int, started: float,
                 version: list[str], error: str, event) -> StepResult:
    result.error = error
    sup.log.write(error)
    event(f"{'migrate' if direction == 'upgrade' else 'rollback'}.step", "failed", error,
          {"step": step, "attempt": attempt})
    return StepResult(step, False, attempt, time.monotonic() - started, version, error, result.timed_out)

