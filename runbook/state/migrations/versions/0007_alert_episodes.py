"""alerts.episode_opened_at, alerts.open_seconds: escalation counts the time an incident was open

Revision ID: 0007_alert_episodes
Revises: 0006_run_details
Create Date: 2026-12-05
"""
import sqlalchemy as sa
from alembic import op

revision = "0007_alert_episodes"
down_revision = "0006_run_details"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable: an alert of a 0006 database reads as one episode that began at opened_at.
    with op.batch_alter_table("alerts") as batch:
        batch.add_column(sa.Column("episode_opened_at", sa.DateTime(timezone=True)))
        batch.add_column(sa.Column("open_seconds", sa.Float))


def downgrade() -> None:
    with op.batch_alter_table("alerts") as batch:
        batch.drop_column("open_seconds")
        batch.drop_column("episode_opened_at")
