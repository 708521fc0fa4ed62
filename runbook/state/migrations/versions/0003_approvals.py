"""approval requests and decisions (issues 3 and 4)

Revision ID: 0003_approvals
Revises: 0002_backups
Create Date: 2026-11-24
"""
import sqlalchemy as sa
from alembic import op

revision = "0003_approvals"
down_revision = "0002_backups"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "approvals",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("environment", sa.String(40), nullable=False),
        sa.Column("requester", sa.String(120), nullable=False),
        sa.Column("params", sa.JSON, nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("required", sa.Integer, nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("channel", sa.String(40)),
        sa.Column("message_ts", sa.String(40)),
        sa.Column("result", sa.JSON),
        sa.Column("result_summary", sa.Text, nullable=False, server_default=""),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_approvals_state_expires_at", "approvals", ["state", "expires_at"])
    op.create_table(
        "approval_decisions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.String(40), sa.ForeignKey("approvals.id", ondelete="CASCADE"), nullable=False),
        sa.Column("approver", sa.String(120), nullable=False),
        sa.Column("decision", sa.String(20), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("request_id", "approver", name="uq_approval_decisions_request_approver"),
    )


def downgrade() -> None:
    op.drop_table("approval_decisions")
    op.drop_index("ix_approvals_state_expires_at", table_name="approvals")
    op.drop_table("approvals")
