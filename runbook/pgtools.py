"""pg_dump, pg_restore and psql: which ones, and are they new enough (design rule 15).

`pg_bin_dir` from the environment's configuration when set, else PATH. pg_dump refuses
to dump a server newer than its own major version, and pg_restore must read what pg_dump
wrote, so both must be at least the server's major version: an older tool is refused with
one line naming both versions and what to do.

The database password never goes on a command line (anyone can read /proc/<pid>/cmdline):
`client_env` returns the conninfo without it, and an environment with PGPASSFILE pointing at
a private temporary file (mode 0600) that is removed when the block ends.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterator

from psycopg.conninfo import conninfo_to_dict, make_conninfo

from runbook.subprocess_env import subprocess_env
from runbook.target import application_name

_VERSION = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")


class ToolError(Exception):
    """A client tool is missing or too old; one line saying what to do."""


@dataclass(frozen=True)
class Tool:
    name: str
    path: Path
    version: str        # "16.2"
    major: int


@dataclass(frozen=True)
class Tools:
    pg_dump: Tool
    pg_restore: Tool
    psql: Tool
    server_version: str
    server_major: int


def server_major(server_version_num: int) -> int:
    return server_version_num // 10000


@lru_cache(maxsize=64)
def _probe(path: str, mtime: float) -> tuple[str, int]:
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=20,
                             stdin=subprocess.DEVNULL, env=subprocess_env()).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ToolError(f"{path} does not run ({exc.__class__.__name__})") from None
    match = _VERSION.search(out)
    if not match:
        raise ToolError(f"{path} --version printed no PostgreSQL version")
    major = int(match.group(1))
    version = f"{major}.{match.group(2)}" if match.group(2) else str(major)
    return version, major


def find_tool(name: str, pg_bin_dir: Path | None) -> Tool:
    if pg_bin_dir is not None:
        path = Path(pg_bin_dir) / name
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise ToolError(f"pg_bin_dir {pg_bin_dir} has no {name}: point pg_bin_dir at the bin directory "
                            "of a PostgreSQL client installation")
    else:
        found = shutil.which(name)
        if found is None:
            raise ToolError(f"{name} is not on PATH: install the PostgreSQL client tools, or set pg_bin_dir "
                            "in the environment's configuration")
        path = Path(found)
    version, major = _probe(str(path), path.stat().st_mtime)
    return Tool(name=name, path=path, version=version, major=major)


def select_tools(pg_bin_dir: Path | None, server_version_num: int, server_version: str,
                 environment: str = "the environment") -> Tools:
    """The client tools for a server, or ToolError naming both versions and the fix."""
    major = server_major(server_version_num)
    found = {name: find_tool(name, pg_bin_dir) for name in ("pg_dump", "pg_restore", "psql")}
    for name in ("pg_dump", "pg_restore"):
        tool = found[name]
        if tool.major < major:
            where = f"pg_bin_dir {pg_bin_dir}" if pg_bin_dir else "PATH"
            raise ToolError(
                f"{name} {tool.version} ({tool.path}, from {where}) is older than the server "
                f"(PostgreSQL {server_version}) and cannot dump or restore it: set pg_bin_dir of "
                f"{environment} to the bin directory of PostgreSQL {major} or newer "
                f"(e.g. /usr/lib/postgresql/{major}/bin)")
    return Tools(pg_dump=found["pg_dump"], pg_restore=found["pg_restore"], psql=found["psql"],
                 server_version=server_version, server_major=major)


def conninfo_without_password(dsn: str, *, purpose: str, dbname: str | None = None) -> tuple[str, str]:
    """(conninfo for a command line, password) — the password is never part of the first."""
    params = conninfo_to_dict(dsn)
    password = str(params.pop("password", "") or "")
    params["application_name"] = application_name(purpose)
    if dbname is not None:
        params["dbname"] = dbname
    return make_conninfo(**{k: v for k, v in params.items() if v is not None}), password


def _passfile_line(password: str) -> str:
    escaped = password.replace("\\", "\\\\").replace(":", "\\:")
    return f"*:*:*:*:{escaped}\n"


@contextmanager
def client_env(password: str) -> Iterator[dict[str, str]]:
    """The environment of a client tool (pg_dump, pg_restore, psql): the allowlist of
    runbook.subprocess_env (no Slack, GitHub or RUNBOOK_BOT_* variable; no PGPASSWORD), with
    PGPASSFILE pointing at a private file when there is a password."""
    env = subprocess_env()
    if not password:
        yield env
        return
    directory = tempfile.mkdtemp(prefix="runbook-bot-pass-")
    path = os.path.join(directory, "pgpass")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(_passfile_line(password))
        env["PGPASSFILE"] = path
        yield env
    finally:
        shutil.rmtree(directory, ignore_errors=True)
