"""approval requests and decisions (issues 3 and 4)

Revision ID: 0003_approvals
Revises: 0002_backups
Create Date: 2026-11-24
"""
import sqlalchemy as sa  # noqa: F401
from alembic import op  # noqa: F401

revision = "0003_approvals"
down_revision = "0002_backups"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass  # tables arrive with their feature


def downgrade() -> None:
    pass
