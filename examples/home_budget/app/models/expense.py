from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING

from sqlalchemy import CheckConstraint, Date, DateTime, ForeignKey, Identity, Numeric, String, Text, func
from sqlalchemy.orm import Mapped, mapped_column, relationship, validates

from app.config import settings
from app.db import Base

if TYPE_CHECKING:
    from app.models.category import Category


class Expense(Base):
    """One expense (0001), with its category (0002)."""

    __tablename__ = "expenses"
    __table_args__ = (CheckConstraint("amount >= 0", name="ck_expenses_amount_not_negative"),)

    id: Mapped[int] = mapped_column(Identity(), primary_key=True)
    date: Mapped[date] = mapped_column(Date, index=True)
    amount: Mapped[Decimal] = mapped_column(Numeric(12, 2))
    # the free text typed in the app before 0002; kept for old clients
    category: Mapped[str | None] = mapped_column(String(50))
    description: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    category_id: Mapped[int | None] = mapped_column(ForeignKey("categories.id", ondelete="SET NULL"), index=True)

    category_ref: Mapped[Category | None] = relationship(back_populates="expenses")

    @validates("amount")
    def _amount_in_range(self, _key: str, value: Decimal) -> Decimal:
        if value < 0 or value > settings.max_expense_amount:
            raise ValueError(f"amount must be between 0 and {settings.max_expense_amount}")
        return value
