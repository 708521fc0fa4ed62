"""An incident gathered from the bot's own records: which run it is about, its window, and the
steps, approvals, backups, errors, log lines and escalations in it."""
from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable, Sequence

from sqlalchemy import select

from runbook.incident.model import BackupFacts, Escalated, Incident, Scrubber, Step, TimelineEntry, UnknownRun
from runbook.state.models import BackupRow, EventRow, as_utc, utcnow
from runbook.state.runs import Run, RunStore
from runbook.target import redact


LOOKBACK = timedelta(hours=24)
# Events a summary leaves out: reading things changes nothing.
QUIET_ACTIONS = ("help", "status", "activity", "backups", "watch", "incident")
MAX_EVENTS = 500


# ---------------------------------------------------------------------------
# Choosing the run


def latest_run(store, environment: str | None = None) -> Run | None:
    found = RunStore(store).list(environment=environment, limit=1)
    return found[0] if found else None


def subject_run(store, environment: str, *, now: datetime | None = None) -> Run | None:
    """The run an escalation is about: the latest one, unless it succeeded over a day ago."""
    run = latest_run(store, environment)
    now = now or utcnow()
    if run is None or (run.state == "succeeded" and (run.finished_at or run.started_at) < now - LOOKBACK):
        return None
    return run


def _anchor(store, run: Run) -> Run:
    """A rollback belongs to the migrate run just before it (within a day): that run's incident. A
    restore too, when that run failed or was interrupted; after a migration that went well (or none),
    a restore is its own incident."""
    if run.kind not in ("rollback", "restore"):
        return run
    for earlier in RunStore(store).list(environment=run.environment, limit=20):
        if earlier.kind == "migrate" and earlier.started_at < run.started_at:
            recent = earlier.started_at >= run.started_at - LOOKBACK
            recovers = run.kind == "rollback" or earlier.state in ("failed", "interrupted")
            return earlier if recent and recovers else run
    return run


def _window(store, run: Run | None, environment: str, now: datetime) -> tuple[datetime, datetime | None]:
    if run is None:
        return now - LOOKBACK, None
    runs = RunStore(store).list(environment=environment, limit=100)
    before = [r for r in runs if r.started_at < run.started_at]
    since = run.started_at - LOOKBACK
    if before:
        since = max(since, before[0].finished_at or before[0].started_at)
    later = [r for r in runs if r.kind == "migrate" and r.started_at > run.started_at]
    until = min(r.started_at for r in later) if later else None
    return since, until


# ---------------------------------------------------------------------------
# Gathering


