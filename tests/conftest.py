"""Shared fixtures: a real PostgreSQL for the whole session, one database per test.

The embedded server comes from the `pgserver` package (PostgreSQL 16 with its
client tools); TEST_DATABASE_URL points the suite at another server instead.
"""
from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from tests.support import pg as pgsupport

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def hermetic_cache(tmp_path_factory):
    """SQL previews are cached on disk; tests keep theirs out of the user's ~/.cache."""
    os.environ["RUNBOOK_BOT_CACHE_DIR"] = str(tmp_path_factory.mktemp("preview-cache"))


@pytest.fixture(scope="session")
def pg_server():
    """(admin_url, bin_dir) of a running PostgreSQL for this test session."""
    server = pgsupport.start_server()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(pg_server, request) -> str:
    """A fresh, empty database on the session server; dropped after the test."""
    name = "t_" + uuid.uuid4().hex[:12]
    url = pg_server.create_database(name)
    yield url
    pg_server.drop_database(name)


@pytest.fixture
def pg_bin_dir(pg_server) -> Path:
    return pg_server.bin_dir


@pytest.fixture
def sample_db(pg_url):
    """Factory: sample_db("0001") -> pg_url migrated to that revision of examples/home_budget,
    seeded at 0001 (`seed_rows=`, default 50). "base" leaves the database unversioned."""
    from tests.support.sample_app import sample_db_at

    def make(revision: str = "head", seed_rows: int = 50) -> str:
        return sample_db_at(pg_url, revision, seed_rows=seed_rows)

    return make
