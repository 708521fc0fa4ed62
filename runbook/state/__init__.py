"""The bot's own database: models, store, and its own Alembic migrations.

The names are loaded on first use, so `runbook.state.records` (and the sidecar's client) can be
imported without loading SQLAlchemy.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runbook.state.records import Event, StateError
    from runbook.state.store import Store

__all__ = ["Event", "Store", "StateError"]


def __getattr__(name: str) -> Any:
    if name in ("Event", "StateError"):
        from runbook.state import records

        return getattr(records, name)
    if name == "Store":
        from runbook.state.store import Store

        return Store
    raise AttributeError(f"module 'runbook.state' has no attribute {name!r}")
