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
"""
from __future__ import annotations

import dataclasses
import errno
import hashlib
import logging
import os
import re
import secrets
import signal
import subprocess
import tempfile
import threading
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from sqlalchemy import select, update

from runbook import guard
from runbook.config import Environment
from runbook.pgtools import Tools, ToolError, client_env, conninfo_without_password, select_tools
from runbook.revisions import AlembicProject, RevisionError
from runbook.state.backups import last_backup_at, latest_verified_row
from runbook.state.models import BackupRow, as_utc
from runbook.storage import (CHUNK, PARTIAL_PREFIX, Storage, StorageError, archive_size, remove_local, sha256_directory,
                             size_so_far)
from runbook.target import Target, TargetError, redact
from runbook.tether import tethered
from runbook.units import human_size

log = logging.getLogger(__name__)

KINDS = ("full", "schema", "tables")
LEVELS = ("none", "toc", "full", "restore")
VERIFY_LEVELS = ("full", "restore")
# Partials older than this are leftovers of a crashed run (newer ones may belong to a run on
# another environment that shares the directory).
STALE_PARTIAL_SECONDS = 6 * 3600
PLAIN_HEADER = b"-- PostgreSQL database dump"
PLAIN_TRAILER = b"-- PostgreSQL database dump complete"
SCRATCH_PREFIX = "runbook_bot_verify_"
_TABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]{0,62}(\.[A-Za-z_][A-Za-z0-9_$]{0,62})?$")


class BackupError(Exception):
    """A backup or restore was refused or failed; one line for a human, no secrets."""


class BackupFailed(BackupError):
    """The backup ran and failed (dump or a verification rung); `backup` is its catalogue entry."""

    def __init__(self, message: str, backup: "Backup"):
        super().__init__(message)
        self.backup = backup


# ---------------------------------------------------------------------------
# What the engine returns


@dataclass(frozen=True)
class Backup:
    """One catalogue entry."""

    id: int
    environment: str
    kind: str                    # full | schema | tables
    format: str                  # custom | directory | plain
    reason: str                  # manual | safety | migrate
    status: str                  # running | verified | failed | expired
    level: str                   # none | toc | full | restore: the highest rung passed
    name: str
    location: str
    size_bytes: int | None
    sha256: str | None
    started_at: datetime
    finished_at: datetime | None
    duration_seconds: float | None
    server_version: str | None
    tool_version: str | None
    revision: list[str] | None   # Alembic revision(s) at dump time; None when unknown
    tables: list[str]            # schema.table: what the archive holds (kind tables: what was asked)
    row_counts: dict[str, int]   # per table, counted in the dump's own snapshot
    actor: str
    error: str | None
    details: dict[str, Any]

    @property
    def restorable(self) -> bool:
        return self.status == "verified" and self.kind != "schema"

    @classmethod
    def of(cls, row: BackupRow) -> "Backup":
        return cls(id=row.id, environment=row.environment, kind=row.kind, format=row.format, reason=row.reason,
                   status=row.status, level=row.level, name=row.name, location=row.location,
                   size_bytes=row.size_bytes, sha256=row.sha256, started_at=as_utc(row.started_at),
                   finished_at=as_utc(row.finished_at), duration_seconds=row.duration_seconds,
                   server_version=row.server_version, tool_version=row.tool_version,
                   revision=list(row.revision) if row.revision is not None else None,
                   tables=list(row.tables or []), row_counts=dict(row.row_counts or {}), actor=row.actor,
                   error=row.error, details=dict(row.details or {}))


@dataclass(frozen=True)
class Progress:
    """What a progress callback receives about once a second."""

    elapsed: float               # seconds since the operation started
    bytes_written: int           # archive bytes so far (phase "dump"), or bytes moved (others)
    phase: str                   # dump | verify | upload | fetch | safety backup | restore
    backup_id: int | None = None
    pid: int | None = None       # the running pg_dump / pg_restore, when there is one


ProgressCallback = Callable[[Progress], None]


@dataclass(frozen=True)
class DumpSession:
    pid: int
    application: str
    user: str | None
    seconds: float
    query: str


@dataclass(frozen=True)
class TableChange:
    table: str
    rows_now: int | None         # None: the table does not exist in the target now
    rows_in_backup: int | None   # None: not in the backup (action "drop")
    action: str                  # replace | create | drop


@dataclass(frozen=True)
class RestorePlan:
    environment: str
    target: str                   # host/db label
    backup: Backup
    mode: str                     # full | tables
    tables: list[str]             # the tables the restore writes
    current_revision: list[str]   # pass this as restore(expected_revision=...)
    backup_revision: list[str] | None
    changes: list[TableChange]
    warnings: list[str]
    blockers: list[str]           # non-empty: restore() will refuse, for these reasons
    # full: the views and other objects created since the backup, dropped in this order (tables: `changes`)
    dropped: list[CatalogObject] = field(default_factory=list)

    @property
    def allowed(self) -> bool:
        return not self.blockers


@dataclass(frozen=True)
class RestoreResult:
    environment: str
    backup: Backup
    safety_backup: Backup
    mode: str
    tables: list[str]
    revision_before: list[str]
    revision_after: list[str]
    row_counts_after: dict[str, int]
    mismatches: dict[str, tuple[int | None, int | None]]   # table -> (in the backup, after the restore)
    duration_seconds: float
    run_id: str | None = None     # the runs row it was recorded as


# A restore run's step (runs.step, shown when it is interrupted) for each phase of the restore.
RESTORE_STEPS = {"lock": "taking the operation lock", "fetch": "checking the archive",
                 "safety backup": "safety backup", "restore": "restore"}


def backup_to_json(item: Backup) -> dict[str, Any]:
    """The CLI's --json contract for one catalogue entry (README documents it)."""
    return {
        "id": item.id, "environment": item.environment, "kind": item.kind, "format": item.format,
        "reason": item.reason, "status": item.status, "level": item.level, "restorable": item.restorable,
        "name": item.name, "location": item.location, "size_bytes": item.size_bytes, "sha256": item.sha256,
        "started_at": item.started_at.isoformat() if item.started_at else None,
        "finished_at": item.finished_at.isoformat() if item.finished_at else None,
        "duration_seconds": item.duration_seconds, "server_version": item.server_version,
        "pg_dump_version": item.tool_version, "revision": item.revision, "tables": list(item.tables),
        "row_counts": dict(item.row_counts), "actor": item.actor, "error": item.error,
    }


# ---------------------------------------------------------------------------
# The catalogue


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


# ---------------------------------------------------------------------------
# Introspection of the target

# User relations of the given kinds ('r' tables; 'v', 'm' views), not the catalogs', not extensions'.
RELATIONS_SQL = """
SELECT n.nspname, c.relname, c.relkind
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind = ANY(%s)
   AND n.nspname NOT IN ('pg_catalog', 'information_schema')
   AND n.nspname NOT LIKE 'pg\\_toast%%' AND n.nspname NOT LIKE 'pg\\_temp\\_%%'
   AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                    AND d.objid = c.oid AND d.deptype = 'e')
 ORDER BY 1, 2
"""

