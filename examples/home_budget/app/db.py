"""The database layer: the declarative base (with a naming convention matching the revisions'
constraint names) and a session factory bound on first use, never at import."""
from __future__ import annotations

from functools import lru_cache

from sqlalchemy import MetaData, create_engine
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from app.config import settings

# Alembic applies target_metadata's convention to the revisions' operations too: no template here
# takes %(constraint_name)s, so the names the revisions give are kept exactly (check constraints are
# named in full in the models).
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_name)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


@lru_cache(maxsize=1)
def engine() -> Engine:
    if not settings.database_url:
        raise RuntimeError("DATABASE_URL is not set")
    return create_engine(settings.database_url, echo=settings.sql_echo, pool_pre_ping=True)


SessionLocal = sessionmaker(autoflush=False, expire_on_commit=False, class_=Session)


def session() -> Session:
    return SessionLocal(bind=engine())
