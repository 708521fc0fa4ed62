"""alerts.rendered: what the alert's Slack message last showed of it, so an edit lost to a Slack outage
(a resolution above all) is made again

Revision ID: 0009_alert_rendered
Revises: 0008_approval_claims
Create Date: 2026-12-13
"""
import sqlalchemy as sa
from alembic import op

revision = "0009_alert_rendered"
down_revision = "0008_approval_claims"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("alerts") as batch:
        batch.add_column(sa.Column("rendered", sa.String(40)))
    # An alert of a 0008 database counts as shown as it stands (as 0008 did for approvals): the first
    # polls after the upgrade do not re-edit every alert message ever posted.
    op.execute("UPDATE alerts SET rendered = state || ':' || CAST(reopened AS VARCHAR(12)) WHERE ts IS NOT NULL")


def downgrade() -> None:
    with op.batch_alter_table("alerts") as batch:
        batch.drop_column("rendered")