# Foreign keys between tables: restore order, and tables a table restore would touch.
FOREIGN_KEYS_SQL = """
SELECT cn.nspname || '.' || c.relname AS referencing, pn.nspname || '.' || p.relname AS referenced,
       k.conname, k.confdeltype
  FROM pg_constraint k
  JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace cn ON cn.oid = c.relnamespace
  JOIN pg_class p ON p.oid = k.confrelid JOIN pg_namespace pn ON pn.oid = p.relnamespace
 WHERE k.contype = 'f'
"""

OWNED_SEQUENCES_SQL = """
SELECT s.relname
  FROM pg_depend d JOIN pg_class s ON s.oid = d.objid
 WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
   AND d.refobjid = %s::regclass AND s.relkind = 'S' AND d.deptype IN ('a', 'i')
"""

DUMP_SESSIONS_SQL = """
SELECT pid, coalesce(application_name, ''), usename,
       extract(epoch FROM now() - backend_start)::float8, coalesce(query, '')
  FROM pg_stat_activity
 WHERE pid <> pg_backend_pid() AND backend_type = 'client backend'
   AND datname = current_database()
   AND (application_name = 'pg_dump'
        OR starts_with(application_name, 'runbook-bot/pg_dump')
        OR (state = 'active' AND query ~* '^\\s*COPY\\s.*\\sTO\\s+stdout'))
 ORDER BY backend_start
"""


def dump_in_progress(conn: psycopg.Connection) -> list[DumpSession]:
    """Every session of a pg_dump on this database, the bot's or anyone's (postgres.md §5): a
    migration must not start while one runs (its ALTER would abort a parallel dump or wait)."""
    return [DumpSession(pid=r[0], application=r[1], user=r[2], seconds=float(r[3] or 0), query=r[4])
            for r in conn.execute(DUMP_SESSIONS_SQL).fetchall()]


def _user_tables(conn: psycopg.Connection) -> list[str]:
    return [f"{schema}.{name}" for schema, name, _kind in conn.execute(RELATIONS_SQL, [["r"]]).fetchall()]


# Partitioned parents and their leaf partitions.
PARTITIONS_SQL = """
SELECT pn.nspname || '.' || p.relname AS parent, ln.nspname || '.' || l.relname AS leaf
  FROM pg_class p JOIN pg_namespace pn ON pn.oid = p.relnamespace
  LEFT JOIN LATERAL pg_partition_tree(p.oid) t ON t.isleaf
  LEFT JOIN pg_class l ON l.oid = t.relid
  LEFT JOIN pg_namespace ln ON ln.oid = l.relnamespace
 WHERE p.relkind = 'p' AND pn.nspname NOT IN ('pg_catalog', 'information_schema')
 ORDER BY 1, 2
"""


def _partitioned_tables(conn: psycopg.Connection) -> dict[str, list[str]]:
    """Partitioned parents -> their leaf partitions: the rows live in the leaves (user tables)."""
    found: dict[str, list[str]] = {}
    for parent, leaf in conn.execute(PARTITIONS_SQL).fetchall():
        found.setdefault(parent, []).extend([leaf] if leaf else [])
    return found


def _partitioned_refusal(chosen: Sequence[str], parents: dict[str, list[str]], item: Backup) -> str | None:
    """A table restore replaces rows: a partitioned parent holds none, its partitions do."""
    asked = [t for t in chosen if t in parents]
    if not asked:
        return None
    leaves = [leaf for t in asked for leaf in parents[t] if leaf in item.tables]
    hint = f" ({', '.join(_plain(t) for t in leaves[:10])})" if leaves else ""
    return f"{', '.join(_plain(t) for t in asked)} is partitioned: its rows live in its partitions; restore those{hint}"


def _user_views(conn: psycopg.Connection) -> list[tuple[str, str]]:
    """(schema.name, relkind) of views ('v') and materialized views ('m')."""
    return [(f"{schema}.{name}", kind) for schema, name, kind in conn.execute(RELATIONS_SQL, [["v", "m"]]).fetchall()]


# Schemas, types, domains, functions, procedures, aggregates and standalone sequences: what a full
# restore must also drop when they were created after the backup, since pg_restore --clean drops only
# what the archive holds. Never a candidate, as pg_dump never dumps them on their own: the system's
# schemas (pg_*, information_schema), public (pg_dump takes it as given), an extension's members or a
# schema an extension lives in, what is part of another object (deptype 'i': the row type of a table,
# array and multirange types, range constructors), sequences owned by a column (deptype 'a'/'i': they
# go with their table). `tag` is the name as pg_dump's TOC gives it: functions as name(argument types),
# the types by format_type, which qualifies them as pg_dump's does only under search_path = ''.
CATALOG_OBJECTS_SQL = """
WITH user_schemas AS (
  SELECT n.oid, n.nspname FROM pg_namespace n
   WHERE n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema'
), parts AS (
  SELECT classid, objid FROM pg_depend WHERE deptype IN ('e', 'i')
)
SELECT 'schema', n.nspname::text, n.nspname::text, n.nspname::text, ''
  FROM user_schemas n
 WHERE n.nspname <> 'public'
   AND NOT EXISTS (SELECT 1 FROM parts p WHERE p.classid = 'pg_namespace'::regclass AND p.objid = n.oid)
   AND NOT EXISTS (SELECT 1 FROM pg_depend d
                    WHERE d.refclassid = 'pg_namespace'::regclass AND d.refobjid = n.oid
                      AND (d.classid = 'pg_extension'::regclass
                           OR EXISTS (SELECT 1 FROM pg_depend e WHERE e.classid = d.classid AND e.objid = d.objid
                                         AND e.deptype = 'e')))
UNION ALL
SELECT CASE t.typtype WHEN 'd' THEN 'domain' ELSE 'type' END, n.nspname::text, t.typname::text, t.typname::text, ''
  FROM pg_type t JOIN user_schemas n ON n.oid = t.typnamespace
 WHERE t.typtype IN ('b', 'c', 'd', 'e', 'r')
   AND (t.typrelid = 0 OR EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = t.typrelid AND c.relkind = 'c'))
   AND NOT EXISTS (SELECT 1 FROM parts p WHERE p.classid = 'pg_type'::regclass AND p.objid = t.oid)
UNION ALL
SELECT CASE f.prokind WHEN 'p' THEN 'procedure' WHEN 'a' THEN 'aggregate' ELSE 'function' END,
       n.nspname::text, f.proname::text,
       f.proname || '(' || CASE WHEN f.prokind = 'a' AND f.pronargs = 0 THEN '*' ELSE coalesce(
           (SELECT string_agg(format_type(a.type, NULL), ', ' ORDER BY a.position)
              FROM unnest(f.proargtypes) WITH ORDINALITY AS a(type, position)), '') END || ')',
       CASE WHEN f.prokind = 'a' AND f.pronargs = 0 THEN '*' ELSE pg_get_function_identity_arguments(f.oid) END
  FROM pg_proc f JOIN user_schemas n ON n.oid = f.pronamespace
 WHERE f.prokind IN ('f', 'p', 'w', 'a')
   AND NOT EXISTS (SELECT 1 FROM parts p WHERE p.classid = 'pg_proc'::regclass AND p.objid = f.oid)
UNION ALL
SELECT 'sequence', n.nspname::text, s.relname::text, s.relname::text, ''
  FROM pg_class s JOIN user_schemas n ON n.oid = s.relnamespace
 WHERE s.relkind = 'S'
   AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = s.oid
                      AND d.deptype IN ('e', 'i', 'a'))
"""

