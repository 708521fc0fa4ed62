"""The contract others build on: a revision as read from its file, the state of a database, and the
one error every part of runbook.revisions raises."""
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
    branch_labels: tuple[str, ...] = ()
    depends_on: tuple[str, ...] = ()         # as written in the file (ids, prefixes or branch labels)


@dataclass(frozen=True)
class AlembicState:
    current: list[str]          # from the database's alembic_version; [] when unversioned
    heads: list[str]
    pending: list[Revision]     # oldest first, exactly the revisions `upgrade head` would apply
    # Why `pending` could not be computed exactly (several heads, a current revision the
    # scripts do not contain); None when everything is consistent.
    problem: str | None = None


class RevisionError(Exception):
    """Alembic could not be read or run; the text is one line and redacted."""
