"""alert state and scheduler claims (issue 5)

Revision ID: 0004_alerts
Revises: 0003_approvals
Create Date: 2026-11-24
"""
import sqlalchemy as sa
from alembic import op

revision = "0004_alerts"
down_revision = "0003_approvals"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "alerts",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("key", sa.String(400), nullable=False, unique=True),
        sa.Column("environment", sa.String(40), nullable=False),
        sa.Column("kind", sa.String(30), nullable=False),
        sa.Column("subject", sa.String(250), nullable=False),
        sa.Column("since", sa.String(40), nullable=False, server_default=""),
        sa.Column("state", sa.String(12), nullable=False),
        sa.Column("opened_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("cleared_at", sa.DateTime(timezone=True)),
        sa.Column("resolved_at", sa.DateTime(timezone=True)),
        sa.Column("escalated_at", sa.DateTime(timezone=True)),
        sa.Column("reopened", sa.Integer, nullable=False, server_default="0"),
        sa.Column("peak_seconds", sa.Float, nullable=False, server_default="0"),
        sa.Column("details", sa.JSON, nullable=False),
        sa.Column("channel", sa.String(40)),
        sa.Column("ts", sa.String(40)),
    )
    op.create_index("ix_alerts_environment_state", "alerts", ["environment", "state"])
    op.create_table(
        "job_claims",
        sa.Column("job", sa.String(80), primary_key=True),
        sa.Column("slot", sa.DateTime(timezone=True), primary_key=True),
        sa.Column("claimed_by", sa.String(120), nullable=False),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "watch_state",
        sa.Column("environment", sa.String(40), primary_key=True),
        sa.Column("paused", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("changed_by", sa.String(120)),
        sa.Column("changed_at", sa.DateTime(timezone=True)),
        sa.Column("last_poll_at", sa.DateTime(timezone=True)),
        sa.Column("last_poll_ok", sa.Boolean),
        sa.Column("last_poll_seconds", sa.Float),
        sa.Column("last_error", sa.Text),
    )


def downgrade() -> None:
    op.drop_table("watch_state")
    op.drop_table("job_claims")
    op.drop_index("ix_alerts_environment_state", table_name="alerts")
    op.drop_table("alerts")
