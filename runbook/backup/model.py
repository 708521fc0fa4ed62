"""What the backup engine returns and raises: the catalogue entry (Backup), progress, restore plans and
results, the objects a full restore may drop, and the CLI's JSON of an entry."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable

import psycopg
from psycopg import sql

from runbook.backup.names import _plain
from runbook.state.models import BackupRow, as_utc


KINDS = ("full", "schema", "tables")
LEVELS = ("none", "toc", "full", "restore")
VERIFY_LEVELS = ("full", "restore")


class BackupError(Exception):
    """A backup or restore was refused or failed; one line for a human, no secrets."""


class BackupFailed(BackupError):
    """The backup ran and failed (dump or a verification rung); `backup` is its catalogue entry."""

    def __init__(self, message: str, backup: "Backup"):
        super().__init__(message)
        self.backup = backup


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
