"""Supervised runs (migrate, rollback, restore) in the state database: a row with a heartbeat.

The process doing the run beats every few seconds. Whoever starts next (the bot's Runtime,
any CLI command, another replica) reaps runs whose process is gone: on the same host a dead
pid is enough; from anywhere, a heartbeat older than `stale_after_seconds`. A reaped run is
marked `interrupted` and an event says so; it is never resumed on its own (the database may
be anywhere between two revisions: a human looks first).

Every state change is a conditional UPDATE on `state = 'running'`, so a late heartbeat of a
run already reaped, or two replicas reaping at once, change nothing twice. What follows an
interruption (its approval request closed, its incident summary posted) is done once per run too:
the request by a conditional UPDATE of its own, the summary by `claim_follow_up`.
"""
from __future__ import annotations

import os
import socket
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from runbook.state.approvals import EXECUTING
from runbook.state.models import ApprovalRow, JobClaimRow, RunRow, as_utc, utcnow
from runbook.state.records import RUNNING
from runbook.state.store import Store

SUCCEEDED, FAILED, REFUSED, INTERRUPTED = "succeeded", "failed", "refused", "interrupted"
FINAL_STATES = (SUCCEEDED, FAILED, REFUSED, INTERRUPTED)
# A rehearsal (runbook/rehearse.py) is a run on a restored copy: it never touches the target, so
# whatever reads "what happened to the environment" (protection, status, incidents, promotion) must not
# see it; RunStore.list leaves it out unless asked for by kind.
REHEARSE = "rehearse"

HEARTBEAT_SECONDS = 5.0
# Six missed beats: long enough for a GC pause or a slow state database, short enough that a
# replica notices a dead one within a minute.
STALE_AFTER_SECONDS = 30.0
# An interrupted run's summary reads "interrupted during '<step>': <why>" + NOT_RESUMED (a restore's:
# + NOT_RESUMED_RESTORE: it is one transaction, so there is nothing to roll back by hand).
NOT_RESUMED = (". Not resumed: check the database's revision (runbook-bot status) and decide (validate, "
               "rollback or re-run)")
NOT_RESUMED_RESTORE = (". Not resumed: a restore is one transaction, so unless it reached its COMMIT the database "
                       "is as it was; check it (runbook-bot status) and restore again if needed")
# A follow-up's claim is one job_claims row per (follow-up, run): the slot is always this one.
_ONCE = datetime(1970, 1, 1, tzinfo=timezone.utc)


@dataclass(frozen=True)
class RunResult:
    """What a finished run recorded in runs.result, typed: migrate and rollback record
    runbook.migrate.result_to_json, a restore runbook.backup.restore's facts. Every reader goes
    through this, so a missing or malformed key reads as "not recorded", never as a KeyError."""

    outcome: str | None = None
    error: str | None = None
    from_revisions: list[str] | None = None     # None: not recorded
    to_revisions: list[str] | None = None
    target: str | None = None
    attempts: int = 0
    validation: dict[str, Any] | None = None    # runbook.validate.report_to_json
    recommendation: dict[str, Any] | None = None
    backup_id: int | None = None                # a restore's backup
    safety_backup_id: int | None = None
    duration_seconds: float | None = None

    @staticmethod
    def _revisions(value: Any) -> list[str] | None:
        return [str(r) for r in value] if isinstance(value, (list, tuple)) else None

    @classmethod
    def of(cls, raw: dict[str, Any] | None) -> "RunResult":
        raw = raw if isinstance(raw, dict) else {}
        target = raw.get("target")
        if isinstance(target, (list, tuple)):      # restore runs recorded before issue 12 kept the backup's list
            target = ", ".join(map(str, target))
        validation = raw.get("validation")
        recommendation = raw.get("recommendation")
        return cls(outcome=raw.get("outcome"), error=raw.get("error") or None,
                   from_revisions=cls._revisions(raw.get("from")), to_revisions=cls._revisions(raw.get("to")),
                   target=str(target) if target else None, attempts=int(raw.get("attempts") or 0),
                   validation=validation if isinstance(validation, dict) else None,
                   recommendation=recommendation if isinstance(recommendation, dict) else None,
                   backup_id=raw.get("backup_id"), safety_backup_id=raw.get("safety_backup_id"),
                   duration_seconds=float(raw["duration_seconds"])
                   if isinstance(raw.get("duration_seconds"), (int, float)) else None)

    @property
    def validation_passed(self) -> bool | None:
        return None if self.validation is None else self.validation.get("passed")


