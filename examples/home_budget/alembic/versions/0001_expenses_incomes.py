"""create expenses and incomes tables

Revision ID: 0001_expenses_incomes
Revises: 
Create Date: 2024-03-02 10:14:07.512339

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = "0001_expenses_incomes"
down_revision: Union[str, Sequence[str], None] = None
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        "expenses",
        sa.Column("id", sa.Integer(), sa.Identity(), primary_key=True),
        sa.Column("date", sa.Date(), nullable=False),
        sa.Column("amount", sa.Numeric(12, 2), nullable=False),
        # free text as typed in the app; 0002/0003 move it to the categories table
        sa.Column("category", sa.String(length=50), nullable=True),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("amount >= 0", name="ck_expenses_amount_not_negative"),
    )
    op.create_index("ix_expenses_date", "expenses", ["date"])

    op.create_table(
        "incomes",
        sa.Column("id", sa.Integer(), sa.Identity(), primary_key=True),
        sa.Column("date", sa.Date(), nullable=False),
        sa.Column("amount", sa.Numeric(12, 2), nullable=False),
        sa.Column("source", sa.String(length=100), nullable=True),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("amount >= 0", name="ck_incomes_amount_not_negative"),
    )
    op.create_index("ix_incomes_date", "incomes", ["date"])


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_index("ix_incomes_date", table_name="incomes")
    op.drop_table("incomes")
    op.drop_index("ix_expenses_date", table_name="expenses")
    op.drop_table("expenses")
