"""The runbook engine: PostgreSQL, Alembic, pg_dump. It knows nothing of Slack."""
