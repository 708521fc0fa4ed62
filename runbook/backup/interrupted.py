"""The interrupted sweep: backups left `running` by a process that died mid-dump are marked failed and
their partial archives removed."""
from __future__ import annotations

import logging

from sqlalchemy import select, update

from runbook import guard
from runbook.config import Environment
from runbook.state.models import BackupRow
from runbook.storage import PARTIAL_PREFIX, Storage, StorageError, remove_local
from runbook.target import TargetError, redact

log = logging.getLogger(__name__)
from runbook.backup.catalogue import _now
from runbook.backup.environment import target_of
from runbook.backup.model import Backup


def sweep_interrupted(name: str, env: Environment, store) -> list[int]:
    """Backups left `running` by a process that died mid-dump (kill -9, an OOM kill): marked failed and
    their partial archives removed, at the next start and by the reaper, not at the next backup. Only
    while the target's operation lock is free: a backup that is really running holds it. Returns the ids
    swept; [] when there were none, or the target cannot be reached or is busy (the next sweep retries)."""
    query = select(BackupRow).where(BackupRow.environment == name, BackupRow.status == "running")
    with store.session() as session:
        running = [Backup.of(row) for row in session.scalars(query)]
    if not running:
        return []
    try:
        with guard.exclusive(target_of(env), name, "sweep", wait_seconds=0):
            storage = Storage(env.backups)
            for item in running:
                remove_local(storage.staging / (PARTIAL_PREFIX + item.name))
            _fail_interrupted(store, name)
    except (guard.OperationRunning, TargetError, StorageError, OSError) as exc:
        log.info("backups of %s left running not swept now: %s", name, redact(str(exc)))
        return []
    return [item.id for item in running]


def _fail_interrupted(store, environment: str) -> None:
    """Entries left `running` by a bot that died mid-backup (called under the operation lock, so
    nothing of this target can still be running): failed, so they are never mistaken for live ones."""
    with store.session() as session, session.begin():
        session.execute(update(BackupRow).where(BackupRow.environment == environment, BackupRow.status == "running")
                        .values(status="failed", error="interrupted: the bot stopped during this backup",
                                finished_at=_now()))
