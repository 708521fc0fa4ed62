"""runs.details: what a run keeps besides its revisions (a restore's backup, the live monitor's message)

Revision ID: 0006_run_details
Revises: 0005_runs
Create Date: 2026-11-24
"""
import sqlalchemy as sa
from alembic import op

revision = "0006_run_details"
down_revision = "0005_runs"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable, no default: the rows of an existing 0005 database stay as they are (details None).
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("details", sa.JSON))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("details")