def gather(store, *, environment: str | None = None, run_id: str | None = None, run: Run | None = None,
           log_lines: int = 40, secrets: Sequence[str] = (), now: datetime | None = None) -> Incident:
    """The incident of `run` (or `run_id`; or the environment's latest run; or no run at all).

    UnknownRun when `run_id` names no run. `secrets` are masked in every text it reads (the log's
    lines most of all); everything in the state database is redacted already when written."""
    from runbook.state.approvals import ApprovalStore

    now = now or utcnow()
    runs = RunStore(store)
    if run is None and run_id is not None:
        run = runs.get(run_id)
        if run is None:
            raise UnknownRun(f"unknown run id '{redact(str(run_id)[:40], *secrets)}': the ids are in the "
                             "migrate/rollback/restore output (`--json`: run_id) and in the Slack thread")
    elif run is None and environment is not None:
        run = latest_run(store, environment)
    if run is not None:
        run = _anchor(store, run)
        environment = run.environment
    if environment is None:
        raise UnknownRun("no run recorded yet: name an environment")
    since, until = _window(store, run, environment, now)
    events = _events(store, environment, since, until)
    approvals = ApprovalStore(store)
    scrub = Scrubber(secrets)
    incident = Incident(environment=environment, generated_at=now, since=since, until=until, run=run)
    incident.timeline = [TimelineEntry(e.at, e.actor, e.action, e.outcome, scrub(e.summary)) for e in events]
    incident.escalations = _escalations(events, scrub)
    precheck = next((e for e in reversed(events) if e.action == "precheck"
                     and (run is None or e.at <= run.started_at)), None)
    if precheck is not None:
        incident.steps.append(Step("precheck", precheck.at, precheck.outcome, scrub(precheck.summary),
                                   approval="no approval needed", actor=precheck.actor))
    backups = _backups(store, environment, since, until)
    if run is not None:
        _run_facts(incident, run, events, approvals, scrub)
        incident.backup = _primary_backup(store, run, backups)
        _run_steps(incident, run, events, approvals, scrub)
        _log(incident, run, log_lines, scrub)
        rollbacks = [r for r in runs.list(environment=environment, limit=100)
                     if r.kind == "rollback" and r.id != run.id and r.started_at >= run.started_at
                     and (until is None or r.started_at < until)]
        for rollback in sorted(rollbacks, key=lambda r: r.started_at):
            result = rollback.outcome
            incident.steps.append(Step(
                "rollback", rollback.started_at, rollback.state,
                scrub(f"run {rollback.id}: {rollback.from_revision or 'base'} -> {rollback.target_revision or '?'}"
                      + (f": {result.error}" if result.error else "")),
                approved_by=tuple(_approvers(rollback, events, approvals)), approval=_how(rollback, approvals),
                actor=rollback.actor))
            if result.error:
                incident.errors.append(scrub(f"rollback {rollback.id}: {result.error}"))
            elif rollback.state == "interrupted" and rollback.summary:     # where it stopped, and why
                incident.errors.append(scrub(f"rollback {rollback.id}: {rollback.summary}"))
    elif backups:
        newest = max(backups, key=lambda b: b.id)
        incident.backup = _facts(newest, "the newest backup in the window")
    run_approvers = tuple(_approvers(run, events, approvals)) if run is not None else ()
    for item in backups:
        with_run = item.reason == "migrate" and run_approvers
        incident.steps.append(Step(
            "safety backup" if item.reason == "safety" else "backup", item.finished_at or item.started_at,
            item.status, scrub(f"#{item.id} {item.name} ({item.kind}), level {item.level}"
                               + (f": {item.error}" if item.error else "")),
            approved_by=run_approvers if with_run else (),
            approval="with the run" if with_run else ("with the restore" if item.reason == "safety"
                                                      else "no approval needed"),
            actor=item.actor))
    for request in sorted(approvals.list(environment=environment, limit=100), key=lambda r: r.created_at):
        if request.kind != "restore" or request.created_at < since or (until and request.created_at >= until):
            continue
        if run is not None and run.kind == "restore" and request.id == run.approval_id:
            continue                    # the incident's own restore: its run's step and error say it
        backup_id = request.params.get("backup_id")
        incident.steps.append(Step(
            "restore", request.updated_at, request.state,
            scrub(f"backup #{backup_id} ({request.params.get('mode', 'full')}): {request.result_summary or request.state}"),
            approved_by=tuple(request.approvers), approval=f"{len(request.approvers)} of {request.required} required",
            actor=request.requester))
        if request.state == "failed" and request.result_summary:
            incident.errors.append(scrub(f"restore of backup #{backup_id}: {request.result_summary}"))
    for event in events:
        if event.action == "validate" and (run is None or event.at > run.started_at):
            incident.steps.append(Step("validation", event.at, event.outcome, scrub(event.summary),
                                       approval="no approval needed", actor=event.actor))
    incident.steps.sort(key=lambda s: s.at or now)
    return incident


@dataclass(frozen=True)
class _Event:
    at: datetime
    actor: str
    action: str
    outcome: str
    summary: str
    details: dict[str, Any]
    run_id: str | None


def _events(store, environment: str, since: datetime, until: datetime | None) -> list[_Event]:
    query = (select(EventRow).where(EventRow.environment == environment).where(EventRow.at >= _stored(store, since))
             .where(EventRow.action.not_in(QUIET_ACTIONS)).order_by(EventRow.id).limit(MAX_EVENTS))
    if until is not None:
        query = query.where(EventRow.at < _stored(store, until))
    with store.session() as session:
        return [_Event(as_utc(r.at), r.actor, r.action, r.outcome, r.summary or "", dict(r.details or {}), r.run_id)
                for r in session.scalars(query)]


def _stored(store, value: datetime) -> datetime:
    """A bound as the database compares it: SQLite keeps naive UTC."""
    return value.astimezone(timezone.utc).replace(tzinfo=None) if store.engine.dialect.name == "sqlite" else value


