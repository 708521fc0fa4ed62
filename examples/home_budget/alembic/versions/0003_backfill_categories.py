"""backfill categories from expense descriptions

Revision ID: 0003_backfill_categories
Revises: 0002_categories
Create Date: 2024-04-16 09:03:22.640118

Data migration: every expense without a category_id gets one, taken from its
free-text `category` when set, else guessed from keywords in its description
("Other" when nothing matches). Plain SQL only, so `alembic upgrade --sql`
renders it offline (no rows are read in Python).
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = "0003_backfill_categories"
down_revision: Union[str, Sequence[str], None] = "0002_categories"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


# The category name an expense belongs to, as an SQL expression over `e`
# (\m: PostgreSQL's start-of-word, so "rent" does not match "parent").
CATEGORY_OF_EXPENSE = r"""COALESCE(
    NULLIF(initcap(btrim(e.category)), ''),
    CASE
        WHEN e.description ~* '\m(grocer|supermarket|whole foods|trader joe|aldi|costco)' THEN 'Groceries'
        WHEN e.description ~* '\m(rent|mortgage|landlord)' THEN 'Housing'
        WHEN e.description ~* '\m(electric|water bill|gas bill|internet|phone bill|utilit)' THEN 'Utilities'
        WHEN e.description ~* '\m(uber|lyft|taxi|fuel|petrol|gasoline|metro|bus pass|train|parking)' THEN 'Transport'
        WHEN e.description ~* '\m(restaurant|cafe|coffee|pizza|takeaway|sushi|lunch|dinner)' THEN 'Dining'
        WHEN e.description ~* '\m(pharmacy|doctor|dentist|clinic|gym)' THEN 'Health'
        WHEN e.description ~* '\m(netflix|spotify|cinema|concert|book|game)' THEN 'Entertainment'
        ELSE 'Other'
    END
)"""


def upgrade() -> None:
    """Upgrade schema."""
    op.execute(
        "INSERT INTO categories (name)\n"
        f"SELECT DISTINCT {CATEGORY_OF_EXPENSE}\n"
        "FROM expenses AS e\n"
        "WHERE e.category_id IS NULL\n"
        "ON CONFLICT (name) DO NOTHING"
    )
    op.execute(
        "UPDATE expenses AS e\n"
        "SET category_id = c.id\n"
        "FROM categories AS c\n"
        "WHERE e.category_id IS NULL\n"
        f"  AND c.name = {CATEGORY_OF_EXPENSE}"
    )


def downgrade() -> None:
    """Downgrade schema."""
    raise NotImplementedError(
        "0003 is a data backfill: the categories it created and the category_id values it set "
        "cannot be told apart from ones users added since; restore categories and expenses "
        "from the pre-migration backup instead"
    )
