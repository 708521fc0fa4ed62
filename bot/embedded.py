"""The embedded PostgreSQL (from `pgserver`) that the console demo and the tests run against."""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg


@dataclass
class Server:
    admin_url: str
    bin_dir: Path
    _stop: object = field(default=None, repr=False)

    def url_for(self, dbname: str) -> str:
        parts = urlsplit(self.admin_url)
        return urlunsplit(parts._replace(path="/" + dbname))

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        if callable(self._stop):
            self._stop()


def start_server(data_dir: Path | None = None) -> Server:
    """TEST_DATABASE_URL if set, else the embedded server from `pgserver`."""
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        pg_dump = shutil.which("pg_dump")
        return Server(admin_url=url, bin_dir=Path(pg_dump).parent if pg_dump else Path("/usr/bin"))
    if "XDG_RUNTIME_DIR" not in os.environ:  # pgserver keeps its lock files there
        runtime = Path(tempfile.gettempdir()) / f"runbook-bot-runtime-{os.getuid()}"
        runtime.mkdir(mode=0o700, exist_ok=True)
        os.environ["XDG_RUNTIME_DIR"] = str(runtime)
    import pgserver

    owned = data_dir is None
    if owned:
        # Unix socket paths are limited to ~107 bytes: keep the directory short.
        data_dir = Path(tempfile.mkdtemp(prefix="rbpg-", dir="/tmp"))
    server = pgserver.get_server(data_dir, cleanup_mode="delete" if owned else "stop")
    bin_dir = Path(pgserver.__file__).parent / "pginstall" / "bin"
    return Server(admin_url=server.get_uri(), bin_dir=bin_dir, _stop=server.cleanup)
