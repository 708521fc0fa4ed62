"""Settings, read once from the environment and validated (pydantic), as the API reads them.

Everything has a default except what only production needs, so tools that import the models
(Alembic, tests) work with nothing but DATABASE_URL set; the API refuses to start without
SECRET_KEY in production (`Settings.check_for_production`).
"""
from __future__ import annotations

import os
from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, Field, field_validator


class Settings(BaseModel):
    environment: Literal["development", "test", "staging", "production"] = "development"
    database_url: str | None = None
    secret_key: str | None = None
    default_currency: str = Field("USD", min_length=3, max_length=3)
    max_expense_amount: Decimal = Decimal("1000000")
    page_size: int = Field(50, ge=1, le=500)
    cors_origins: list[str] = []
    sql_echo: bool = False

    @field_validator("database_url")
    @classmethod
    def _psycopg3(cls, value: str | None) -> str | None:
        """postgresql:// -> postgresql+psycopg:// so SQLAlchemy uses psycopg 3 (env.py does the same)."""
        if value:
            for prefix in ("postgresql://", "postgres://"):
                if value.startswith(prefix):
                    return "postgresql+psycopg://" + value[len(prefix):]
        return value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _comma_separated(cls, value):
        return [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else value

    def check_for_production(self) -> None:
        if self.environment == "production" and not self.secret_key:
            raise RuntimeError("SECRET_KEY must be set in production")

    @classmethod
    def from_environ(cls, environ=os.environ) -> "Settings":
        fields = {name: environ[name.upper()] for name in cls.model_fields if name.upper() in environ}
        return cls.model_validate(fields)


settings = Settings.from_environ()
