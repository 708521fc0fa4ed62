"""Planning a run: what `alembic upgrade|downgrade` will be asked for, step by step or at once,
validated against the scripts before anything runs."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from runbook.revisions import AlembicProject, RevisionError


@dataclass
class Plan:
    current: list[str]
    target: str
    revisions: list[Any]          # Revision, in the order they are applied (upgrade) or undone (downgrade)
    steps: list[str]              # the argument of each alembic call
    expected_after: list[list[str]]   # the version table after each step


def plan(project: AlembicProject, current: list[str], direction: str, target: str, step_by_step: bool) -> Plan:
    """What will run, validated against the scripts; RevisionError (one line) when it cannot."""
    if len(current) > 1:
        raise RevisionError(f"the database has several current revisions ({', '.join(current)}): merge them first")
    resolved = project.resolve(target, current)
    if resolved == "heads":
        raise RevisionError(f"several heads: merge needed ({', '.join(project.heads())})")
    at = ", ".join(current) or "base"
    if direction == "upgrade":
        revisions = project.pending(current, resolved)
        if not revisions and project.downgrades(current, resolved):
            raise RevisionError(f"{target!r} ({resolved}) is behind the current revision {at}: "
                                "that is a rollback, not a migration")
        if step_by_step and all(len(r.down_revisions) <= 1 for r in revisions):
            steps = [r.revision for r in revisions]
        else:
            steps = [resolved] if revisions else []
        expected = [[s] for s in steps]
    else:
        revisions = project.downgrades(current, resolved)
        if not revisions and project.pending(current, resolved):
            raise RevisionError(f"{target!r} ({resolved}) is ahead of the current revision {at}: "
                                "that is a migration, not a rollback")
        if step_by_step and all(len(r.down_revisions) <= 1 for r in revisions):
            steps = [(r.down_revisions[0] if r.down_revisions else "base") for r in revisions]
        else:
            steps = [resolved] if revisions else []
        expected = [[] if s == "base" else [s] for s in steps]
    return Plan(current=current, target=resolved, revisions=revisions, steps=steps, expected_after=expected)

