"""Alembic environment for the Home Budget Web backend.

The database URL comes from the DATABASE_URL environment variable, never from
alembic.ini or the command line. `postgresql://` (and `postgres://`) URLs are
rewritten to `postgresql+psycopg://` so SQLAlchemy uses psycopg 3.

Online:   DATABASE_URL=postgresql://... alembic upgrade head
Offline:  DATABASE_URL=postgresql://... alembic upgrade 0001_expenses_incomes:head --sql
          (only the dialect is taken from the URL; nothing connects)
"""
from __future__ import annotations

import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy import create_engine, pool

# The app's models, for autogenerate (`alembic revision --autogenerate` compares the database with
# them). The backend directory is on sys.path through alembic.ini's prepend_sys_path.
from app import models

config = context.config

# Logging from alembic.ini: alembic at INFO on stderr, sqlalchemy.engine at WARNING.
# Nothing here logs the URL.
if config.config_file_name is not None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = models.Base.metadata

URL_ENV = "DATABASE_URL"


def database_url() -> str:
    url = os.environ.get(URL_ENV, "").strip()
    if not url:
        raise SystemExit(f"{URL_ENV} is not set: export it with the PostgreSQL URL of the database to migrate")
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def run_migrations_offline() -> None:
    """Render the SQL to stdout (`--sql`): no connection, so revisions must not read rows."""
    context.configure(
        url=database_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Connect and run the migrations in one transaction (PostgreSQL has transactional DDL)."""
    connectable = create_engine(database_url(), poolclass=pool.NullPool)
    with connectable.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()
    connectable.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
