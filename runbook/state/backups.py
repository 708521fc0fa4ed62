"""Backup catalogue reads that need only the state store: no psycopg, pg_dump or configuration.

runbook.backup owns the catalogue; the queries the precheck needs live here so that the state
sidecar (runbook.state.sidecar) can answer them without loading the backup engine.
"""
from __future__ import annotations

from datetime import datetime
from typing import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from runbook.state.models import BackupRow, as_utc


def latest_verified_row(session: Session, environment: str, kinds: Sequence[str] = ("full",)) -> BackupRow | None:
    query = (select(BackupRow).where(BackupRow.environment == environment, BackupRow.status == "verified",
                                     BackupRow.kind.in_(list(kinds)))
             .order_by(BackupRow.id.desc()).limit(1))
    return session.scalars(query).first()


def last_backup_at(store, environment: str) -> datetime | None:
    """When the newest verified full backup finished: precheck's "Backup completed successfully"."""
    with store.session() as session:
        row = latest_verified_row(session, environment)
        return as_utc(row.finished_at) if row else None
