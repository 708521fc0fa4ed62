"""An extra embedded PostgreSQL with settings that need a restart (e.g. max_prepared_transactions).

The session server (tests/support/pg.py) runs with the defaults, where
max_prepared_transactions = 0 and PREPARE TRANSACTION is refused. Tests that need such a
setting start this one instead: initdb and start, ALTER SYSTEM, restart. About a second.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import psycopg
from psycopg import sql

from tests.support.pg import Server


def start_server_with(settings: dict[str, str]) -> Server:
    """A private embedded server with `settings` applied; Server.stop() removes it."""
    os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.gettempdir())
    import pgserver

    data_dir = Path(tempfile.mkdtemp(prefix="rbpgs-", dir="/tmp"))
    first = pgserver.get_server(data_dir, cleanup_mode="stop")
    try:
        with psycopg.connect(first.get_uri(), autocommit=True) as conn:
            for name, value in settings.items():
                conn.execute(sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(name), sql.Literal(value)))
    finally:
        first.cleanup()                      # stops it; the settings apply at the next start
    server = pgserver.get_server(data_dir, cleanup_mode="delete")
    bin_dir = Path(pgserver.__file__).parent / "pginstall" / "bin"
    return Server(admin_url=server.get_uri(), bin_dir=bin_dir, _stop=server.cleanup)
