"""Re-verifying a stored backup: the ladder run again on the archive (checksum, TOC, full read,
optionally a scratch restore); one that fails is never offered for restore again."""
from __future__ import annotations

from runbook.backup.catalogue import _load, _now, _update, get_backup
from runbook.backup.environment import _operation_lock, target_of, tools_for
from runbook.backup.model import Backup, BackupError, LEVELS, VERIFY_LEVELS
from runbook.backup.scratch import _verify_by_restore
from runbook.backup.tools import PLAIN_HEADER, PLAIN_TRAILER, _first_error, _run_tool
from runbook.config import Environment
from runbook.pgtools import Tools, client_env, conninfo_without_password
from runbook.storage import Storage, StorageError
from runbook.target import Target, TargetError


def verify_backup(name: str, env: Environment, store, backup_id: int | str, *, level: str = "full") -> Backup:
    """Run the ladder again on the stored archive (checksum, TOC, full read, optionally restore).

    A backup that fails is marked failed (the file is kept for inspection) and is never
    offered for restore again. Returns the updated entry; BackupError if it cannot start."""
    if level not in VERIFY_LEVELS:
        raise BackupError(f"unknown verification '{str(level)[:20]}': use full or restore")
    item = get_backup(store, name, backup_id)
    if item.status != "verified":
        raise BackupError(f"backup {item.id} is {item.status}, not verified: there is nothing to re-check")
    target = target_of(env)
    storage = Storage(env.backups)
    try:
        with _operation_lock(target, name, "verify", None), target.connect("verify") as conn:
            tools = tools_for(conn, env, name)
            problem, reached = _check_archive(item, storage, tools, target, env, level)
    except TargetError as exc:
        raise BackupError(str(exc)) from None
    if problem:
        _update(store, item.id, only_if_status="verified", status="failed", level=reached,
                error=target.scrub(problem), details={**item.details, "failed_at": _now().isoformat()})
    else:
        _update(store, item.id, level=max(reached, item.level, key=LEVELS.index),
                details={**item.details, "rechecked_at": _now().isoformat()})
    return _load(store, item.id)


def _check_archive(item: Backup, storage: Storage, tools: Tools, target: Target, env: Environment,
                   level: str) -> tuple[str | None, str]:
    """(problem or None, the highest level reached) for a stored archive."""
    try:
        with storage.fetch(item.location, directory=item.format == "directory") as (path, digest):
            _conninfo, password = conninfo_without_password(env.dsn, purpose="pg_restore")
            with client_env(password) as tool_env:
                reached = "none"
                notes = []
                if digest != item.sha256:
                    notes.append(f"checksum mismatch: the archive changed since it was verified "
                                 f"(sha256 {digest[:12]}…, catalogue says {(item.sha256 or '?')[:12]}…)")
                if item.format == "plain":
                    with open(path, "rb") as handle:
                        head = handle.read(256)
                    if PLAIN_HEADER in head:
                        reached = "toc"
                        with open(path, "rb") as handle:
                            handle.seek(max(0, path.stat().st_size - 4096))
                            if PLAIN_TRAILER in handle.read():
                                reached = "full"
                            else:
                                notes.append("full read: the schema dump lacks pg_dump's closing line (truncated)")
                    else:
                        notes.append("not a pg_dump schema file")
                else:
                    rc, _listing, err = _run_tool([str(tools.pg_restore.path), "--list", str(path)], tool_env)
                    if rc != 0:
                        notes.append(f"TOC read failed: {_first_error(err, 'pg_restore')}")
                    else:
                        reached = "toc"
                        rc, _out, err = _run_tool([str(tools.pg_restore.path), "--file=/dev/null", str(path)],
                                                  tool_env)
                        if rc != 0:
                            notes.append(f"full read failed (the TOC alone passes it): "
                                         f"{_first_error(err, 'pg_restore')}")
                        else:
                            reached = "full"
                if level == "restore" and reached == "full" and not notes:
                    problem = _verify_by_restore(target, tools, tool_env, env, path, kind=item.kind, fmt=item.format,
                                                 expected=item.row_counts, expected_tables=item.tables, state={})
                    if problem:
                        notes.append(f"restore check failed: {problem}")
                    else:
                        reached = "restore"
                return ("; ".join(notes) if notes else None), reached
    except StorageError as exc:
        return str(exc), "none"
