"""backups catalogue (issue 3)

Revision ID: 0002_backups
Revises: 0001_events
Create Date: 2026-11-24
"""
import sqlalchemy as sa  # noqa: F401
from alembic import op  # noqa: F401

revision = "0002_backups"
down_revision = "0001_events"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass  # tables arrive with their feature


def downgrade() -> None:
    pass
