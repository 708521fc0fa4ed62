"""SQLAlchemy models of the bot's own state (not the target database)."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, DateTime, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


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
