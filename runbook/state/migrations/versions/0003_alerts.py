"""alert state and scheduler claims (issue 5)

Revision ID: 0003_alerts
Revises: 0002_backups
Create Date: 2026-11-24
"""
import sqlalchemy as sa  # noqa: F401
from alembic import op  # noqa: F401

revision = "0003_alerts"
down_revision = "0002_backups"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass  # tables arrive with their feature


def downgrade() -> None:
    pass
