"""alert state and scheduler claims (issue 5)

Revision ID: 0004_alerts
Revises: 0003_approvals
Create Date: 2026-11-24
"""
import sqlalchemy as sa  # noqa: F401
from alembic import op  # noqa: F401

revision = "0004_alerts"
down_revision = "0003_approvals"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass  # tables arrive with their feature


def downgrade() -> None:
    pass
