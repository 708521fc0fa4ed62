"""approvals.claimed_host, claimed_pid: who took an approved request to run it; approvals.rendered_at: the
version of the request its Slack message last showed

Revision ID: 0008_approval_claims
Revises: 0007_alert_episodes
Create Date: 2026-12-12
"""
import sqlalchemy as sa
from alembic import op

revision = "0008_approval_claims"
down_revision = "0007_alert_episodes"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable: a request of a 0007 database has no claimant (one left approved or executing is judged
    # by its age alone) and counts as shown as it stands, so the first reconcile after the upgrade does
    # not re-render every request ever posted.
    with op.batch_alter_table("approvals") as batch:
        batch.add_column(sa.Column("claimed_host", sa.String(255)))
        batch.add_column(sa.Column("claimed_pid", sa.Integer))
        batch.add_column(sa.Column("rendered_at", sa.DateTime(timezone=True)))
    op.execute("UPDATE approvals SET rendered_at = updated_at WHERE message_ts IS NOT NULL")


def downgrade() -> None:
    with op.batch_alter_table("approvals") as batch:
        batch.drop_column("rendered_at")
        batch.drop_column("claimed_pid")
        batch.drop_column("claimed_host")
