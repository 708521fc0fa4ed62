"""Taking a backup (§2): the facts read in the dump's own snapshot, pg_dump with the rows counted
alongside, the verification ladder on the partial archive (toc < full < restore), then publish,
catalogue as verified and apply retention."""
from __future__ import annotations

import errno
import logging
import re
import signal
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

import psycopg
from psycopg import sql

from runbook import guard
from runbook.config import Environment
from runbook.pgtools import ToolError, Tools, client_env, conninfo_without_password, select_tools
from runbook.revisions import AlembicProject, RevisionError
from runbook.storage import Storage, StorageError, archive_size, remove_local, sha256_directory, size_so_far
from runbook.target import Target, TargetError, redact
from runbook.units import human_size

log = logging.getLogger(__name__)
from runbook.backup.catalogue import _insert, _load, _now, _update
from runbook.backup.environment import _jobs, _operation_lock, project_of, target_of
from runbook.backup.interrupted import _fail_interrupted
from runbook.backup.introspect import _count_rows, resolve_tables, _table_columns, _user_tables
from runbook.backup.model import Backup, BackupError, BackupFailed, KINDS, ProgressCallback, VERIFY_LEVELS
from runbook.backup.names import _ident, _plain, _table_pattern
from runbook.backup.progress import _Ticker
from runbook.backup.retention import apply_retention
from runbook.backup.scratch import _verify_by_restore
from runbook.backup.toc import _archive_record, _toc_entries
from runbook.backup.tools import _first_error, _run_tool, _stream_dump, _StreamOutcome


# Partials older than this are leftovers of a crashed run (newer ones may belong to a run on
# another environment that shares the directory).
STALE_PARTIAL_SECONDS = 6 * 3600


def _dump_failure(stderr: str, lock_wait_timeout: str) -> str:
    """pg_dump's failure as one line; a lock wait gets the reason and the way out."""
    first = _first_error(stderr, "pg_dump")
    if re.search(r"canceling statement due to (lock|statement) timeout|could not obtain lock", stderr):
        return (f"pg_dump failed: a table stayed locked by another session for longer than lock_wait_timeout "
                f"({lock_wait_timeout}); see `activity` for who holds it, then try again ({first})")
    return f"pg_dump failed: {first}"


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def _timestamp(now: datetime) -> str:
    return now.strftime("%Y%m%d_%H%M%S")


def _archive_name(kind: str, fmt: str, now: datetime) -> tuple[str, str]:
    stem = {"full": "backup", "schema": "schema_backup", "tables": "tables_backup"}[kind] + "_" + _timestamp(now)
    return stem, {"custom": ".dump", "directory": ".dir", "plain": ".sql"}[fmt]


def backup(name: str, env: Environment, store, *, kind: str = "full", tables: Sequence[str] = (),
           verify: str | None = None, actor: str = "runbook-bot", reason: str = "manual",
           progress: ProgressCallback | None = None, progress_every: float = 1.0,
           lock: guard.Held | None = None, project: AlembicProject | None = None) -> Backup:
    """Dump, verify, catalogue, apply retention. Returns the verified entry.

    BackupError before anything is recorded (bad input, unreachable target, tool too old,
    another operation running); BackupFailed (a BackupError carrying the failed entry) when the
    dump or a verification rung fails — its file is deleted and it is never restorable.
    `lock`: the operation lock when the caller already holds it (restore, migrate)."""
    if kind not in KINDS:
        raise BackupError(f"unknown backup kind '{str(kind)[:20]}': use full, schema or tables")
    if kind == "tables" and not tables:
        raise BackupError("a table backup needs at least one table")
    if kind != "tables" and tables:
        raise BackupError("tables can only be given for a table backup")
    verify = verify or env.backups.verify
    if verify not in VERIFY_LEVELS:
        raise BackupError(f"unknown verification '{str(verify)[:20]}': use full or restore")
    target = target_of(env)
    try:
        storage = Storage(env.backups)
    except StorageError as exc:
        raise BackupError(str(exc)) from None
    started: dict[str, Any] = {}       # the catalogue id and partial path, once there are any
    try:
        with _operation_lock(target, name, "backup", lock):
            return _backup_locked(name, env, store, target, storage, kind=kind, tables=tables, verify=verify,
                                  actor=actor, reason=reason, progress=progress, progress_every=progress_every,
                                  project=project or project_of(env), started=started)
    except BackupFailed:
        raise
    except Exception as exc:
        message = str(exc) if isinstance(exc, (BackupError, TargetError)) else (
            f"the backup stopped unexpectedly ({type(exc).__name__})")
        if "id" not in started:
            if isinstance(exc, TargetError):
                raise BackupError(message) from None
            raise
        # started, then lost the target (or worse): no entry may stay "running", no partial file behind
        remove_local(started["partial"])
        message = target.scrub(message)
        _update(store, started["id"], only_if_status="running", status="failed", error=message,
                finished_at=_now())
        raise BackupFailed(message, _load(store, started["id"])) from None


