"""Alembic state: current, heads, pending, SQL preview, reversibility (§1.2).

CONTRACT (filled in by the revisions work; shapes are fixed, others build on them).
The app's code never runs inside the bot: revision files are read with `ast`,
and SQL previews run the app's own Alembic as a subprocess (design rules 11, 12).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Revision:
    revision: str
    down_revisions: tuple[str, ...]
    message: str
    path: Path
    reversible: bool
    irreversible_reason: str | None = None   # e.g. "downgrade() raises NotImplementedError"


@dataclass(frozen=True)
class AlembicState:
    current: list[str]          # from the database's alembic_version; [] when unversioned
    heads: list[str]
    pending: list[Revision]     # oldest first, exactly the revisions `upgrade head` would apply


class RevisionError(Exception):
    """Alembic could not be read or run; the text is one line and redacted."""
