"""One function per command: calls runbook/, records events, posts messages."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Origin:
    """Who asked and where the answer goes."""

    user_id: str
    channel_id: str | None
    response_url: str | None = None
    trigger_id: str | None = None
    source: str = "slack"