@dataclass(frozen=True)
class Run:
    id: str
    kind: str
    environment: str
    actor: str
    approval_id: str | None
    state: str
    from_revision: str
    target_revision: str
    step: str
    host: str
    pid: int
    started_at: datetime
    heartbeat_at: datetime
    finished_at: datetime | None
    summary: str
    log_path: str | None
    result: dict[str, Any] | None
    details: dict[str, Any] | None = None      # RunRow.details: a restore's backup, the live monitor's message

    @classmethod
    def of(cls, row: RunRow) -> "Run":
        return cls(row.id, row.kind, row.environment, row.actor, row.approval_id, row.state,
                   row.from_revision, row.target_revision, row.step, row.host, row.pid,
                   as_utc(row.started_at), as_utc(row.heartbeat_at), as_utc(row.finished_at),
                   row.summary or "", row.log_path, dict(row.result) if row.result is not None else None,
                   dict(row.details) if row.details is not None else None)

    def detail(self, key: str, default: Any = None) -> Any:
        return (self.details or {}).get(key, default)

    @property
    def outcome(self) -> RunResult:
        """runs.result, typed."""
        return RunResult.of(self.result)


def new_run_id() -> str:
    """Opaque, short enough for an application_name (63 bytes) with a prefix."""
    return uuid.uuid4().hex[:16]


