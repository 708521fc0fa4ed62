"""SQLAlchemy models of the bot's own state (not the target database)."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, Float, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy import ForeignKey, UniqueConstraint

from runbook.state.records import as_utc, utcnow  # noqa: F401  (re-exported: models.as_utc is used widely)


class Base(DeclarativeBase):
    pass


class EventRow(Base):
    """Append-only audit trail: every command from Slack and the CLI, and what came of it.

    Triggers created by the migration refuse UPDATE and DELETE on this table.
    """

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, nullable=False)
    actor: Mapped[str] = mapped_column(String(120), nullable=False)        # U0123ABC or cli:<user>
    action: Mapped[str] = mapped_column(String(40), nullable=False)
    environment: Mapped[str | None] = mapped_column(String(40))
    outcome: Mapped[str] = mapped_column(String(20), nullable=False)        # ok, go, no-go, error, ...
    summary: Mapped[str] = mapped_column(Text, default="", nullable=False)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, nullable=False)
    run_id: Mapped[str | None] = mapped_column(String(40))

    __table_args__ = (Index("ix_events_environment_at", "environment", "at"),)


class BackupRow(Base):
    """The backup catalogue (issue 3): one row per backup attempt, verified or not.

    status: running -> verified | failed; verified -> expired when retention deletes the file.
    Only `verified` rows are ever offered for restore. `level` is the highest rung of the
    verification ladder passed: none < toc < full < restore.
    """

    __tablename__ = "backups"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    environment: Mapped[str] = mapped_column(String(40), nullable=False)
    kind: Mapped[str] = mapped_column(String(10), nullable=False)           # full | schema | tables
    format: Mapped[str] = mapped_column(String(10), nullable=False)         # custom | directory | plain
    reason: Mapped[str] = mapped_column(String(20), nullable=False)         # manual | safety | migrate
    status: Mapped[str] = mapped_column(String(10), nullable=False)
    level: Mapped[str] = mapped_column(String(10), nullable=False, default="none")
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    location: Mapped[str] = mapped_column(Text, nullable=False)             # a path or an fsspec URL
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    sha256: Mapped[str | None] = mapped_column(String(64))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, nullable=False)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    duration_seconds: Mapped[float | None] = mapped_column(Float)
    server_version: Mapped[str | None] = mapped_column(String(40))
    tool_version: Mapped[str | None] = mapped_column(String(40))
    revision: Mapped[list[str] | None] = mapped_column(JSON)               # Alembic revision(s) at dump time
    tables: Mapped[list[str]] = mapped_column(JSON, default=list, nullable=False)
    row_counts: Mapped[dict[str, int]] = mapped_column(JSON, default=dict, nullable=False)
    actor: Mapped[str] = mapped_column(String(120), nullable=False)
    error: Mapped[str | None] = mapped_column(Text)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, nullable=False)

    __table_args__ = (Index("ix_backups_environment_status", "environment", "status", "id"),)


class ApprovalRow(Base):
    """An action waiting for (or past) approval: restore, migrate, rollback, ...

    `id` is opaque and is all a Slack button carries. `state` moves only by conditional
    UPDATEs (bot/approvals.py): pending -> approved -> executing -> done | failed, or
    pending -> rejected | expired | cancelled. `params` holds what the executor needs and
    the facts shown when it was requested; `result` what the execution reported.
    """

    __tablename__ = "approvals"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    kind: Mapped[str] = mapped_column(String(20), nullable=False)
    environment: Mapped[str] = mapped_column(String(40), nullable=False)
    requester: Mapped[str] = mapped_column(String(120), nullable=False)       # U0123ABC or cli:<user>
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, nullable=False)
    state: Mapped[str] = mapped_column(String(20), nullable=False)
    required: Mapped[int] = mapped_column(Integer, nullable=False)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    channel: Mapped[str | None] = mapped_column(String(40))                   # the request message, for chat.update
    message_ts: Mapped[str | None] = mapped_column(String(40))
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    result_summary: Mapped[str] = mapped_column(Text, default="", nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, nullable=False)
    # 0008: the process that approved or started it (its executor holds the request until its run starts):
    # an approved request whose run never started is closed once that process is gone
    claimed_host: Mapped[str | None] = mapped_column(String(255))
    claimed_pid: Mapped[int | None] = mapped_column(Integer)
    # 0008: the updated_at of the version its Slack message last showed; the reconcile re-renders the others
    rendered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (Index("ix_approvals_state_expires_at", "state", "expires_at"),)


class ApprovalDecisionRow(Base):
    """One person's decision on one request; the unique key makes a repeated click count once."""

    __tablename__ = "approval_decisions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(40), ForeignKey("approvals.id", ondelete="CASCADE"),
                                            nullable=False)
    approver: Mapped[str] = mapped_column(String(120), nullable=False)
    decision: Mapped[str] = mapped_column(String(20), nullable=False)         # approve, reject, yes (CLI --yes)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, nullable=False)

    __table_args__ = (UniqueConstraint("request_id", "approver", name="uq_approval_decisions_request_approver"),)


