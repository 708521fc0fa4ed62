"""Which backup protects a run, and which backups retention must keep for it (design rule 16).

A migrate or rollback changes data that only a backup can bring back: a rollback's downgrade() drops
what the upgrade created, rows written into it included. So a run is protected only by a verified full
backup that holds the database as the run finds it:

* taken at the revision the database is at when the run starts (a backup from an older revision lacks
  every column, table and row added since: restoring it loses them);
* no migrate, rollback or restore of the environment finished after it was taken (each of those
  changes the data under the same revision: a restore's safety backup holds the rows the restore
  replaced);
* newer than `approvals.require_backup_within_minutes`.

Anything else, and the run takes its own backup first, under its lock. The decision is taken twice
with the same function: when the request is shown (what approvers read) and under the run's lock,
with the revision read there (what counts).

Retention keeps the backup that protects the latest run of the environment that had one, until a
newer run has its own: the backup a §6.5 restore would use is never the one a routine backup expired.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Sequence

from runbook.config import Environment
from runbook.units import short_duration

# The run's details key holding the id of the backup that protects it (RunStore.set_details).
PROTECTED_BY = "protected_by"
# How far back the catalogue and the runs are read for the decision.
_LOOKBACK = 50


@dataclass(frozen=True)
class Protection:
    """The answer for one environment at one revision."""

    backup: Any | None          # runbook.backup.Backup that protects the run; None: a new one is needed
    latest: Any | None          # the latest verified full backup, whatever its revision
    reason: str                 # one line: why it is relied on, or why a new one is needed

    @property
    def relied_on(self) -> bool:
        return self.backup is not None


def _revision_text(revision: Sequence[str] | None) -> str:
    if revision is None:
        return "an unrecorded revision"
    return ", ".join(revision) or "base"


def _finished(item: Any) -> datetime:
    return item.finished_at or item.started_at


def last_change(store, name: str) -> Any | None:
    """The latest migrate, rollback or restore of `name` that finished having possibly changed data
    (succeeded, failed or interrupted; a refused run changed nothing)."""
    from runbook.state.runs import FAILED, INTERRUPTED, SUCCEEDED, RunStore

    finished = [r for r in RunStore(store).list(environment=name, states=(SUCCEEDED, FAILED, INTERRUPTED),
                                                limit=_LOOKBACK) if r.finished_at is not None]
    return max(finished, key=lambda r: r.finished_at, default=None)


def protecting_backup(store, name: str, env: Environment, current: Sequence[str], *,
                      now: datetime | None = None, exclude_run: str | None = None) -> Protection:
    """The verified full backup that protects a run of `name` starting at revision `current`, or why
    none does (see the module's rules). `exclude_run`: the run asking, whose own row does not count
    as a change."""
    from runbook.backup import list_backups

    now = now or datetime.now(timezone.utc)
    window = timedelta(minutes=env.approvals.require_backup_within_minutes)
    verified = [b for b in list_backups(store, name, limit=_LOOKBACK) if b.status == "verified" and b.kind == "full"]
    latest = verified[0] if verified else None
    if latest is None:
        return Protection(None, None, f"{name} has no verified full backup: one is taken first, under the run's lock")
    change = last_change(store, name)
    if change is not None and change.id == exclude_run:
        change = None
    wanted = sorted(current)
    at_revision = [b for b in verified if b.revision is not None and sorted(b.revision) == wanted]
    if not at_revision:
        return Protection(None, latest, f"the latest verified full backup #{latest.id} was taken at "
                                        f"{_revision_text(latest.revision)}, not at {_revision_text(current)} where "
                                        f"{name} is now: it lacks what changed since, so a new one is taken first")
    candidate = at_revision[0]
    taken = _finished(candidate)
    age = short_duration((now - taken).total_seconds())
    if taken < now - window:
        return Protection(None, latest, f"the newest verified full backup at {_revision_text(current)}, "
                                        f"#{candidate.id}, is {age} old (older than "
                                        f"{env.approvals.require_backup_within_minutes} min): a new one is taken first")
    if change is not None and change.finished_at is not None and change.finished_at >= candidate.started_at:
        return Protection(None, latest, f"backup #{candidate.id} at {_revision_text(current)} was taken before the "
                                        f"{change.kind} run {change.id[:8]} changed {name}: a new one is taken first")
    return Protection(candidate, latest, f"backup #{candidate.id}, taken at {_revision_text(current)} {age} ago, "
                                         f"protects this run; writes made after it are not in it")


def protected_backups(store, name: str) -> dict[int, str]:
    """backup id -> why retention must keep it: the backup protecting the latest run of `name` that had
    one, until a newer run has its own."""
    from runbook.state.runs import RunStore

    for run in RunStore(store).list(environment=name, limit=_LOOKBACK):     # newest first
        backup_id = run.detail(PROTECTED_BY)
        if backup_id is not None:
            return {int(backup_id): f"it protects the latest {run.kind} run {run.id[:8]} "
                                    f"({run.started_at:%Y-%m-%d %H:%M} UTC)"}
    return {}


def remember(store, run_id: str, backup: Any) -> None:
    """Record on the run which backup protects it (retention reads it back)."""
    from runbook.state.runs import RunStore

    if backup is not None and store is not None:
        RunStore(store).set_details(run_id, **{PROTECTED_BY: backup.id})


__all__ = ["PROTECTED_BY", "Protection", "last_change", "protected_backups", "protecting_backup", "remember"]