def process_alive(pid: int) -> bool:
    """Whether `pid` is a live process on this host (a zombie counts as dead)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            # "pid (comm) S ...": the state letter follows the last ')'
            return stat.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


class RunStore:
    """Run rows on top of the bot's Store (same engine, short sessions, thread-safe)."""

    def __init__(self, store: Store, *, host: str | None = None):
        self.store = store
        self.host = host or socket.gethostname()

    def start(self, *, kind: str, environment: str, actor: str, from_revision: str = "",
              target_revision: str = "", approval_id: str | None = None, run_id: str | None = None,
              details: dict[str, Any] | None = None) -> Run:
        now = utcnow()
        row = RunRow(id=run_id or new_run_id(), kind=kind, environment=environment, actor=actor,
                     approval_id=approval_id, state=RUNNING, from_revision=from_revision[:200],
                     target_revision=target_revision[:200], step="starting", host=self.host[:255],
                     pid=os.getpid(), started_at=now, heartbeat_at=now, summary="", details=details)
        with self.store.session() as session, session.begin():
            session.add(row)
        return Run.of(row)

    def get(self, run_id: str) -> Run | None:
        with self.store.session() as session:
            row = session.get(RunRow, run_id)
            return Run.of(row) if row else None

    def list(self, *, environment: str | None = None, states: tuple[str, ...] | None = None,
             limit: int = 20, kinds: tuple[str, ...] | None = None) -> list[Run]:
        """Newest first. `kinds`: only these; default: every kind that acts on the target (no rehearsals)."""
        query = select(RunRow).order_by(RunRow.started_at.desc()).limit(limit)
        if kinds is not None:
            query = query.where(RunRow.kind.in_(list(kinds)))
        else:
            query = query.where(RunRow.kind != REHEARSE)
        if environment is not None:
            query = query.where(RunRow.environment == environment)
        if states is not None:
            query = query.where(RunRow.state.in_(list(states)))
        with self.store.session() as session:
            return [Run.of(row) for row in session.scalars(query)]

    def heartbeat(self, run_id: str, *, step: str | None = None) -> bool:
        """False when the run is no longer running (e.g. another replica reaped it)."""
        values: dict[str, Any] = {"heartbeat_at": utcnow()}
        if step is not None:
            values["step"] = step[:200]
        with self.store.session() as session, session.begin():
            return session.execute(update(RunRow).where(RunRow.id == run_id).where(RunRow.state == RUNNING)
                                   .values(**values)).rowcount == 1

    def finish(self, run_id: str, state: str, *, summary: str = "", result: dict[str, Any] | None = None,
               log_path: str | None = None) -> bool:
        if state not in FINAL_STATES:
            raise ValueError(f"not a final run state: {state}")
        values: dict[str, Any] = {"state": state, "finished_at": utcnow(), "heartbeat_at": utcnow(),
                                  "summary": summary[:4000]}
        if result is not None:
            values["result"] = result
        if log_path is not None:
            values["log_path"] = log_path
        with self.store.session() as session, session.begin():
            return session.execute(update(RunRow).where(RunRow.id == run_id).where(RunRow.state == RUNNING)
                                   .values(**values)).rowcount == 1

    def set_revisions(self, run_id: str, from_revision: str, target_revision: str) -> None:
        """Once the run has read the database under its lock: where it starts and where it goes."""
        with self.store.session() as session, session.begin():
            session.execute(update(RunRow).where(RunRow.id == run_id)
                            .values(from_revision=from_revision[:200], target_revision=target_revision[:200]))

    def set_log_path(self, run_id: str, log_path: str) -> None:
        with self.store.session() as session, session.begin():
            session.execute(update(RunRow).where(RunRow.id == run_id).values(log_path=log_path))

    def set_details(self, run_id: str, **values: Any) -> bool:
        """Merge `values` into the run's details (whatever its state: a follow-up reads them after an
        interruption). Only the run's own process writes them, so read-merge-write is enough."""
        with self.store.session() as session, session.begin():
            row = session.get(RunRow, run_id)
            if row is None:
                return False
            row.details = {**(row.details or {}), **values}
        return True

    def monitors_behind(self, *, settled_before: datetime, limit: int = 50) -> list[Run]:
        """Finished runs whose live monitor message (details["monitor"]) last showed another state than
        the run's own ("rendered": what the last update that reached Slack showed): its final update was
        lost (a Slack outage). Finished before `settled_before` (the run's own thread may still be
        writing its last word) and since a day before it. A monitor without "rendered" predates the
        mark and is left as it is."""
        query = (select(RunRow).where(RunRow.state != RUNNING).where(RunRow.details.is_not(None))
                 .where(RunRow.finished_at <= self._stored(settled_before))
                 .where(RunRow.finished_at > self._stored(settled_before - timedelta(days=1)))
                 .order_by(RunRow.finished_at).limit(limit * 4))
        with self.store.session() as session:
            runs = [Run.of(row) for row in session.scalars(query)]
        behind = [run for run in runs if isinstance(run.detail("monitor"), dict)
                  and run.detail("monitor").get("rendered") not in (None, run.state)]
        return behind[:limit]

    def mark_monitor(self, run_id: str, rendered: str) -> None:
        """The run's monitor message now shows `rendered` (a run state)."""
        with self.store.session() as session, session.begin():
            row = session.get(RunRow, run_id)
            if row is not None and isinstance((row.details or {}).get("monitor"), dict):
                row.details = {**row.details, "monitor": {**row.details["monitor"], "rendered": rendered}}

    def reap(self, *, stale_after_seconds: float = STALE_AFTER_SECONDS, now: datetime | None = None,
             actor: str = "runbook-bot") -> list[Run]:
        """Mark runs whose process is gone `interrupted`, with an event each; returns them.

        Gone: on this host, the pid is not alive; anywhere, no heartbeat for `stale_after_seconds`.
        """
        now = now or utcnow()
        cutoff = now - timedelta(seconds=stale_after_seconds)
        with self.store.session() as session:
            running = [Run.of(row) for row in session.scalars(select(RunRow).where(RunRow.state == RUNNING))]
        reaped: list[Run] = []
        for run in running:
            dead_here = run.host == self.host and run.pid != os.getpid() and not process_alive(run.pid)
            stale = run.heartbeat_at < cutoff
            if not (dead_here or stale):
                continue
            why = (f"its process (pid {run.pid} on {run.host}) is gone" if dead_here else
                   f"no heartbeat from pid {run.pid} on {run.host} since {run.heartbeat_at:%Y-%m-%d %H:%M:%S} UTC")
            # Conditional on the heartbeat we read: a run that beats meanwhile is alive after all.
            marked = self._interrupt(run, why, now, actor, RunRow.heartbeat_at == self._stored(run.heartbeat_at))
            if marked is not None:
                reaped.append(marked)
        return reaped

    def interrupt_own(self, why: str, *, actor: str = "runbook-bot") -> list[Run]:
        """This process's runs still running, marked interrupted now (with an event each): the bot is
        stopping and will not wait for them (bot/shutdown.py). `why` ends "...: <why>. Not resumed"."""
        with self.store.session() as session:
            mine = [Run.of(row) for row in session.scalars(
                select(RunRow).where(RunRow.state == RUNNING).where(RunRow.host == self.host[:255])
                .where(RunRow.pid == os.getpid()))]
        marked = (self._interrupt(run, why, utcnow(), actor) for run in mine)
        return [run for run in marked if run is not None]

    def interrupted_with_open_request(self, limit: int = 20) -> list[Run]:
        """Interrupted runs whose approval request still says `executing`: whoever reaped them (a CLI
        command, a replica, a shutdown) has not closed the request yet. Newest first."""
        query = (select(RunRow).join(ApprovalRow, ApprovalRow.id == RunRow.approval_id)
                 .where(RunRow.state == INTERRUPTED).where(ApprovalRow.state == EXECUTING)
                 .order_by(RunRow.started_at.desc()).limit(limit))
        with self.store.session() as session:
            return [Run.of(row) for row in session.scalars(query)]

    def claim_follow_up(self, run_id: str, follow_up: str, claimed_by: str) -> bool:
        """True for exactly one caller per (run, follow-up), on every replica sharing this database:
        a conditional INSERT into job_claims (its primary key decides; the loser's INSERT fails)."""
        row = JobClaimRow(job=f"{follow_up}:{run_id}"[:80], slot=_ONCE, claimed_by=claimed_by[:120],
                          claimed_at=utcnow())
        try:
            with self.store.session() as session, session.begin():
                session.add(row)
        except IntegrityError:
            return False
        return True

    def _interrupt(self, run: Run, why: str, now: datetime, actor: str, *conditions: Any) -> Run | None:
        """running -> interrupted (conditional), and its event; None when someone else moved it first."""
        advice = NOT_RESUMED_RESTORE if run.kind == "restore" else NOT_RESUMED
        summary = f"interrupted during '{run.step}': {why}{advice}"
        statement = (update(RunRow).where(RunRow.id == run.id).where(RunRow.state == RUNNING).where(*conditions)
                     .values(state=INTERRUPTED, finished_at=now, summary=summary))
        with self.store.session() as session, session.begin():
            if session.execute(statement).rowcount != 1:
                return None
        self.store.record(actor=actor, action=run.kind, environment=run.environment, outcome=INTERRUPTED,
                          summary=summary, run_id=run.id,
                          details={"step": run.step, "from": run.from_revision, "target": run.target_revision,
                                   "host": run.host, "pid": run.pid})
        return self.get(run.id) or run

    def _stored(self, value: datetime) -> datetime:
        """A time as the database holds it: SQLite keeps naive UTC."""
        return value.replace(tzinfo=None) if self.store.engine.dialect.name == "sqlite" else value


