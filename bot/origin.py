"""Who asked for something, and where its answer goes: the one value every surface hands the flows
(bot/flows/, bot/migrations.py, bot/app.py), kept apart so none of them imports another for it."""
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
    # What identifies this delivery of the request (its signature in HTTP mode, else its trigger_id):
    # a replay of the same signed request carries the same one (issue 13 §4).
    request_key: str | None = None
