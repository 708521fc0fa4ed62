"""Retention: keep the newest `backups.keep` verified backups of each kind, never the only one and never
the one protecting the latest run (design rule 16); delete and expire the rest."""
from __future__ import annotations

from sqlalchemy import select

from runbook.backup.catalogue import _load, _now, _update
from runbook.backup.model import Backup
from runbook.config import Environment
from runbook.state.models import BackupRow
from runbook.storage import Storage


def apply_retention(name: str, env: Environment, store, *, storage: Storage | None = None,
                    kept: dict[int, str] | None = None) -> list[Backup]:
    """Keep the newest `backups.keep` verified backups of each kind (safety backups counted apart);
    delete the older files and mark them expired. Never leaves the environment without a
    verified backup, and never expires the backup that protects the latest run
    (runbook.protection.protected_backups: design rule 16); `kept` receives the id of each backup kept
    past the count, with why. Call it while holding the operation lock."""
    from runbook.protection import protected_backups

    storage = storage or Storage(env.backups)
    keep = env.backups.keep
    protected = protected_backups(store, name)
    query = (select(BackupRow).where(BackupRow.environment == name, BackupRow.status == "verified")
             .order_by(BackupRow.id.desc()))
    with store.session() as session:
        verified = [Backup.of(row) for row in session.scalars(query)]
    groups: dict[tuple[str, bool], list[Backup]] = {}
    for item in verified:
        groups.setdefault((item.kind, item.reason == "safety"), []).append(item)
    remaining = len(verified)
    expired: list[Backup] = []
    for members in groups.values():
        for old in members[keep:]:
            if old.id in protected:
                if kept is not None:
                    kept[old.id] = protected[old.id]
                continue
            if remaining <= 1:
                break          # never the only verified one, whatever the configuration says
            if _update(store, old.id, only_if_status="verified", status="expired",
                       details={**old.details, "expired_at": _now().isoformat()}):
                storage.delete(old.location)
                remaining -= 1
                expired.append(_load(store, old.id))
    return expired
