"""supervised runs with a heartbeat (issue 4)

Revision ID: 0005_runs
Revises: 0004_alerts
Create Date: 2026-11-24
"""
import sqlalchemy as sa
from alembic import op

revision = "0005_runs"
down_revision = "0004_alerts"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("environment", sa.String(40), nullable=False),
        sa.Column("actor", sa.String(120), nullable=False),
        sa.Column("approval_id", sa.String(40)),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("from_revision", sa.String(200), nullable=False, server_default=""),
        sa.Column("target_revision", sa.String(200), nullable=False, server_default=""),
        sa.Column("step", sa.String(200), nullable=False, server_default=""),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("summary", sa.Text, nullable=False, server_default=""),
        sa.Column("log_path", sa.Text),
        sa.Column("result", sa.JSON),
    )
    op.create_index("ix_runs_state_heartbeat_at", "runs", ["state", "heartbeat_at"])
    op.create_index("ix_runs_environment_started_at", "runs", ["environment", "started_at"])


def downgrade() -> None:
    op.drop_index("ix_runs_environment_started_at", table_name="runs")
    op.drop_index("ix_runs_state_heartbeat_at", table_name="runs")
    op.drop_table("runs")