# pg_restore --list's word for each kind; also the order a full restore drops them in, after the
# views and tables: what may use a type (functions, domains over it) before the type, schemas last.
VIEW_KINDS = ("view", "materialized view")
OBJECT_KINDS = {"function": "FUNCTION", "procedure": "PROCEDURE", "aggregate": "AGGREGATE", "domain": "DOMAIN",
                "type": "TYPE", "sequence": "SEQUENCE", "schema": "SCHEMA"}


@dataclass(frozen=True)
class CatalogObject:
    """One object a full restore may drop: a view, or one of OBJECT_KINDS."""

    kind: str                    # view | materialized view | function | procedure | aggregate | domain | ...
    schema: str
    name: str                    # the bare name
    tag: str                     # as pg_dump's TOC names it: functions with their argument types
    identity: str = ""           # functions, procedures, aggregates: the arguments DROP needs (server-made SQL)

    @property
    def key(self) -> str:
        """How the backup's record names it: schema.tag, a schema by its name."""
        return self.tag if self.kind == "schema" else f"{self.schema}.{self.tag}"

    @property
    def shown(self) -> str:
        return _plain(self.key)

    def drop(self, conn: psycopg.Connection) -> str:
        """DROP ... IF EXISTS ... CASCADE: an earlier drop may have taken it along already. CASCADE
        reaches what depends on it: created since the backup too, or held by the archive, which
        pg_restore recreates (rows included) in the same transaction. It would also take a whole
        extension along with one of its members, which is why no candidate holds one."""
        target = sql.Identifier(self.name) if self.kind == "schema" else sql.Identifier(self.schema, self.name)
        if self.identity:
            target = sql.SQL("{}({})").format(target, sql.SQL(self.identity))
        return sql.SQL("DROP {} IF EXISTS {} CASCADE;").format(sql.SQL(self.kind.upper()), target).as_string(conn)


def _catalog_objects(conn: psycopg.Connection) -> list[CatalogObject]:
    with conn.transaction():
        conn.execute("SET LOCAL search_path = ''")      # format_type then qualifies as pg_dump's tags do
        found = conn.execute(CATALOG_OBJECTS_SQL).fetchall()
    return [CatalogObject(kind=kind, schema=schema, name=name, tag=tag, identity=identity)
            for kind, schema, name, tag, identity in found]


def _records_objects(item: Backup) -> bool:
    """Backups taken before the record of OBJECT_KINDS was kept have none: nothing of those kinds is dropped."""
    return isinstance(item.details.get("objects"), dict)


def _created_since(conn: psycopg.Connection, item: Backup) -> list[CatalogObject]:
    """The views and the objects of OBJECT_KINDS that `item` does not hold, in the order a full restore
    drops them (tables are dropped after the views, before the rest)."""
    held_views = set(item.details.get("views", []))
    later = [CatalogObject(kind="materialized view" if relkind == "m" else "view", schema=schema, name=name, tag=name)
             for view, relkind in _user_views(conn) if view not in held_views for schema, name in [_split(view)]]
    if _records_objects(item):
        held = {kind: set(keys) for kind, keys in item.details["objects"].items()}
        order = list(OBJECT_KINDS)
        later += sorted((o for o in _catalog_objects(conn) if o.key not in held.get(o.kind, ())),
                        key=lambda o: (order.index(o.kind), o.key))
    return later


def _split(table: str) -> tuple[str, str]:
    schema, _, name = table.partition(".")
    return schema, name


def _ident(table: str) -> sql.Composed:
    schema, name = _split(table)
    return sql.Identifier(schema, name)


def _plain(table: str) -> str:
    """How a table is shown: without `public.`."""
    return table[len("public."):] if table.startswith("public.") else table


def resolve_tables(requested: Sequence[str], existing: Sequence[str], where: str) -> list[str]:
    """Validate user-supplied names against what exists: schema.table, or a bare name found in
    exactly one schema. BackupError names the unknown table and what there is."""
    resolved: list[str] = []
    for raw in requested:
        name = str(raw).strip()
        if not _TABLE_NAME.match(name):
            shown = name if len(name) <= 40 else name[:40] + "…"
            raise BackupError(f"'{shown}' is not a table name: use table or schema.table")
        if "." in name:
            matches = [t for t in existing if t == name]
        else:
            matches = [t for t in existing if _split(t)[1] == name]
        if not matches:
            known = ", ".join(_plain(t) for t in existing[:15]) + (" …" if len(existing) > 15 else "")
            raise BackupError(f"unknown table '{name}' in {where}; tables: {known or 'none'}")
        if len(matches) > 1:
            raise BackupError(f"table '{name}' exists in several schemas ({', '.join(matches)}): "
                              "name it as schema.table")
        if matches[0] not in resolved:
            resolved.append(matches[0])
    return resolved


