"""The catalogue of backups in the state store: listing, looking up, the latest verified one, where its
Slack message is and what it shows, and the conditional writes every other module records through."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any, Sequence

from sqlalchemy import select, update

from runbook.backup.model import Backup, BackupError
from runbook.state.backups import latest_verified_row
from runbook.state.models import BackupRow


def list_backups(store, environment: str, *, limit: int = 50) -> list[Backup]:
    """Newest first, every status."""
    query = (select(BackupRow).where(BackupRow.environment == environment)
             .order_by(BackupRow.id.desc()).limit(limit))
    with store.session() as session:
        return [Backup.of(row) for row in session.scalars(query)]


def get_backup(store, environment: str, backup_id: int | str) -> Backup:
    """The entry, or BackupError naming what to do when the id is unknown."""
    try:
        wanted = int(str(backup_id).lstrip("#"))
    except ValueError:
        raise BackupError(f"'{str(backup_id)[:40]}' is not a backup id: ids are numbers, see `backups`") from None
    with store.session() as session:
        row = session.get(BackupRow, wanted)
        if row is None or row.environment != environment:
            raise BackupError(f"unknown backup id {wanted} for {environment}: see `backups {environment}` "
                              "for the catalogue")
        return Backup.of(row)


def latest_verified(store, environment: str, kinds: Sequence[str] = ("full",)) -> Backup | None:
    with store.session() as session:
        row = latest_verified_row(session, environment, kinds)
        return Backup.of(row) if row else None


def remember_message(store, backup_id: int, channel: str, ts: str) -> None:
    """Where the backup's Slack message is (design rule 6: updates go by the stored ts), and the status it
    shows ("rendered"): a final update Slack never took is made again (messages_behind)."""
    with store.session() as session, session.begin():
        row = session.get(BackupRow, backup_id)
        if row is not None:
            row.details = {**(row.details or {}), "message": {"channel": channel, "ts": ts, "rendered": "running"}}


def mark_message(store, backup_id: int, rendered: str) -> None:
    """The backup's message now shows `rendered` (a status)."""
    with store.session() as session, session.begin():
        row = session.get(BackupRow, backup_id)
        if row is not None and isinstance((row.details or {}).get("message"), dict):
            row.details = {**row.details, "message": {**row.details["message"], "rendered": rendered}}


def messages_behind(store, *, settled_before: datetime, limit: int = 50) -> list[tuple["Backup", str, str]]:
    """(backup, channel, ts) of finished backups whose message shows another status than the catalogue's
    (its last update lost to a Slack outage, or a sweep failed it after its process died), finished
    before `settled_before` and within a day of it. A message without "rendered" predates the mark."""
    settled = settled_before.replace(tzinfo=None) if store.engine.dialect.name == "sqlite" else settled_before
    # expired: retention removed a verified backup's file later; its message is not about that
    query = (select(BackupRow).where(BackupRow.status.not_in(["running", "expired"]))
             .where(BackupRow.finished_at <= settled)
             .where(BackupRow.finished_at > settled - timedelta(days=1)).order_by(BackupRow.id).limit(limit * 4))
    with store.session() as session:
        rows = list(session.scalars(query))
    behind = []
    for row in rows:
        kept = (row.details or {}).get("message")
        if isinstance(kept, dict) and kept.get("channel") and kept.get("ts") \
                and kept.get("rendered") not in (None, row.status):
            behind.append((Backup.of(row), kept["channel"], kept["ts"]))
    return behind[:limit]


def _insert(store, **values: Any) -> int:
    row = BackupRow(**values)
    with store.session() as session, session.begin():
        session.add(row)
        session.flush()
        return row.id


def _update(store, backup_id: int, *, only_if_status: str | None = None, **values: Any) -> bool:
    """A conditional update (design rule 4): with only_if_status, only the winner changes the row."""
    statement = update(BackupRow).where(BackupRow.id == backup_id).values(**values)
    if only_if_status is not None:
        statement = statement.where(BackupRow.status == only_if_status)
    with store.session() as session, session.begin():
        return session.execute(statement).rowcount == 1


def _load(store, backup_id: int) -> Backup:
    with store.session() as session:
        return Backup.of(session.get(BackupRow, backup_id))


def _now() -> datetime:
    return datetime.now(timezone.utc)
