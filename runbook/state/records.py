"""The plain values the state store hands out, importable without SQLAlchemy.

A process that only talks to the store through runbook.state.sidecar (the CLI precheck) builds
these from the sidecar's replies and never pays for loading SQLAlchemy itself.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

# The state schema's own Alembic version table and newest migration (migrations/versions;
# tests/test_state.py keeps HEAD in step), here so runbook.state.lean can check them without
# SQLAlchemy.
VERSION_TABLE = "runbook_bot_alembic_version"
HEAD = "0009_alert_rendered"
# A run's state while its process works (runbook.state.runs).
RUNNING = "running"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; everything the bot stores is UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=timezone.utc)


class StateError(Exception):
    """The state database could not be opened or written; one redacted line."""


@dataclass(frozen=True)
class Event:
    id: int
    at: datetime
    actor: str
    action: str
    environment: str | None
    outcome: str
    summary: str
    details: dict[str, Any]
    run_id: str | None

    @classmethod
    def of(cls, row: Any) -> "Event":
        """From an EventRow (or anything with its attributes)."""
        return cls(row.id, as_utc(row.at), row.actor, row.action, row.environment, row.outcome,
                   row.summary, dict(row.details or {}), row.run_id)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "at": self.at.isoformat(), "actor": self.actor, "action": self.action,
                "environment": self.environment, "outcome": self.outcome, "summary": self.summary,
                "details": self.details, "run_id": self.run_id}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Event":
        return cls(int(data["id"]), as_utc(datetime.fromisoformat(data["at"])), data["actor"], data["action"],
                   data["environment"], data["outcome"], data["summary"], dict(data["details"] or {}),
                   data["run_id"])
