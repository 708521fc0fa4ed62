"""The run (§3): one upgrade or downgrade under the operation lock (design rule 13) from start to end.

    lock -> no pg_dump connected -> the database still at the approved revision -> plan
         -> no-go gate -> [before(held): the backup] -> gate again if the backup took time
         -> baseline -> alembic, step by step or at once (runbook.migrate.steps)
         -> version verified after every attempt -> validation (§5) -> on failure, §6.5

`run` takes what callers pass as keywords and groups it: what is asked (RunRequest), what the
caller gives to be called (RunHooks), the timing knobs (RunTiming), and where the run writes
(RunTrail: its log, its events, its heartbeat). Refusals are results too (outcome "refused").
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import psycopg

from runbook import backup, guard
from runbook.config import Environment
from runbook.migrate.environment import alembic_environment
from runbook.migrate.log import RunLog, default_log_dir
from runbook.migrate.planning import Plan, plan
from runbook.migrate.results import BlockerReport, Direction, MigrationResult, Progress, result_to_json
from runbook.migrate.steps import read_version, run_step
from runbook.migrate.supervisor import Supervisor
from runbook.precheck import project_of, target_of
from runbook.revisions import AlembicProject, RevisionError, one_line
from runbook.target import Target, TargetError, password_of, redact

# The gate is checked again when the backup before the run took longer than this.
GATE_RECHECK_AFTER_SECONDS = 1.0


@dataclass(frozen=True)
class RunRequest:
    """What is asked: move environment `name` to `target`, from the revision(s) it was approved at."""

    name: str
    env: Environment
    direction: str
    target: str
    expected_current: Sequence[str] | None
    project: AlembicProject
    store: Any = None                 # the state Store: the gate's acknowledgements and evidence
    validate_after: bool = True
    restore_from: Any = None          # the verified backup §6.5 would use when `before` takes none
    gate_override: Any = None         # runbook.gate.GateOverride, authorised by runbook.ops


@dataclass(frozen=True)
class RunHooks:
    """What the caller gives the run to call: the backup under its lock, and its live reports."""

    before: Callable[[guard.Held, list[str]], Any] | None = None
    on_progress: Callable[[Progress], None] | None = None
    on_blocker: Callable[[BlockerReport], None] | None = None


@dataclass(frozen=True)
class RunTiming:
    """How long the run waits, retries and reports (the environment's defaults already applied)."""

    progress_every: float
    lock_wait_seconds: float          # for the operation lock
    backoff_seconds: float            # the base of the backoff between lock-timeout retries
    timeout_seconds: float            # each alembic subprocess
    sleep: Callable[[float], None] = time.sleep


@dataclass(frozen=True)
class RunTrail:
    """Where the run writes as it goes: its log, its audit events, its runs row's heartbeat."""

    log: RunLog
    event: Callable[..., None]
    beat: Any                         # runbook.state.runs.Heartbeat, None without a store
    started: float                    # time.monotonic() when the run began


def run(name: str, env: Environment, *, direction: Direction = "upgrade", target: str | None = None,
        expected_current: Sequence[str] | None = None, actor: str = "runbook-bot", store: Any = None,
        approval_id: str | None = None, run_id: str | None = None,
        before: Callable[[guard.Held, list[str]], Any] | None = None, validate_after: bool = True,
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
        request = RunRequest(name, env, direction, target, expected_current, project, store=store,
                             validate_after=validate_after, restore_from=restore_from, gate_override=gate_override)
        hooks = RunHooks(before=before, on_progress=on_progress, on_blocker=on_blocker)
        timing = RunTiming(progress_every=progress_every, lock_wait_seconds=lock_wait_seconds,
                           backoff_seconds=env.migration.retry_backoff_seconds if backoff_seconds is None
                           else backoff_seconds,
                           timeout_seconds=env.migration.timeout_seconds if timeout_seconds is None
                           else timeout_seconds, sleep=sleep)
        _run_locked(result, request, tgt, hooks, timing, RunTrail(log, event, beat, clock))
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


def _run_locked(result: MigrationResult, request: RunRequest, tgt: Target, hooks: RunHooks, timing: RunTiming,
                trail: RunTrail) -> None:
    from runbook import rollback, validate

    name, env, direction, project = request.name, request.env, request.direction, request.project
    expected_current, store, gate_override = request.expected_current, request.store, request.gate_override
    log, event, beat = trail.log, trail.event, trail.beat
    operation = "migrate" if direction == "upgrade" else "rollback"
    try:
        lock_cm = guard.exclusive(tgt, name, operation, wait_seconds=timing.lock_wait_seconds)
        held = lock_cm.__enter__()
    except guard.OperationRunning as exc:
        return _refuse(result, log, str(exc))
    except TargetError as exc:
        result.outcome, result.error = "error", str(exc)
        log.write(f"cannot take the operation lock: {exc}")
        return None
    try:
        with tgt.connect("migrate-monitor") as monitor:
            sup = Supervisor(name=name, env=env, run_id=result.run_id, direction=direction, monitor=monitor, log=log,
                             timeout_seconds=timing.timeout_seconds, started=trail.started,
                             on_progress=hooks.on_progress, progress_every=timing.progress_every)
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
                the_plan = plan(project, current, direction, request.target, env.migration.step_by_step)
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
            if hooks.before is not None:
                sup.report("backup")
                _beat(beat, "backup")
                backup_started = time.monotonic()
                try:
                    result.backup = hooks.before(held, list(current))
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
                step_result = run_step(sup, result=result, project=project, direction=direction, step=step,
                                       expected_after=expected_after, env_vars=env_vars, event=event,
                                       backoff_seconds=timing.backoff_seconds, sleep=timing.sleep,
                                       on_blocker=hooks.on_blocker)
                result.steps.append(step_result)
                if not step_result.ok:
                    failed = True
                    break
            after = read_version(project, monitor, log)
            if after is not None:           # the next fresh precheck starts its render from here (runbook.prerender)
                project.remember_current(env.dsn, after)
            result.to_revisions = after or result.to_revisions
            if failed:
                result.outcome = "failed"
            else:
                result.outcome = "succeeded"
            if not failed and request.validate_after:
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
                    result.backup if result.backup is not None else request.restore_from, monitor)
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


def upgrade(name: str, env: Environment, target: str = "head", **kwargs: Any) -> MigrationResult:
    return run(name, env, direction="upgrade", target=target, **kwargs)


def downgrade(name: str, env: Environment, target: str = "-1", **kwargs: Any) -> MigrationResult:
    return run(name, env, direction="downgrade", target=target, **kwargs)

