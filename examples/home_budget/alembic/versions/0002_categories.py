"""add categories table and expenses.category_id

Revision ID: 0002_categories
Revises: 0001_expenses_incomes
Create Date: 2024-04-15 18:42:51.087204

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = "0002_categories"
down_revision: Union[str, Sequence[str], None] = "0001_expenses_incomes"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        "categories",
        sa.Column("id", sa.Integer(), sa.Identity(), primary_key=True),
        sa.Column("name", sa.String(length=50), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.UniqueConstraint("name", name="uq_categories_name"),
    )
    # nullable: existing rows get their category in 0003, the app keeps working meanwhile
    op.add_column("expenses", sa.Column("category_id", sa.Integer(), nullable=True))
    op.create_foreign_key(
        "fk_expenses_category_id_categories",
        "expenses",
        "categories",
        ["category_id"],
        ["id"],
        ondelete="SET NULL",
    )
    op.create_index("ix_expenses_category_id", "expenses", ["category_id"])


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_index("ix_expenses_category_id", table_name="expenses")
    op.drop_constraint("fk_expenses_category_id_categories", "expenses", type_="foreignkey")
    op.drop_column("expenses", "category_id")
    op.drop_table("categories")
