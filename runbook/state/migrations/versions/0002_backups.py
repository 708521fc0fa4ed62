"""backups catalogue (issue 3)

Revision ID: 0002_backups
Revises: 0001_events
Create Date: 2026-11-24
"""
import sqlalchemy as sa
from alembic import op

revision = "0002_backups"
down_revision = "0001_events"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "backups",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("environment", sa.String(40), nullable=False),
        sa.Column("kind", sa.String(10), nullable=False),
        sa.Column("format", sa.String(10), nullable=False),
        sa.Column("reason", sa.String(20), nullable=False),
        sa.Column("status", sa.String(10), nullable=False),
        sa.Column("level", sa.String(10), nullable=False, server_default="none"),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("location", sa.Text, nullable=False),
        sa.Column("size_bytes", sa.BigInteger),
        sa.Column("sha256", sa.String(64)),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("duration_seconds", sa.Float),
        sa.Column("server_version", sa.String(40)),
        sa.Column("tool_version", sa.String(40)),
        sa.Column("revision", sa.JSON),
        sa.Column("tables", sa.JSON, nullable=False),
        sa.Column("row_counts", sa.JSON, nullable=False),
        sa.Column("actor", sa.String(120), nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("details", sa.JSON, nullable=False),
    )
    op.create_index("ix_backups_environment_status", "backups", ["environment", "status", "id"])


def downgrade() -> None:
    op.drop_index("ix_backups_environment_status", table_name="backups")
    op.drop_table("backups")
