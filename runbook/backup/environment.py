"""What a backup operation takes from its environment: the target, the Alembic project, the parallel
jobs, and the operation lock (runbook/guard.py) unless the caller already holds it."""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

from runbook import guard
from runbook.backup.model import BackupError
from runbook.config import Environment
from runbook.revisions import AlembicProject
from runbook.target import Target


def target_of(env: Environment) -> Target:
    return Target(env.dsn, connect_timeout=env.connect_timeout_seconds)


def project_of(env: Environment) -> AlembicProject:
    from runbook.precheck import project_of as precheck_project_of

    return precheck_project_of(env)


# The server's version, as select_tools needs it to pick a pg_dump / pg_restore at least as new.
SERVER_VERSION_SQL = "SELECT current_setting('server_version_num')::int, current_setting('server_version')"


def tools_for(conn, env: Environment, name: str):
    """The client tools (runbook.pgtools.Tools) for the server `conn` is on; BackupError (one line)
    when none fits."""
    from runbook.pgtools import ToolError, select_tools

    version_num, server_version = conn.execute(SERVER_VERSION_SQL).fetchone()
    try:
        return select_tools(env.pg_bin_dir, version_num, server_version, name)
    except ToolError as exc:
        raise BackupError(str(exc)) from None


def _jobs(env: Environment) -> int:
    return env.backups.jobs or max(1, os.cpu_count() or 1)


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
