"""The tests use the same embedded PostgreSQL as the console demo."""
from bot.embedded import Server, start_server

__all__ = ["Server", "start_server"]