def _count_rows(conn: psycopg.Connection, tables: Sequence[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    tables = list(tables)
    for start in range(0, len(tables), 100):
        part = tables[start:start + 100]
        query = sql.SQL(" UNION ALL ").join(
            sql.SQL("SELECT {}, count(*) FROM {}").format(sql.Literal(t), _ident(t)) for t in part)
        for table, count in conn.execute(query).fetchall():
            counts[table] = int(count)
    return counts


# Each table's columns as the database defines them now: name and type, in order (dropped ones left out).
COLUMNS_SQL = """
SELECT a.attname, format_type(a.atttypid, a.atttypmod)
  FROM pg_attribute a
 WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped
 ORDER BY a.attnum
"""


def _table_columns(conn: psycopg.Connection, tables: Sequence[str]) -> dict[str, list[list[str]]]:
    """table -> [[column, type], ...]: what a table restore compares with the live definition."""
    return {t: [[name, kind] for name, kind in conn.execute(COLUMNS_SQL, (t,)).fetchall()] for t in tables}


def definition_changes(conn: psycopg.Connection, item: Backup, tables: Sequence[str]) -> dict[str, str] | None:
    """table -> how its definition changed since `item` was taken ("added since: note"), for the tables
    that changed; None when the backup recorded no definitions (taken before they were recorded)."""
    recorded = item.details.get("columns")
    if not isinstance(recorded, dict):
        return None
    names = {t: t if t in recorded else next((r for r in recorded if r.partition(".")[2] == t), t) for t in tables}
    live = _table_columns(conn, [n for n in names.values() if n in recorded])
    changes: dict[str, str] = {}
    for table, name in names.items():
        if name not in recorded or not live.get(name):
            continue
        then, now = dict(map(tuple, recorded[name])), dict(map(tuple, live[name]))
        added = [c for c in now if c not in then]
        dropped = [c for c in then if c not in now]
        retyped = [f"{c} ({then[c]} -> {now[c]})" for c in then if c in now and then[c] != now[c]]
        parts = ([f"added since: {', '.join(added)}"] if added else []) + \
                ([f"dropped since: {', '.join(dropped)}"] if dropped else []) + \
                ([f"retyped: {', '.join(retyped)}"] if retyped else [])
        if parts:
            changes[table] = "; ".join(parts)
    return changes


def _definition_refusals(conn: psycopg.Connection, item: Backup, chosen: Sequence[str], current: Sequence[str],
                         name: str) -> list[str]:
    """Why a table restore of `chosen` from `item` must be refused: a table restore replaces rows only, so
    a table whose definition changed since the backup (a column added, dropped or retyped) would be left
    with every value of the new column NULL or the restore would fail half-way. Backups that recorded
    no definitions are compared by revision instead."""
    changes = definition_changes(conn, item, chosen)
    if changes is None:
        if item.revision is not None and sorted(item.revision) == sorted(current):
            return []
        return [f"backup #{item.id} was taken at {', '.join(item.revision or []) or 'an unrecorded revision'}, "
                f"{name} is at {', '.join(current) or 'no revision'}, and it did not record its table definitions: "
                "a table restore cannot tell whether they still match; use a full restore, or a backup taken at "
                "the current revision"]
    return [f"{_plain(table)} is not defined as it was in backup #{item.id} ({change}): a table restore replaces "
            "rows only and would leave those columns wrong; use a full restore, or take a backup at the current "
            "revision" for table, change in changes.items()]


def _foreign_keys(conn: psycopg.Connection) -> list[tuple[str, str, str, str]]:
    return [tuple(r) for r in conn.execute(FOREIGN_KEYS_SQL).fetchall()]


def _parents_first(tables: Sequence[str], fks: Sequence[tuple[str, str, str, str]]) -> list[str]:
    """Referenced tables before the tables referencing them (cycles keep their given order)."""
    chosen = list(tables)
    needs = {t: {ref for (src, ref, _n, _d) in fks if src == t and ref in chosen and ref != t} for t in chosen}
    ordered: list[str] = []
    while needs:
        ready = [t for t in chosen if t in needs and not (needs[t] - set(ordered))]
        if not ready:                      # a cycle: take the rest as they are
            ordered += [t for t in chosen if t in needs]
            break
        for t in ready:
            ordered.append(t)
            del needs[t]
    return ordered


# ---------------------------------------------------------------------------
# Small helpers


def _now() -> datetime:
    return datetime.now(timezone.utc)


def target_of(env: Environment) -> Target:
    return Target(env.dsn, connect_timeout=env.connect_timeout_seconds)


def project_of(env: Environment) -> AlembicProject:
    from runbook.precheck import project_of as precheck_project_of

    return precheck_project_of(env)


def _jobs(env: Environment) -> int:
    return env.backups.jobs or max(1, os.cpu_count() or 1)


def _first_error(text: str, tool: str) -> str:
    """The line that says what went wrong in a client tool's stderr."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for marker in (f"{tool}: error:", "ERROR:", "FATAL:", "error:"):
        for line in lines:
            if marker in line:
                return line
    return lines[-1] if lines else "no message"


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


def _table_pattern(table: str) -> str:
    """A --table pattern that matches exactly this table (quoted: no wildcards, case kept)."""
    schema, name = _split(table)
    return '"' + schema.replace('"', '""') + '"."' + name.replace('"', '""') + '"'


class _Ticker:
    """Calls the progress callback about every `every` seconds from its own thread until stopped.
    A failing callback is logged once and never stops the operation."""

    def __init__(self, callback: ProgressCallback | None, every: float, started: float,
                 measure: Callable[[], tuple[int, str, int | None, int | None]]):
        self.callback = callback
        self.every = every
        self.started = started
        self.measure = measure
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="backup-progress", daemon=True)
        self._warned = False

    def __enter__(self) -> "_Ticker":
        if self.callback is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                written, phase, backup_id, pid = self.measure()
                self.callback(Progress(elapsed=time.monotonic() - self.started, bytes_written=written,
                                       phase=phase, backup_id=backup_id, pid=pid))
            except Exception as exc:  # progress is a courtesy: never let it break a backup
                if not self._warned:
                    log.warning("progress callback failed: %s", redact(repr(exc)))
                    self._warned = True


@contextmanager
def _operation_lock(target: Target, name: str, operation: str, lock: guard.Held | None) -> Iterator[guard.Held]:
    if lock is not None:
        yield lock
        return
    try:
        with guard.exclusive(target, name, operation) as held:
            yield held
    except guard.OperationRunning as exc:
        raise BackupError(str(exc)) from None


# ---------------------------------------------------------------------------
# Running the client tools


@dataclass
class _StreamOutcome:
    returncode: int
    bytes_written: int
    sha256: str
    stderr: str
    verifier_rc: int | None
    verifier_stderr: str
    plain_ok: bool | None          # plain format: header and trailer seen
    disk_error: OSError | None


def _read_tmp(handle) -> str:
    handle.flush()
    handle.seek(0)
    return handle.read().decode("utf-8", "replace")


def _open_partial(path: Path):
    """A new, private, unbuffered file for the archive (never an existing one)."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb", buffering=0)


def _stream_dump(argv: list[str], env: dict[str, str], out_path: Path, *, verify_argv: list[str] | None,
                 plain: bool, state: dict[str, Any]) -> _StreamOutcome:
    """pg_dump -> (sha256, out_path, pg_restore -f /dev/null) in CHUNK pieces, never whole in memory.

    A write error on out_path (disk full) stops pg_dump at once; `state` carries the byte count
    and pid for the progress ticker."""
    digest = hashlib.sha256()
    written = 0
    head = b""
    tail = b""
    disk_error: OSError | None = None
    with tempfile.TemporaryFile() as dump_err, tempfile.TemporaryFile() as verify_err:
        dump = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=dump_err, stdin=subprocess.DEVNULL, env=env)
        state["pid"] = dump.pid
        verifier = None
        if verify_argv is not None:
            verifier = subprocess.Popen(verify_argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                        stderr=verify_err, env=env)
        try:
            with _open_partial(out_path) as out:
                while True:
                    chunk = dump.stdout.read1(CHUNK)
                    if not chunk:
                        break
                    digest.update(chunk)
                    try:
                        view = memoryview(chunk)
                        while view:
                            view = view[out.write(view):]
                    except OSError as exc:
                        disk_error = exc
                        dump.kill()
                        break
                    written += len(chunk)
                    state["bytes"] = written
                    if plain:
                        if len(head) < 256:
                            head += chunk[:256 - len(head)]
                        tail = (tail + chunk)[-4096:]
                    if verifier is not None and verifier.stdin is not None:
                        try:
                            verifier.stdin.write(chunk)
                        except BrokenPipeError:   # the reader gave up: its exit code says why
                            verifier.stdin = None
                if disk_error is None:
                    try:
                        os.fsync(out.fileno())   # "verified" must mean on disk, not in the page cache
                    except OSError as exc:
                        disk_error = exc
        finally:
            if dump.poll() is None and disk_error is not None:
                dump.kill()
            dump.stdout.close()
            rc = dump.wait()
            verifier_rc = None
            if verifier is not None:
                if verifier.stdin is not None:
                    try:
                        verifier.stdin.close()
                    except BrokenPipeError:
                        pass
                verifier_rc = verifier.wait()
        plain_ok = None
        if plain:
            plain_ok = PLAIN_HEADER in head and PLAIN_TRAILER in tail
        return _StreamOutcome(returncode=rc, bytes_written=written, sha256=digest.hexdigest(),
                              stderr=_read_tmp(dump_err), verifier_rc=verifier_rc,
                              verifier_stderr=_read_tmp(verify_err) if verifier is not None else "",
                              plain_ok=plain_ok, disk_error=disk_error)