@dataclass(frozen=True)
class _Facts:
    """What the target says, in the dump's own snapshot, before anything is recorded."""

    server_version: str
    database_size: int
    tools: Tools
    existing: list[str]          # every user table
    chosen: list[str]            # kind "tables": the tables asked for, validated
    counted: list[str]           # the tables whose rows are counted (and must have data in the archive)
    fmt: str                     # custom | directory | plain
    revision: list[str] | None
    snapshot: str
    columns: dict[str, list[list[str]]] = field(default_factory=dict)   # per counted table: [name, type]


def _read_facts(conn: psycopg.Connection, env: Environment, name: str, kind: str, tables: Sequence[str],
                project: AlembicProject) -> _Facts:
    """In the REPEATABLE READ transaction: versions (tools refused here), tables (unknown ones
    refused here), size (format), Alembic revision, then the exported snapshot pg_dump will use."""
    version_num, server_version, db_size = conn.execute(
        "SELECT current_setting('server_version_num')::int, current_setting('server_version'), "
        "pg_database_size(current_database())").fetchone()
    try:
        tools = select_tools(env.pg_bin_dir, version_num, server_version, name)
    except ToolError as exc:
        raise BackupError(str(exc)) from None
    existing = _user_tables(conn)
    chosen = resolve_tables(tables, existing, name) if kind == "tables" else []
    counted = chosen if kind == "tables" else (existing if kind == "full" else [])
    if kind == "tables":
        dump_size = sum(conn.execute(sql.SQL("SELECT pg_total_relation_size({})").format(
            sql.Literal(_ident(t).as_string(conn)))).fetchone()[0] for t in chosen)
    else:
        dump_size = db_size
    fmt = "plain" if kind == "schema" else (
        "directory" if dump_size > env.backups.parallel_above_bytes else "custom")
    try:
        revision: list[str] | None = project.current(conn)
    except (RevisionError, psycopg.Error):
        revision = None
    snapshot = conn.execute("SELECT pg_export_snapshot()").fetchone()[0]
    return _Facts(server_version=server_version, database_size=db_size, tools=tools, existing=existing,
                  chosen=chosen, counted=counted, fmt=fmt, revision=revision, snapshot=snapshot,
                  columns=_table_columns(conn, counted))


class _Attempt:
    """One backup from the moment it is catalogued: every way out verifies it or fails it, and a
    failure removes the partial archive first. Also what the progress ticker measures."""

    def __init__(self, store, target: Target, backup_id: int, partial: Path, fmt: str, started_clock: float):
        self.store, self.target, self.id, self.partial, self.fmt = store, target, backup_id, partial, fmt
        self.started_clock = started_clock
        self.state: dict[str, Any] = {"bytes": 0, "pid": None, "phase": "dump"}

    def measure(self) -> tuple[int, str, int | None, int | None]:
        state = self.state
        dumping_directory = self.fmt == "directory" and state["phase"] == "dump"
        return (size_so_far(self.partial) if dumping_directory else state["bytes"]), state["phase"], self.id, \
            state["pid"]

    def moved(self, n: int) -> None:
        self.state["bytes"] += n

    def fail(self, message: str, level: str = "none") -> BackupFailed:
        remove_local(self.partial)
        message = self.target.scrub(message)
        _update(self.store, self.id, status="failed", level=level, error=message, finished_at=_now(),
                duration_seconds=round(time.monotonic() - self.started_clock, 3))
        return BackupFailed(message, _load(self.store, self.id))


