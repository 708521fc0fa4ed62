"""The ORM models. Alembic's env.py imports this package for `target_metadata`
(`models.Base.metadata`), so autogenerate compares the database with these classes."""
from app.db import Base
from app.models.category import Category
from app.models.expense import Expense
from app.models.income import Income

__all__ = ["Base", "Category", "Expense", "Income"]
