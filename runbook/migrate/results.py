"""What a migration run reports: the result, its steps, the progress it shows, the blockers it met,
and the JSON contract of all of it (`migrate --json`, `rollback --json`, the runs table)."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

Direction = Literal["upgrade", "downgrade"]
# error: the run could not reach the target or broke unexpectedly (the CLI exits 2 for it).
Outcome = Literal["succeeded", "nothing to do", "failed", "validation failed", "refused", "error"]


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
    # runbook.rehearsal_record.Comparison: the rehearsal of this range that stood when the run started
    rehearsal: Any = None

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


def blocker_line(b: BlockerReport) -> str:
    if not b.observed:
        return f"migrator pid {b.migrator_pid} waits on a lock; its blocker was not seen"
    who = f"prepared transaction {b.prepared_gid}" if b.root_pid == 0 else (
        f"pid {b.root_pid} ({b.application or '?'}, {b.state or '?'}"
        + (f", transaction open {b.xact_seconds:.0f} s" if b.xact_seconds is not None else "") + ")")
    return (f"migrator pid {b.migrator_pid} waits for {b.lock_mode or 'a lock'} on {b.relation or '?'}; "
            f"root blocker {who}: {b.query}")


def result_to_json(result: MigrationResult) -> dict[str, Any]:
    """The `migrate --json` / `rollback --json` contract, and what the runs table keeps."""
    from runbook import rollback, validate
    from runbook.rehearsal_record import comparison_to_json

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
        "rehearsal": comparison_to_json(result.rehearsal),
    }