def _backup_locked(name: str, env: Environment, store, target: Target, storage: Storage, *, kind: str,
                   tables: Sequence[str], verify: str, actor: str, reason: str,
                   progress: ProgressCallback | None, progress_every: float,
                   project: AlembicProject, started: dict[str, Any]) -> Backup:
    started_clock = time.monotonic()
    started_at = _now()
    storage.remove_stale_partials(STALE_PARTIAL_SECONDS)
    _fail_interrupted(store, name)
    with target.connect("backup", statement_timeout="0", lock_timeout=env.backups.lock_wait_timeout,
                        autocommit=False) as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        facts = _read_facts(conn, env, name, kind, tables, project)
        stem, suffix = _archive_name(kind, facts.fmt, started_at)
        try:
            archive_name = storage.unique_name(stem, suffix)
            partial = storage.partial_path(archive_name)
        except StorageError as exc:
            raise BackupError(str(exc)) from None
        jobs = _jobs(env) if facts.fmt == "directory" else 1
        backup_id = _insert(
            store, environment=name, kind=kind, format=facts.fmt, reason=reason, status="running", level="none",
            name=archive_name, location=storage.location_of(archive_name), started_at=started_at,
            server_version=facts.server_version, tool_version=facts.tools.pg_dump.version,
            revision=facts.revision, tables=list(facts.chosen) if kind == "tables" else list(facts.existing),
            row_counts={}, actor=actor,
            details={"jobs": jobs, "verify": verify, "database_size_bytes": facts.database_size,
                     "columns": facts.columns})
        started.update(id=backup_id, partial=partial)
        attempt = _Attempt(store, target, backup_id, partial, facts.fmt, started_clock)
        conninfo, password = conninfo_without_password(env.dsn, purpose="pg_dump")
        with client_env(password) as tool_env, _Ticker(progress, progress_every, started_clock, attempt.measure):
            outcome, counts = _dump_and_count(conn, attempt, facts, env, kind, jobs, conninfo, tool_env, storage)
            attempt.state["phase"] = "verify"
            level, toc = _climb_ladder(attempt, facts, env, kind, verify, jobs, outcome, counts, tool_env)
            if outcome is not None:
                sha256, size = outcome.sha256, outcome.bytes_written
            else:
                sha256, size = sha256_directory(partial), archive_size(partial)
            attempt.state.update(phase="upload" if storage.is_url else "publish", bytes=0)
            try:
                location = storage.publish(partial, archive_name, attempt.moved)
            except StorageError as exc:
                raise attempt.fail(str(exc), level)

    record = _archive_record(toc)
    if kind != "full":                    # only a full restore drops what its backup does not hold
        del record["objects"]
    _update(store, backup_id, status="verified", level=level, location=location, size_bytes=size,
            sha256=sha256, finished_at=_now(), duration_seconds=round(time.monotonic() - started_clock, 3),
            tables=sorted(toc.get("TABLE", set())) if kind != "tables" else list(facts.chosen), row_counts=counts,
            details={**_load(store, backup_id).details, **record})
    result = _load(store, backup_id)
    kept: dict[int, str] = {}
    try:
        expired = apply_retention(name, env, store, storage=storage, kept=kept)
    except Exception as exc:   # retention is housekeeping: the backup itself stands
        log.warning("retention failed on %s: %s", name, redact(str(exc)))
        expired = []
    if expired or kept:
        _update(store, backup_id, details={**result.details, "expired": [b.id for b in expired],
                                           "retention_kept": {str(k): v for k, v in kept.items()}})
        result = _load(store, backup_id)
    return result