def _escalations(events: list[_Event], scrub: Scrubber) -> list[Escalated]:
    """Each escalate event, with the GitHub issue an escalate.github event after it reported."""
    found: list[Escalated] = []
    for event in events:
        d = event.details
        if event.action == "escalate" and event.outcome.startswith("level"):
            level = d.get("level")
            found.append(Escalated(at=event.at, level=level if isinstance(level, int) else None,
                                   level_name=scrub(d.get("level_name") or ""),
                                   notified=tuple(str(n) for n in d.get("notified") or ()), actor=event.actor,
                                   reason=scrub(d.get("reason") or ""), automatic=bool(d.get("automatic"))))
        elif event.action == "escalate.github" and event.outcome == "ok" and found and d.get("github_url"):
            found[-1] = replace(found[-1], github_url=scrub(d["github_url"]))
    return found


def _approvers(run: Run, events: Iterable[_Event], approvals) -> list[str]:
    """Who approved a run: its approval request's approvers, or the CLI's --yes recorded for it."""
    if run.approval_id:
        request = approvals.get(run.approval_id)
        if request is not None and request.approvers:
            return list(request.approvers)
    return [e.actor for e in events if e.run_id == run.id and e.action == f"{run.kind}.approve"
            and e.outcome == "yes"]


def _how(run: Run, approvals) -> str:
    if run.approval_id:
        request = approvals.get(run.approval_id)
        if request is not None:
            return f"request {request.id[:8]}: {len(request.approvers)} of {request.required} required"
    return "--yes on the command line" if run.actor.startswith("cli:") else ""


def _run_facts(incident: Incident, run: Run, events: list[_Event], approvals, scrub: Scrubber) -> None:
    result = run.outcome
    incident.from_revisions = result.from_revisions or [r.strip() for r in run.from_revision.split(",") if r.strip()]
    incident.target = result.target or run.target_revision or None
    incident.reached = list(result.to_revisions or [])
    incident.outcome = result.outcome or run.state
    incident.validation = result.validation
    incident.recommendation = result.recommendation
    if result.error:
        incident.errors.append(scrub(result.error))
    elif run.state in ("failed", "interrupted") and run.summary:
        incident.errors.append(scrub(run.summary))
    if incident.validation:
        for check in incident.validation.get("checks") or []:
            if check.get("status") == "fail":
                incident.errors.append(scrub(f"validation {check.get('name')}: {check.get('detail')}"))


def _run_steps(incident: Incident, run: Run, events: list[_Event], approvals, scrub: Scrubber) -> None:
    result = run.outcome
    approved_by = tuple(_approvers(run, events, approvals))
    how = _how(run, approvals)
    mine = [e for e in events if e.run_id == run.id]
    started = next((e for e in mine if e.action == f"{run.kind}.start"), None)
    frm = ", ".join(incident.from_revisions) or "base"
    reached = ", ".join(incident.reached) or "base"
    if run.kind == "restore":
        tables = run.detail("tables") or []
        what = (f"{len(tables)} table(s) ({', '.join(map(str, tables[:5]))})" if run.detail("mode") == "tables"
                else "the whole database")
        detail = (f"run {run.id}: {what} from backup #{run.detail('backup_id', '?')}; revision {frm} before"
                  + (f", {reached} after" if result.to_revisions is not None else "")
                  + (f"; safety backup #{result.safety_backup_id}" if result.safety_backup_id else ""))
    else:
        detail = (f"run {run.id}: {frm} -> {incident.target or '?'}; reached {reached}; "
                  f"{result.attempts} attempt(s)")
    incident.steps.append(Step(
        run.kind, started.at if started else run.started_at, incident.outcome or run.state, scrub(detail),
        approved_by=approved_by, approval=how, actor=run.actor))
    for event in mine:
        if event.action == f"{run.kind}.step":
            incident.steps.append(Step(f"{run.kind} step", event.at, event.outcome, scrub(event.summary),
                                       approved_by=approved_by, approval="with the run", actor=run.actor))
        elif event.action == f"{run.kind}.blocked":
            retry = event.details.get("retry_in_seconds")
            incident.steps.append(Step(
                "retry" if retry is not None else "lock timeout", event.at, event.outcome,
                scrub(event.summary + (f"; retried after {retry:.1f} s" if isinstance(retry, (int, float))
                                       else "; no retries left")),
                approved_by=approved_by, approval="with the run", actor=run.actor))
    validation = incident.validation
    if validation:
        failed = [c for c in validation.get("checks") or [] if c.get("status") == "fail"]
        detail = ("passed" if validation.get("passed") else
                  "failed: " + "; ".join(f"{c.get('name')}: {c.get('detail')}" for c in failed)
                  if failed else (validation.get("error") or "did not run"))
        incident.steps.append(Step("validation", run.finished_at, "pass" if validation.get("passed") else "fail",
                                   scrub(detail), approval="no approval needed", actor=run.actor))
    if run.state == "interrupted":
        incident.steps.append(Step(run.kind, run.finished_at, "interrupted", scrub(run.summary), approval=how,
                                   approved_by=approved_by, actor=run.actor))


