"""Alembic environment of the bot's own state database (run in-process: it is our code)."""
from alembic import context
from sqlalchemy import text

from runbook.state.models import Base
from runbook.state.store import VERSION_TABLE

# Several replicas may start at once against one PostgreSQL state database:
# serialise their upgrades (Alembic has no lock of its own).
STATE_MIGRATION_LOCK = 0x52424F54  # "RBOT"

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata,
                  version_table=VERSION_TABLE, render_as_batch=True)
if connection.dialect.name == "postgresql":
    connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": STATE_MIGRATION_LOCK})
with context.begin_transaction():
    context.run_migrations()
