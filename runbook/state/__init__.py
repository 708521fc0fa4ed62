"""The bot's own database: models, store, and its own Alembic migrations."""
from runbook.state.store import Event, Store, StateError

__all__ = ["Event", "Store", "StateError"]