def _log(incident: Incident, run: Run, count: int, scrub: Scrubber) -> None:
    incident.log_path = run.log_path
    if not run.log_path:
        incident.log_note = "none (the run kept no log file)"
        return
    if count <= 0:
        incident.log_note = "none (escalation.incident.log_lines is 0)"
        return
    try:
        with open(run.log_path, encoding="utf-8", errors="replace") as handle:
            tail = [line.rstrip("\n") for line in deque(handle, maxlen=count * 4)]
    except OSError as exc:
        incident.log_note = f"none (the log file cannot be read: {exc.strerror or type(exc).__name__})"
        return
    relevant = relevant_lines(tail)
    incident.log_lines = [scrub(line) for line in relevant[-count:]]
    incident.log_dropped = len(tail) != len(relevant)
    if not incident.log_lines:
        incident.log_note = "none (the log file is empty)"


_LOG_MESSAGE = re.compile(r"^\S+ \S+ \[[a-z]+\] ?(?P<message>.*)$")
_LIBRARY_FRAME = re.compile(r'^\s+File "(?P<path>[^"]+)", line \d+')
_CARETS = re.compile(r"^\s*[\^~]+\s*$")


def relevant_lines(lines: Sequence[str]) -> list[str]:
    """A run log's lines without the noise of a Python traceback inside installed libraries: their
    frames (`File ".../site-packages/..."` and the source line under it) and the ^^^ markers. The
    app's own frames, the exception, the SQL and the bot's lines stay."""
    kept: list[str] = []
    skipping_source = False
    for line in lines:
        match = _LOG_MESSAGE.match(line)
        message = match.group("message") if match else line
        frame = _LIBRARY_FRAME.match(message)
        if frame is not None:
            skipping_source = "site-packages" in frame.group("path") or frame.group("path").startswith("<")
            if skipping_source:
                continue
        elif skipping_source and message.startswith("    "):
            continue
        else:
            skipping_source = False
        if _CARETS.match(message):
            continue
        kept.append(line)
    return kept


def _backups(store, environment: str, since: datetime, until: datetime | None) -> list[Any]:
    from runbook.backup import Backup

    query = (select(BackupRow).where(BackupRow.environment == environment)
             .where(BackupRow.started_at >= _stored(store, since)).order_by(BackupRow.id))
    if until is not None:
        query = query.where(BackupRow.started_at < _stored(store, until))
    with store.session() as session:
        return [Backup.of(row) for row in session.scalars(query)]


def _facts(item: Any, relation: str) -> BackupFacts:
    return BackupFacts(id=item.id, name=item.name, kind=item.kind, reason=item.reason, status=item.status,
                       location=item.location, at=item.finished_at or item.started_at, size_bytes=item.size_bytes,
                       sha256=item.sha256, level=item.level, revision=item.revision, relation=relation)


def _primary_backup(store, run: Run, in_window: list[Any]) -> BackupFacts | None:
    """The backup this run took (reason migrate, under its lock), else the newest verified full
    backup from before the run: the one a restore would use. A restore's: the backup it restores."""
    from runbook.backup import Backup

    if run.kind == "restore" and run.detail("backup_id") is not None:
        with store.session() as session:
            row = session.get(BackupRow, run.detail("backup_id"))
            if row is not None:
                return _facts(Backup.of(row), "the backup this restore restores")
    end = run.finished_at or utcnow()
    taken = [b for b in in_window if b.reason == "migrate" and run.started_at <= b.started_at <= end]
    if taken:
        return _facts(taken[-1], "taken by this run, under its lock")
    query = (select(BackupRow).where(BackupRow.environment == run.environment, BackupRow.status == "verified",
                                     BackupRow.kind == "full")
             .where(BackupRow.started_at < _stored(store, run.started_at)).order_by(BackupRow.id.desc()).limit(1))
    with store.session() as session:
        row = session.scalars(query).first()
        if row is None:
            return None
        return _facts(Backup.of(row), "the newest verified full backup before the run")