def _dump_and_count(conn: psycopg.Connection, attempt: _Attempt, facts: _Facts, env: Environment, kind: str,
                    jobs: int, conninfo: str, tool_env: dict[str, str],
                    storage: Storage) -> tuple[_StreamOutcome | None, dict[str, int]]:
    """pg_dump in the exported snapshot while the same snapshot's rows are counted on `conn`;
    (the stream's outcome, or None for a directory dump; the counts). Fails the attempt on any error."""
    lock_wait = env.backups.lock_wait_timeout
    argv = [str(facts.tools.pg_dump.path), f"--dbname={conninfo}", f"--format={facts.fmt}", "--no-password",
            f"--lock-wait-timeout={lock_wait}", f"--snapshot={facts.snapshot}"]
    if kind == "schema":
        argv.append("--schema-only")
    argv += [f"--table={_table_pattern(t)}" for t in facts.chosen]
    counts: dict[str, int] = {}
    count_error: list[str] = []

    def count_in_snapshot() -> None:      # conn is this thread's alone until it is joined
        try:
            counts.update(_count_rows(conn, facts.counted))
        except psycopg.Error as exc:
            count_error.append(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)

    counter = threading.Thread(target=count_in_snapshot, name="backup-count", daemon=True)
    counter.start()
    partial = attempt.partial
    try:
        if facts.fmt == "directory":
            rc, _out, err = _run_tool(argv + [f"--jobs={jobs}", f"--file={partial}"], tool_env, state=attempt.state)
            outcome = None
        else:
            verify_argv = None if facts.fmt == "plain" else [
                str(facts.tools.pg_restore.path), "--file=/dev/null", "--format=custom"]
            outcome = _stream_dump(argv, tool_env, partial, verify_argv=verify_argv, plain=facts.fmt == "plain",
                                   state=attempt.state)
            rc, err = outcome.returncode, outcome.stderr
    except OSError as exc:
        counter.join()
        raise attempt.fail(f"could not write the backup in {storage.staging}: {exc.strerror or exc}")
    counter.join()
    conn.rollback()                       # the snapshot's transaction may end: pg_dump is done with it

    written = outcome.bytes_written if outcome else size_so_far(partial)
    disk_error = outcome.disk_error if outcome is not None else None
    if (disk_error is not None and disk_error.errno in (errno.ENOSPC, errno.EDQUOT)) or "No space left" in err:
        raise attempt.fail(f"disk full: no space left in {storage.staging} after {human_size(written)} "
                           f"({human_size(storage.free_bytes())} free); nothing was kept — free space or point "
                           "backups.dir elsewhere")
    if disk_error is not None:
        raise attempt.fail(f"could not write the backup in {storage.staging}: {disk_error.strerror or disk_error}")
    if rc < 0:
        raise attempt.fail(f"pg_dump was killed ({_signal_name(rc)}) after {human_size(written)}; nothing was kept")
    if rc != 0:
        raise attempt.fail(_dump_failure(err, lock_wait))
    if count_error:
        reason = count_error[0]
        if "lock timeout" in reason:
            raise attempt.fail(_dump_failure(reason, lock_wait))
        raise attempt.fail(f"could not count rows in the dump's snapshot: {reason}")
    return outcome, counts


def _climb_ladder(attempt: _Attempt, facts: _Facts, env: Environment, kind: str, verify: str, jobs: int,
                  outcome: _StreamOutcome | None, counts: dict[str, int],
                  tool_env: dict[str, str]) -> tuple[str, dict[str, set[str]]]:
    """toc < full < restore on the partial archive: (level reached, its TOC by kind, see _toc_entries).
    A rung that fails fails the attempt, with the level below it recorded."""
    partial, pg_restore = attempt.partial, str(facts.tools.pg_restore.path)
    level = "none"
    if facts.fmt == "plain":
        if outcome is None or not outcome.plain_ok:
            raise attempt.fail("the schema dump is incomplete: it lacks pg_dump's closing line", level)
        level, toc = "full", {"TABLE": set(facts.existing)}
    else:
        rc, listing, err = _run_tool([pg_restore, "--list", str(partial)], tool_env)
        if rc != 0:
            raise attempt.fail(f"TOC read failed (pg_restore --list): {_first_error(err, 'pg_restore')}", level)
        toc = _toc_entries(listing)
        missing = [t for t in facts.counted if t not in toc.get("TABLE DATA", set())]
        if missing:
            raise attempt.fail(f"TOC read: the archive has no data for {', '.join(_plain(t) for t in missing[:5])}",
                               level)
        level = "toc"
        if outcome is not None:           # custom: read in full while it streamed
            rc, err = outcome.verifier_rc, outcome.verifier_stderr
        else:
            rc, _out, err = _run_tool([pg_restore, "--file=/dev/null", f"--jobs={jobs}", str(partial)], tool_env,
                                      state=attempt.state)
        if rc != 0:
            raise attempt.fail(f"full read failed (pg_restore -f /dev/null): {_first_error(err, 'pg_restore')}",
                               level)
        level = "full"
    if verify == "restore":
        problem = _verify_by_restore(attempt.target, facts.tools, tool_env, env, partial, kind=kind, fmt=facts.fmt,
                                     expected=counts, expected_tables=sorted(toc.get("TABLE", set())),
                                     state=attempt.state)
        if problem:
            raise attempt.fail(f"restore check failed: {problem}", level)
        level = "restore"
    return level, toc
