"""§2 and §6.2–6.4: verified backups, their catalogue and retention, and restores.

Public API (bot/flows, bot/cli and bot/approvals build on it; names are stable):

    backup(name, env, store, *, kind="full"|"schema"|"tables", tables=(), verify=None, actor=...,
           reason="manual", progress=None, lock=None) -> Backup              raises BackupError
    list_backups(store, name, *, limit=50) -> list[Backup]
    get_backup(store, name, backup_id) -> Backup                                raises BackupError
    latest_verified(store, name, kinds=("full",)) -> Backup | None
    verify_backup(name, env, store, backup_id, *, level="full") -> Backup       re-runs the ladder
    apply_retention(name, env, store) -> list[Backup]                            what it expired
    plan_restore(name, env, store, backup_id, *, tables=()) -> RestorePlan      what would be replaced, dropped
    restore(name, env, store, backup_id, *, expected_revision, tables=(), actor=..., progress=None,
            lock=None) -> RestoreResult                                         raises BackupError
    restored_copy(name, env, store, backup_id, *, server_dsn, dbname) -> Target  a scratch copy (a context)
    create_scratch / restore_into_scratch / drop_scratch                         its pieces (verify: restore)
    dump_in_progress(conn) -> list[DumpSession]                                 any pg_dump on this db
    last_backup_at(store, name) -> datetime | None          the newest verified full backup (precheck)
    backup_to_json(backup) -> dict                           the CLI's --json contract
    remember_message(store, backup_id, channel, ts)          where its Slack message is (updates by ts)
    messages_behind(store, settled_before=) / mark_message   messages showing another status than the row

How a backup runs (one advisory lock for the whole operation, runbook/guard.py):

1. One REPEATABLE READ transaction on the target reads the server version, the tables, the
   Alembic revision and exports its snapshot; pg_dump runs with `--snapshot`, and the rows are
   counted in that same transaction while it dumps, so the recorded counts are exactly the
   dump's (a live database changes underneath otherwise).
2. Custom and plain dumps stream through the bot: every chunk is hashed, written to a hidden
   `.partial-` file and fed to `pg_restore -f /dev/null` at the same time, so the full read
   (reference/postgres.md §5: it catches the truncation that `pg_restore --list` passes) costs
   almost nothing on top of the dump. Directory dumps (`-j`) are read back after. (A custom
   archive written through a pipe has no data offsets in its TOC: pg_restore then reads it in
   order, so a one-table restore scans the file; parallel restore still works.)
   The exact counts cost one more scan of every table on the server, concurrent with the dump.
3. The ladder: toc (`pg_restore --list` of the stored file) < full (every block read and
   decompressed) < restore (into a scratch database on the same server, row counts compared;
   the scratch database is always dropped). A rung that fails marks the backup failed, deletes
   the file, and it is never offered for restore.
4. Only then is the file moved to its final name (or uploaded), marked verified, and
   retention applied. A full backup's details record what its archive holds of views
   ("views") and of OBJECT_KINDS ("objects": functions, procedures, aggregates, domains, types,
   sequences, schemas), by pg_restore --list's names.

A full restore is one psql transaction: a prologue drops what the backup does not hold (views,
tables, then the objects of OBJECT_KINDS created since, never an extension's), then
`pg_restore --clean --if-exists` recreates what it does hold. Objects are matched by name, functions
by their argument types as pg_dump tags them; a name the parse gets wrong (an owner's name with a
space: the TOC does not delimit it) only makes an archived object look new: it is dropped and
recreated from the archive. Backups without an "objects" record drop only views and tables.

Every BackupError is one line, scrubbed of the password.

The modules, one concern each, with no import cycle among them (tests/test_layout.py):

    model        the types: Backup, Progress, RestorePlan, RestoreResult, CatalogObject; BackupError
    names        schema.table split, quoted, shown, as a pg_dump pattern
    catalogue    the catalogue in the state store, and its conditional writes
    retention    apply_retention
    introspect   the target's catalog: tables, views, partitions, keys, columns, row counts, dumps
    environment  target, Alembic project, jobs and the operation lock of one environment
    progress     the progress ticker
    tools        running pg_dump (streamed, hashed, read in full) and the other client tools
    toc          pg_restore --list, read
    dump         backup(): snapshot, dump, count, the ladder, publish, catalogue, retention
    interrupted  sweep_interrupted
    scratch      scratch databases, the restore rung, restored_copy
    verify       verify_backup: the ladder again on a stored archive
    restore_plan plan_restore(): what a restore would replace and drop, and what refuses it
    restoring    restore(): the archive checked, the safety backup, the restore in one transaction

Names with a leading underscore are the package's own: shared between its modules, not for callers
(tests reach `_update` here; `_open_partial` is patched where it is used, runbook.backup.tools).
"""
from __future__ import annotations

from runbook.backup.catalogue import (_update, get_backup, latest_verified, list_backups, mark_message,  # noqa: F401
                                       messages_behind, remember_message)
from runbook.backup.dump import backup
from runbook.backup.interrupted import sweep_interrupted
from runbook.backup.introspect import definition_changes, dump_in_progress, resolve_tables
from runbook.backup.model import (KINDS, LEVELS, VERIFY_LEVELS, Backup, BackupError, BackupFailed, CatalogObject,
                                  DumpSession, Progress, ProgressCallback, RestorePlan, RestoreResult, TableChange,
                                  backup_to_json)
from runbook.backup.restore_plan import plan_restore, plan_to_params
from runbook.backup.restoring import restore
from runbook.backup.retention import apply_retention
from runbook.backup.scratch import create_scratch, drop_scratch, restore_into_scratch, restored_copy, scratch_target
from runbook.backup.tools import _open_partial  # noqa: F401 (patch it in runbook.backup.tools)
from runbook.backup.verify import verify_backup
from runbook.state.backups import last_backup_at

__all__ = [
    "BackupError", "BackupFailed", "Backup", "Progress", "ProgressCallback", "DumpSession", "TableChange",
    "RestorePlan", "RestoreResult", "CatalogObject", "KINDS", "LEVELS", "VERIFY_LEVELS",
    "backup", "list_backups", "get_backup", "latest_verified", "last_backup_at", "verify_backup", "remember_message",
    "mark_message", "messages_behind",
    "apply_retention", "definition_changes", "plan_restore", "plan_to_params", "sweep_interrupted", "restore", "dump_in_progress",
    "resolve_tables", "backup_to_json",
    "create_scratch", "drop_scratch", "restore_into_scratch", "restored_copy", "scratch_target",
]