def _run_tool(argv: list[str], env: dict[str, str], *, timeout: float | None = None,
              state: dict[str, Any] | None = None) -> tuple[int, str, str]:
    """(returncode, stdout, stderr) of a client tool; stdout is kept (it is small: a TOC)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env)
        if state is not None:
            state["pid"] = proc.pid
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
        return rc, _read_tmp(out), _read_tmp(err)


# Longer words first: "TABLE ATTACH" (a partition) is no table named "ATTACH.…", "SEQUENCE SET" no sequence.
_TOC_KINDS = ("TABLE DATA", "TABLE ATTACH", "TABLE", "SEQUENCE OWNED BY", "SEQUENCE SET", "SEQUENCE",
              "MATERIALIZED VIEW DATA", "MATERIALIZED VIEW", "VIEW",
              *(word for word in OBJECT_KINDS.values() if word != "SEQUENCE"))
_TOC_LINE = re.compile(r"^\d+;\s+\d+\s+\d+\s+(" + "|".join(map(re.escape, _TOC_KINDS)) + r") (.*)$")


def _toc_entries(listing: str) -> dict[str, set[str]]:
    """From `pg_restore --list`: {"TABLE": {"public.expenses", ...}, "TABLE DATA": {...},
    "FUNCTION": {"public.total(integer, text)"}, "SCHEMA": {"audit"}, ...}.

    A line is `id; catalog oid KIND namespace tag owner` joined by single spaces, and names may hold
    spaces: the owner is the last word, the namespace the longest schema the archive creates that
    starts the rest (public, which it does not create, otherwise the first word)."""
    lines = [(m.group(1), m.group(2)) for m in map(_TOC_LINE.match, listing.splitlines()) if m]
    schemas = {rest[2:].rpartition(" ")[0] for kind, rest in lines if kind == "SCHEMA" and rest.startswith("- ")}
    longest_first = sorted(schemas, key=len, reverse=True)
    found: dict[str, set[str]] = {}
    for kind, rest in lines:
        if kind == "SCHEMA":
            key = rest[2:].rpartition(" ")[0]
        else:
            namespace = next((s for s in longest_first if rest.startswith(s + " ")), rest.split(" ", 1)[0])
            key = f"{namespace}.{rest[len(namespace) + 1:].rpartition(' ')[0]}"
        found.setdefault(kind, set()).add(key)
    return found


def _archive_record(toc: dict[str, set[str]]) -> dict[str, Any]:
    """What a full backup's details keep of its archive for a later full restore: its views, and its
    objects of OBJECT_KINDS (the restore drops the ones created since)."""
    return {"views": sorted(toc.get("VIEW", set()) | toc.get("MATERIALIZED VIEW", set())),
            "objects": {kind: sorted(toc.get(word, set())) for kind, word in OBJECT_KINDS.items()}}


# ---------------------------------------------------------------------------
# Backups


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


def _scratch_conninfo(dsn: str, dbname: str, purpose: str) -> tuple[str, str]:
    return conninfo_without_password(dsn, purpose=purpose, dbname=dbname)


def create_scratch(admin: Target, dbname: str) -> None:
    """An empty database `dbname` on `admin`'s server (TEMPLATE template0: nothing of template1's)."""
    with admin.connect("scratch", statement_timeout="120s") as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(dbname)))


def drop_scratch(admin: Target, dbname: str) -> str | None:
    """DROP DATABASE ... WITH (FORCE) (ends leftover sessions too); the error as one line, else None."""
    try:
        with admin.connect("scratch", statement_timeout="120s") as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname)))
    except TargetError as exc:
        log.error("could not drop the scratch database %s: %s", dbname, exc)
        return str(exc)
    return None


def restore_into_scratch(admin: Target, dbname: str, tools: Tools, tool_env: dict[str, str], archive: Path, *,
                         kind: str, fmt: str, jobs: int, state: dict[str, Any]) -> str | None:
    """Restore `archive` into the scratch database `dbname` (created by create_scratch) on `admin`'s
    server; the problem as one line, else None. `tool_env` may carry PGOPTIONS (a statement_timeout)."""
    conninfo, _password = _scratch_conninfo(admin.dsn, dbname, "pg_restore")
    if fmt == "plain":
        argv = [str(tools.psql.path), "-X", "-q", "--no-password", "-v", "ON_ERROR_STOP=1",
                f"--dbname={conninfo}", f"--file={archive}"]
        tool = "psql"
    else:
        argv = [str(tools.pg_restore.path), "--exit-on-error", "--no-owner", "--no-privileges", "--no-password",
                f"--jobs={jobs}", f"--dbname={conninfo}"]
        if kind == "tables":
            # a table's foreign keys point at tables the archive does not hold: data, not constraints
            argv += ["--section=pre-data", "--section=data"]
        argv.append(str(archive))
        tool = "pg_restore"
    rc, _out, err = _run_tool(argv, tool_env, state=state)
    if rc != 0:
        return f"{tool} into a scratch database failed: {_first_error(err, tool)}"
    return None


def scratch_target(admin: Target, dbname: str) -> Target:
    """The scratch database `dbname` on `admin`'s server, with admin's credentials."""
    return Target(make_conninfo(**{**conninfo_to_dict(admin.dsn), "dbname": dbname}),
                  connect_timeout=admin.connect_timeout)


def _verify_by_restore(target: Target, tools: Tools, tool_env: dict[str, str], env: Environment, archive: Path, *,
                       kind: str, fmt: str, expected: dict[str, int], expected_tables: list[str],
                       state: dict[str, Any]) -> str | None:
    """Restore into a scratch database on the same server and compare; None when it matches.
    The scratch database is dropped whatever happens."""
    scratch = SCRATCH_PREFIX + secrets.token_hex(6)
    create_scratch(target, scratch)
    try:
        problem = restore_into_scratch(target, scratch, tools, tool_env, archive, kind=kind, fmt=fmt,
                                       jobs=_jobs(env), state=state)
        if problem:
            return problem
        with scratch_target(target, scratch).connect("verify", statement_timeout="0") as conn:
            restored = _user_tables(conn)
            if kind == "schema":
                missing = [t for t in expected_tables if t not in restored]
                return f"tables missing after restoring the schema: {', '.join(missing[:5])}" if missing else None
            got = _count_rows(conn, [t for t in expected if t in restored])
        differ = [f"{_plain(t)} {n} in the source, {got.get(t, 'missing')} restored"
                  for t, n in sorted(expected.items()) if got.get(t) != n]
        return "row counts differ: " + "; ".join(differ[:5]) if differ else None
    finally:
        drop_scratch(target, scratch)


@contextmanager
def restored_copy(name: str, env: Environment, store, backup_id: int | str, *, server_dsn: str, dbname: str,
                  statement_timeout: str = "0", jobs: int = 1) -> Iterator[Target]:
    """A verified full backup of `name` restored into a new database `dbname` on `server_dsn`'s server
    (the scratch restore of `verify: restore`), for the block; dropped on the way out whatever happens.
    BackupError (one line) when it cannot be made. `statement_timeout` and `jobs` keep it gentle on a
    server the target shares."""
    item = get_backup(store, name, backup_id)
    if item.status != "verified" or item.kind != "full":
        raise BackupError(f"backup {item.id} is a {item.status} {item.kind} backup: a copy needs a verified "
                          "full one")
    admin = Target(server_dsn, connect_timeout=env.connect_timeout_seconds)
    created: list[str] = []
    try:
        _restore_copy(name, env, item, admin, dbname, statement_timeout, jobs, created)
    except BackupError:
        if created:
            drop_scratch(admin, dbname)
        raise
    except (StorageError, TargetError) as exc:
        if created:
            drop_scratch(admin, dbname)
        raise BackupError(str(exc)) from None
    try:
        yield scratch_target(admin, dbname)
    finally:
        drop_scratch(admin, dbname)


def _restore_copy(name: str, env: Environment, item: Backup, admin: Target, dbname: str, statement_timeout: str,
                  jobs: int, created: list[str]) -> None:
    with admin.connect("scratch") as conn:
        version_num, server_version = conn.execute(
            "SELECT current_setting('server_version_num')::int, current_setting('server_version')").fetchone()
    try:
        tools = select_tools(env.pg_bin_dir, version_num, server_version, name)
    except ToolError as exc:
        raise BackupError(str(exc)) from None
    with Storage(env.backups).fetch(item.location, directory=item.format == "directory") as (path, digest):
        if item.sha256 and digest != item.sha256:
            raise BackupError(f"backup {item.id} changed since it was verified (sha256 {digest[:12]}…, "
                              f"catalogue says {item.sha256[:12]}…): not restored")
        create_scratch(admin, dbname)
        created.append(dbname)
        _conninfo, password = conninfo_without_password(admin.dsn, purpose="pg_restore")
        with client_env(password) as tool_env:
            tool_env["PGOPTIONS"] = (tool_env.get("PGOPTIONS", "") + f" -c statement_timeout={statement_timeout}"
                                     ).strip()
            problem = restore_into_scratch(admin, dbname, tools, tool_env, path, kind=item.kind, fmt=item.format,
                                           jobs=jobs, state={})
        if problem:
            raise BackupError(admin.scrub(problem))


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
            version_num, server_version = conn.execute(
                "SELECT current_setting('server_version_num')::int, current_setting('server_version')").fetchone()
            try:
                tools = select_tools(env.pg_bin_dir, version_num, server_version, name)
            except ToolError as exc:
                raise BackupError(str(exc)) from None
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


# ---------------------------------------------------------------------------
# Restores


def _restorable(item: Backup) -> None:
    if item.kind == "schema":
        raise BackupError(f"backup {item.id} is schema-only (a reference, §2.2): restore a full or table backup")
    if item.status != "verified":
        why = f" ({item.error})" if item.error else ""
        raise BackupError(f"backup {item.id} is {item.status}{why}: only verified backups can be restored")


def _restore_tables(item: Backup, tables: Sequence[str]) -> tuple[str, list[str]]:
    if not tables:
        return ("tables" if item.kind == "tables" else "full"), list(item.tables)
    return "tables", resolve_tables(tables, item.tables, f"backup {item.id}")


def plan_restore(name: str, env: Environment, store, backup_id: int | str, *,
                 tables: Sequence[str] = ()) -> RestorePlan:
    """What a restore would replace, for the approval message; nothing is changed.

    BackupError for an unknown id, a backup that is not restorable, or an unknown table."""
    item = get_backup(store, name, backup_id)
    _restorable(item)
    mode, chosen = _restore_tables(item, tables)
    target = target_of(env)
    try:
        with target.connect("restore-plan", statement_timeout="120s") as conn:
            current = project_of(env).current(conn)
            existing = _user_tables(conn)
            parents = _partitioned_tables(conn)
            fks = _foreign_keys(conn)
            extras = [t for t in [*existing, *parents] if t not in item.tables] if mode == "full" else []
            later = _created_since(conn, item) if mode == "full" else []
            now_counts = _count_rows(conn, [t for t in chosen + extras if t in existing or t in parents])
            definitions = _definition_refusals(conn, item, [t for t in chosen if t in existing], current, name) \
                if mode == "tables" else []
    except TargetError as exc:
        raise BackupError(str(exc)) from None
    changes = [TableChange(table=t, rows_now=now_counts.get(t), rows_in_backup=item.row_counts.get(t),
                           action="replace" if t in existing or t in parents else "create") for t in chosen]
    changes += [TableChange(table=t, rows_now=now_counts.get(t), rows_in_backup=None, action="drop") for t in extras]
    warnings: list[str] = []
    blockers: list[str] = []
    if item.revision is not None and sorted(item.revision) != sorted(current):
        warnings.append(f"the database is at {', '.join(current) or 'no revision'}; the backup was taken at "
                        f"{', '.join(item.revision) or 'no revision'}: the restore brings that revision back")
    if mode == "full" and extras:
        warnings.append(f"{len(extras)} table(s) created since the backup will be dropped: "
                        + ", ".join(_plain(t) for t in extras[:10]))
    if mode == "full":
        warnings += _drop_warnings(later)
        if not _records_objects(item):
            warnings.append(f"backup {item.id} was taken before backups recorded their types, domains, functions, "
                            "sequences and schemas: those created since it stay in place (drop them by hand if a "
                            "migration will create them again)")
    if mode == "tables":
        refusal = _partitioned_refusal(chosen, parents, item)
        if refusal:
            blockers.append(refusal)
        blockers += definitions
        missing = [t for t in chosen if t not in existing and t not in parents]
        if missing:
            blockers.append(f"{', '.join(_plain(t) for t in missing)} no longer exist(s) in {name}: a table restore "
                            "replaces rows only; use a full restore")
        for src, ref, conname, deltype in fks:
            if ref in chosen and src not in chosen:
                if deltype in ("c", "n", "d"):
                    blockers.append(f"{_plain(src)} references {_plain(ref)} with ON DELETE "
                                    f"{ {'c': 'CASCADE', 'n': 'SET NULL', 'd': 'SET DEFAULT'}[deltype]} "
                                    f"({conname}): replacing {_plain(ref)} would change {_plain(src)}; "
                                    "restore both tables together")
                else:
                    warnings.append(f"{_plain(src)} references {_plain(ref)} ({conname}): if any of its rows "
                                    f"point at rows the backup lacks, the restore fails and changes nothing")
    return RestorePlan(environment=name, target=target.label, backup=item, mode=mode, tables=chosen,
                       current_revision=current, backup_revision=item.revision, changes=changes,
                       warnings=warnings, blockers=blockers, dropped=later)


def _drop_warnings(later: Sequence[CatalogObject]) -> list[str]:
    """One line per kind, in the order they are dropped."""
    names: dict[str, list[str]] = {}
    for obj in later:
        names.setdefault(obj.kind, []).append(obj.shown)
    return [f"{len(shown)} {kind}(s) created since the backup will be dropped"
            f"{' with everything in them' if kind == 'schema' else ''}: "
            + ", ".join(shown[:10]) + (" …" if len(shown) > 10 else "") for kind, shown in names.items()]


def restore(name: str, env: Environment, store, backup_id: int | str, *, expected_revision: Sequence[str],
            tables: Sequence[str] = (), actor: str = "runbook-bot", progress: ProgressCallback | None = None,
            progress_every: float = 1.0, lock: guard.Held | None = None, approval_id: str | None = None,
            run_id: str | None = None) -> RestoreResult:
    """Restore a verified backup (§6.2 full with --clean --if-exists, §6.3 chosen tables), in one
    transaction: it applies completely or not at all.

    In order, all under the operation lock: the archive exists and its sha256 matches; the
    target's Alembic revision is still `expected_revision` (what the approvers saw); a safety
    backup of the current state is taken and catalogued (reason "safety"); the restore runs;
    the revision and row counts after are read back. Any refusal before the restore step
    changes nothing. Raises BackupError.

    Once the backup and tables are known good it is recorded as a run of kind "restore" (`run_id`,
    with a heartbeat and its phase as the step, `approval_id` the request it ran for), so a restore
    whose process dies is found interrupted at the next start, like a migration."""
    from runbook import protection
    from runbook.state.runs import FAILED, SUCCEEDED, Heartbeat, RunStore

    item = get_backup(store, name, backup_id)
    _restorable(item)
    mode, chosen = _restore_tables(item, tables)
    target = target_of(env)
    storage = Storage(env.backups)
    started = time.monotonic()
    expected = list(expected_revision)
    runs = RunStore(store)
    run = runs.start(kind="restore", environment=name, actor=actor, approval_id=approval_id, run_id=run_id,
                     from_revision=", ".join(expected), target_revision=", ".join(item.revision or []),
                     details={"backup_id": item.id, "mode": mode, "tables": list(chosen)})
    facts = {"run_id": run.id, "backup_id": item.id, "mode": mode, "tables": list(chosen),
             "target": ", ".join(item.revision or []), "from": expected}   # text, as a migration's target
    with Heartbeat(runs, run.id) as beat:
        beat.set_step(RESTORE_STEPS["lock"])
        try:
            with _operation_lock(target, name, "restore", lock) as held:
                result = _restore_locked(name, env, store, target, storage, held, item, mode, chosen,
                                         expected_revision=expected, actor=actor, progress=progress,
                                         progress_every=progress_every, started=started,
                                         on_phase=lambda phase: beat.set_step(RESTORE_STEPS.get(phase, phase)),
                                         on_safety=lambda safety: protection.remember(store, run.id, safety))
        except (BackupError, TargetError) as exc:
            error = str(exc)
            # one transaction: a restore that failed left the revision where it was
            runs.finish(run.id, FAILED, summary=error, result={**facts, "outcome": FAILED, "error": error,
                                                                "to": expected})
            if isinstance(exc, TargetError):
                raise BackupError(error) from None
            raise
        except BaseException as exc:     # recorded on the run, so its failure is followed up like any other
            error = f"the restore failed unexpectedly ({type(exc).__name__})"
            runs.finish(run.id, FAILED, summary=error, result={**facts, "outcome": FAILED, "error": error,
                                                                "to": None})
            raise
    summary = (f"backup #{item.id} restored into {name}, now at revision {', '.join(result.revision_after) or 'none'}; "
               f"safety backup #{result.safety_backup.id}")
    runs.finish(run.id, SUCCEEDED, summary=summary, result={
        **facts, "outcome": SUCCEEDED, "error": None, "from": result.revision_before, "to": result.revision_after,
        "revision_before": result.revision_before, "revision_after": result.revision_after,
        "row_counts_after": result.row_counts_after,
        "mismatches": {t: list(v) for t, v in result.mismatches.items()},
        "safety_backup_id": result.safety_backup.id, "duration_seconds": result.duration_seconds})
    return dataclasses.replace(result, run_id=run.id)


def _restore_locked(name: str, env: Environment, store, target: Target, storage: Storage, held: guard.Held,
                    item: Backup, mode: str, chosen: list[str], *, expected_revision: list[str], actor: str,
                    progress: ProgressCallback | None, progress_every: float, started: float,
                    on_phase: Callable[[str], None], on_safety: Callable[[Backup], None]) -> RestoreResult:
    state: dict[str, Any] = {"bytes": 0, "pid": None, "phase": "fetch", "on_phase": on_phase,
                             "on_safety": on_safety}
    on_phase("fetch")

    def measure() -> tuple[int, str, int | None, int | None]:
        return state["bytes"], state["phase"], item.id, state["pid"]

    def moved(n: int) -> None:
        state["bytes"] += n

    project = project_of(env)
    with _Ticker(progress, progress_every, started, measure), ExitStack() as stack:
        try:
            # for URL storage: a staged download, kept until the restore has read it
            path, digest = stack.enter_context(
                storage.fetch(item.location, directory=item.format == "directory", on_bytes=moved))
        except StorageError as exc:
            raise BackupError(f"{exc}: nothing was restored") from None
        if digest != item.sha256:
            raise BackupError(f"checksum mismatch on backup {item.id}: the archive changed since it was verified "
                              f"(sha256 {digest[:12]}…, catalogue {(item.sha256 or '?')[:12]}…); "
                              "nothing was restored")
        revision_before, safety = _restore_archive(name, env, store, target, held, item, mode, chosen, path,
                                                   expected_revision=expected_revision, actor=actor,
                                                   project=project, state=state)
    with target.connect("restore", statement_timeout="0") as conn:
        revision_after = project.current(conn)
        counts_after = _count_rows(conn, chosen if mode == "tables" else _user_tables(conn))
    mismatches = {t: (item.row_counts.get(t), counts_after.get(t)) for t in chosen
                  if t in item.row_counts and item.row_counts.get(t) != counts_after.get(t)}
    return RestoreResult(environment=name, backup=item, safety_backup=_load(store, safety.id), mode=mode,
                         tables=chosen, revision_before=revision_before, revision_after=revision_after,
                         row_counts_after=counts_after, mismatches=mismatches,
                         duration_seconds=round(time.monotonic() - started, 3))


def _enter_phase(state: dict[str, Any], phase: str) -> None:
    state["phase"] = phase
    state["on_phase"](phase)


def _restore_archive(name: str, env: Environment, store, target: Target, held: guard.Held, item: Backup,
                     mode: str, chosen: list[str], path: Path, *, expected_revision: list[str], actor: str,
                     project: AlembicProject, state: dict[str, Any]) -> tuple[list[str], Backup]:
    """The revision check, the safety backup, the restore itself: (revision before, safety backup)."""
    with target.connect("restore", statement_timeout="120s") as conn:
        version_num, server_version = conn.execute(
            "SELECT current_setting('server_version_num')::int, current_setting('server_version')").fetchone()
        revision_before = project.current(conn)
        existing = _user_tables(conn)
        parents = _partitioned_tables(conn)
        fks = _foreign_keys(conn)
        sequences = {t: [r[0] for r in conn.execute(OWNED_SEQUENCES_SQL, [_ident(t).as_string(conn)])]
                     for t in chosen if t in existing}
        definitions = _definition_refusals(conn, item, [t for t in chosen if t in existing], revision_before, name) \
            if mode == "tables" else []
    if sorted(revision_before) != sorted(expected_revision):
        raise BackupError(f"the revision of {name} changed since the restore was requested (was "
                          f"{', '.join(expected_revision) or 'none'}, now {', '.join(revision_before) or 'none'}): "
                          "nothing was restored; ask again")
    try:
        tools = select_tools(env.pg_bin_dir, version_num, server_version, name)
    except ToolError as exc:
        raise BackupError(str(exc)) from None
    if tools.pg_restore.major < int(str(item.tool_version or "0").split(".")[0]):
        raise BackupError(f"pg_restore {tools.pg_restore.version} cannot read an archive written by pg_dump "
                          f"{item.tool_version}: set pg_bin_dir to a newer PostgreSQL client")
    if mode == "tables":
        refusal = _partitioned_refusal(chosen, parents, item)
        if refusal:
            raise BackupError(f"{refusal}; nothing was restored")
        gone = [t for t in chosen if t not in existing]
        if gone:
            raise BackupError(f"{', '.join(_plain(t) for t in gone)} no longer exist(s) in {name}: "
                              "a table restore replaces rows only; nothing was restored")
        if definitions:
            raise BackupError(f"{definitions[0]}; nothing was restored")
        for src, ref, conname, deltype in fks:
            if ref in chosen and src not in chosen and deltype in ("c", "n", "d"):
                raise BackupError(f"{_plain(src)} references {_plain(ref)} with a cascading delete "
                                  f"({conname}): restore both tables together; nothing was restored")

    _enter_phase(state, "safety backup")
    try:
        safety = backup(name, env, store, kind="tables" if mode == "tables" else "full",
                        tables=chosen if mode == "tables" else (), verify="full", actor=actor,
                        reason="safety", lock=held, project=project)
    except BackupError as exc:
        raise BackupError(f"the safety backup failed ({exc}): nothing was restored") from None
    _update(store, safety.id, details={**safety.details, "before_restore_of": item.id})
    state["on_safety"](safety)

    _enter_phase(state, "restore")
    state["bytes"] = 0
    extras = [t for t in [*existing, *parents] if t not in item.tables] if mode == "full" else []
    with target.connect("restore", statement_timeout="120s") as conn:
        later = _created_since(conn, item) if mode == "full" else []
        prologue = _restore_prologue(conn, env, mode, chosen, existing, extras, later, fks)
    problem = _pipe_restore(tools, env, path, mode, chosen, sequences, fks, prologue, state)
    if problem and "lock timeout" in problem:
        problem = (f"other sessions kept the tables locked for longer than lock_wait_timeout "
                   f"({env.backups.lock_wait_timeout}): stop the application first (§6.2 step 1) — {problem}")
    if problem:
        raise BackupError(f"the restore failed and was rolled back, {name} is unchanged "
                          f"(safety backup {safety.id}): {target.scrub(problem)}")
    return revision_before, safety


def _restore_prologue(conn: psycopg.Connection, env: Environment, mode: str, chosen: list[str],
                      existing: list[str], extras: list[str], later: Sequence[CatalogObject],
                      fks: Sequence[tuple[str, str, str, str]]) -> str:
    """The SQL that opens the restore's transaction: a bounded wait for the locks, then what
    pg_restore's own script does not do (drop what the backup lacks: views, tables, then the rest of
    `later` in its order; or empty the tables it refills)."""
    lines = [f"SET lock_timeout = {sql.Literal(env.backups.lock_wait_timeout).as_string(conn)};", "BEGIN;"]
    present = [t for t in (chosen if mode == "tables" else existing)]
    if present:
        # pg_restore's script sets lock_timeout = 0: take every lock now, while ours still bounds the wait
        lines.append(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE;").format(
            sql.SQL(", ").join(_ident(t) for t in present)).as_string(conn))
    if mode == "full":
        lines += [o.drop(conn) for o in later if o.kind in VIEW_KINDS]
        for table in extras:
            lines.append(sql.SQL("DROP TABLE IF EXISTS {} CASCADE;").format(_ident(table)).as_string(conn))
        lines += [o.drop(conn) for o in later if o.kind not in VIEW_KINDS]
    else:
        for table in reversed(_parents_first(chosen, fks)):
            lines.append(sql.SQL("DELETE FROM {};").format(_ident(table)).as_string(conn))
    return "\n".join(lines) + "\n"


def _pipe_restore(tools: Tools, env: Environment, archive: Path, mode: str, chosen: list[str],
                  sequences: dict[str, list[str]], fks: Sequence[tuple[str, str, str, str]], prologue: str,
                  state: dict[str, Any]) -> str | None:
    """prologue + pg_restore's script(s) + COMMIT into one psql with ON_ERROR_STOP: psql stops at
    the first error, before COMMIT, so the target is left as it was. None on success. Both tools are
    tethered to this process (runbook/tether.py): a killed bot's psql must not go on to COMMIT a script
    already sitting in its pipe, unsupervised, after the run was marked interrupted."""
    conninfo, password = conninfo_without_password(env.dsn, purpose="pg_restore")
    if mode == "full":
        scripts = [[str(tools.pg_restore.path), "--clean", "--if-exists", "--file=-", str(archive)]]
    else:
        scripts = []
        for table in _parents_first(chosen, fks):
            schema, name = _split(table)
            argv = [str(tools.pg_restore.path), "--data-only", f"--schema={schema}", f"--table={name}"]
            argv += [f"--table={seq}" for seq in sequences.get(table, [])]
            scripts.append(argv + ["--file=-", str(archive)])
    with client_env(password) as tool_env, tempfile.TemporaryFile() as psql_err, \
            tempfile.TemporaryFile() as restore_err:
        psql = subprocess.Popen(tethered([str(tools.psql.path), "-X", "-q", "--no-password", "-v", "ON_ERROR_STOP=1",
                                          f"--dbname={conninfo}"]), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                stderr=psql_err, env=tool_env)
        state["pid"] = psql.pid
        broken = False
        failed_tool: str | None = None
        try:
            psql.stdin.write(prologue.encode())
            for argv in scripts:
                producer = subprocess.Popen(tethered(argv), stdout=subprocess.PIPE, stderr=restore_err,
                                            stdin=subprocess.DEVNULL, env=tool_env)
                try:
                    while chunk := producer.stdout.read1(CHUNK):
                        psql.stdin.write(chunk)
                        state["bytes"] += len(chunk)
                finally:
                    producer.stdout.close()
                    if producer.wait() != 0 and failed_tool is None:
                        failed_tool = "pg_restore"
                if failed_tool:
                    break
            if failed_tool is None:
                psql.stdin.write(b"COMMIT;\n")
        except BrokenPipeError:
            broken = True          # psql stopped at an error: its stderr says which
        finally:
            try:
                psql.stdin.close()
            except BrokenPipeError:
                pass
            rc = psql.wait()
        if failed_tool:
            # psql saw no COMMIT: closing its input ended the session and rolled everything back
            return f"pg_restore: {_first_error(_read_tmp(restore_err), 'pg_restore')}"
        if rc != 0 or broken:
            return f"psql: {_first_error(_read_tmp(psql_err), 'psql')}"
    return None


__all__ = [
    "BackupError", "BackupFailed", "Backup", "Progress", "ProgressCallback", "DumpSession", "TableChange",
    "RestorePlan", "RestoreResult", "CatalogObject", "KINDS", "LEVELS", "VERIFY_LEVELS",
    "backup", "list_backups", "get_backup", "latest_verified", "last_backup_at", "verify_backup", "remember_message",
    "mark_message", "messages_behind",
    "apply_retention", "definition_changes", "plan_restore", "sweep_interrupted", "restore", "dump_in_progress", "resolve_tables", "backup_to_json",
    "create_scratch", "drop_scratch", "restore_into_scratch", "restored_copy", "scratch_target",
]