# -- issue 5: the watch (alerts, scheduler claims, pause switch) ------------------------------

class AlertRow(Base):
    """One alert = one incident = one Slack message (channel, ts), updated while it lasts.

    `key` is (environment, kind, subject, since): subject is the pid (the root blocker's for a
    lock queue) or a prepared transaction's gid, since is the session's backend_start (or the
    prepare time), so a reused pid never continues someone else's alert.
    """

    __tablename__ = "alerts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(400), nullable=False, unique=True)
    environment: Mapped[str] = mapped_column(String(40), nullable=False)
    kind: Mapped[str] = mapped_column(String(30), nullable=False)
    subject: Mapped[str] = mapped_column(String(250), nullable=False)
    since: Mapped[str] = mapped_column(String(40), nullable=False, default="")
    state: Mapped[str] = mapped_column(String(12), nullable=False)          # open | resolved
    opened_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    last_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    cleared_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))   # first poll without it
    resolved_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    escalated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    reopened: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    peak_seconds: Mapped[float] = mapped_column(Float, nullable=False, default=0.0)   # of the current episode
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, nullable=False)
    channel: Mapped[str | None] = mapped_column(String(40))
    ts: Mapped[str | None] = mapped_column(String(40))
    # 0007: an incident that resolved and came back within the re-open window is one alert with
    # several open episodes. Escalation counts the time it was open: the earlier episodes'
    # (open_seconds) plus the current one's (since episode_opened_at; None: since opened_at).
    episode_opened_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    open_seconds: Mapped[float | None] = mapped_column(Float)
    # 0009: what its message last showed of it, "<state>:<reopened>" (runbook.watch.view_of): an edit Slack
    # never took (an outage) leaves it behind the row, and a later poll makes it again. None: not shown yet.
    rendered: Mapped[str | None] = mapped_column(String(40))

    __table_args__ = (Index("ix_alerts_environment_state", "environment", "state"),)


class JobClaimRow(Base):
    """One row per (job, wall-clock slot): whoever inserts it runs that slot, nobody else."""

    __tablename__ = "job_claims"

    job: Mapped[str] = mapped_column(String(80), primary_key=True)
    slot: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    claimed_by: Mapped[str] = mapped_column(String(120), nullable=False)
    claimed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, nullable=False)


class WatchStateRow(Base):
    """Per environment: the pause switch (`/migrate watch off`) and the last poll's outcome."""

    __tablename__ = "watch_state"

    environment: Mapped[str] = mapped_column(String(40), primary_key=True)
    paused: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    changed_by: Mapped[str | None] = mapped_column(String(120))
    changed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_poll_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_poll_ok: Mapped[bool | None] = mapped_column(Boolean)
    last_poll_seconds: Mapped[float | None] = mapped_column(Float)
    last_error: Mapped[str | None] = mapped_column(Text)


# -- issue 4: migrate / rollback / validate runs --------------------------------------------

class RunRow(Base):
    """One supervised run (migrate, rollback, restore): who, what, where it got, and a heartbeat.

    `state` moves running -> succeeded | failed | refused | interrupted by conditional UPDATEs
    (runbook/state/runs.py). A run whose heartbeat went stale (its process died) is marked
    interrupted by whoever starts next; it is never resumed on its own.
    """

    __tablename__ = "runs"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    kind: Mapped[str] = mapped_column(String(20), nullable=False)              # migrate, rollback, restore
    environment: Mapped[str] = mapped_column(String(40), nullable=False)
    actor: Mapped[str] = mapped_column(String(120), nullable=False)            # U0123ABC or cli:<user>
    approval_id: Mapped[str | None] = mapped_column(String(40))
    state: Mapped[str] = mapped_column(String(20), nullable=False)
    from_revision: Mapped[str] = mapped_column(String(200), nullable=False, default="")
    target_revision: Mapped[str] = mapped_column(String(200), nullable=False, default="")
    step: Mapped[str] = mapped_column(String(200), nullable=False, default="")  # what it is doing now
    host: Mapped[str] = mapped_column(String(255), nullable=False)
    pid: Mapped[int] = mapped_column(Integer, nullable=False)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, nullable=False)
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, nullable=False)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    summary: Mapped[str] = mapped_column(Text, default="", nullable=False)
    log_path: Mapped[str | None] = mapped_column(Text)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # 0006: what else the run keeps, by key: a restore's backup ("backup_id", "mode", "tables"), the live
    # monitor's message ("monitor": {"channel", "ts"}) so a follow-up can close it after the process died
    details: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    __table_args__ = (Index("ix_runs_state_heartbeat_at", "state", "heartbeat_at"),
                      Index("ix_runs_environment_started_at", "environment", "started_at"))
