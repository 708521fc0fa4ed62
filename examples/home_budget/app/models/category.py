from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import DateTime, Identity, String, func
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.db import Base

if TYPE_CHECKING:
    from app.models.expense import Expense


class Category(Base):
    """A spending category (0002; 0003 fills it from the expenses' free text)."""

    __tablename__ = "categories"

    id: Mapped[int] = mapped_column(Identity(), primary_key=True)
    name: Mapped[str] = mapped_column(String(50), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    expenses: Mapped[list[Expense]] = relationship(back_populates="category_ref", passive_deletes=True)

    def __repr__(self) -> str:
        return f"Category({self.id!r}, {self.name!r})"
