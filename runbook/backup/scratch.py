"""Scratch databases: create, restore an archive into, and drop one on the target's server; the
`verify: restore` rung, and a restored copy of a verified backup (for a rehearsal)."""
from __future__ import annotations

import logging
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from runbook.config import Environment
from runbook.pgtools import Tools, client_env, conninfo_without_password
from runbook.storage import Storage, StorageError
from runbook.target import Target, TargetError

log = logging.getLogger(__name__)
from runbook.backup.catalogue import get_backup
from runbook.backup.environment import _jobs, tools_for
from runbook.backup.introspect import _count_rows, _user_tables
from runbook.backup.model import Backup, BackupError
from runbook.backup.names import _plain
from runbook.backup.tools import _first_error, _run_tool


SCRATCH_PREFIX = "runbook_bot_verify_"


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
        tools = tools_for(conn, env, name)
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