def interruption(run: Run) -> str:
    """Where and why an interrupted run stopped ("interrupted during '<step>': <why>"), without the
    CLI's advice that ends its summary."""
    for advice in (NOT_RESUMED, NOT_RESUMED_RESTORE):
        if run.summary.endswith(advice):
            return run.summary[:-len(advice)]
    return run.summary


class Heartbeat:
    """Beats for a run from a daemon thread until stopped; `step` is what the run does now."""

    def __init__(self, runs: RunStore, run_id: str, *, every_seconds: float = HEARTBEAT_SECONDS):
        self.runs = runs
        self.run_id = run_id
        self.every_seconds = every_seconds
        self.step: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{run_id}", daemon=True)

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def set_step(self, step: str) -> None:
        self.step = step
        self._safe_beat()

    def _safe_beat(self) -> None:
        try:
            self.runs.heartbeat(self.run_id, step=self.step)
        except Exception:  # a state database hiccup must not stop the migration; the next beat retries
            pass

    def _beat(self) -> None:
        while not self._stop.wait(self.every_seconds):
            self._safe_beat()


__all__ = ["Heartbeat", "Run", "RunStore", "interruption", "new_run_id", "process_alive", "RUNNING", "SUCCEEDED", "FAILED",
           "REFUSED", "INTERRUPTED", "FINAL_STATES", "HEARTBEAT_SECONDS", "NOT_RESUMED", "NOT_RESUMED_RESTORE",
           "STALE_AFTER_SECONDS"]
