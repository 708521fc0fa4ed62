"""The revision graph: every revision in Alembic's order, its parents (down revisions and
dependencies), children, heads and branch labels."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from runbook.revisions.model import Revision, RevisionError


@dataclass
class _Graph:
    revisions: dict[str, Revision]                 # oldest first
    heads: list[str]
    parents: dict[str, tuple[str, ...]]            # down_revisions + resolved depends_on
    children: dict[str, list[str]]                 # through down_revision only (as Alembic's nextrev)
    labels: dict[str, str] = field(default_factory=dict)   # branch label -> revision declaring it

    def position(self, rev: str) -> int:
        return self._positions[rev]

    def __post_init__(self) -> None:
        self._positions = {rev: i for i, rev in enumerate(self.revisions)}

    def ancestors(self, revs: Iterable[str]) -> set[str]:
        """The given revisions and everything they need (down revisions and dependencies)."""
        seen: set[str] = set()
        stack = list(revs)
        while stack:
            rev = stack.pop()
            if rev in seen:
                continue
            seen.add(rev)
            stack.extend(self.parents[rev])
        return seen


def _build_graph(scripts: list[Revision]) -> _Graph:
    by_id: dict[str, Revision] = {}
    for script in scripts:
        if script.revision in by_id:
            raise RevisionError(f"revision {script.revision} is defined twice: {by_id[script.revision].path.name} "
                                f"and {script.path.name}")
        by_id[script.revision] = script
    labels: dict[str, str] = {}
    for script in scripts:
        for label in script.branch_labels:
            labels[label] = script.revision

    def resolve_ref(ref: str, owner: Revision, what: str) -> str:
        if ref in by_id:
            return ref
        if what == "depends_on":
            if ref in labels:
                return labels[ref]
            matches = [rev for rev in by_id if rev.startswith(ref)]
            if len(matches) == 1:
                return matches[0]
        raise RevisionError(f"{owner.path.name}: {what} {ref!r} is not a revision of this app")

    parents: dict[str, tuple[str, ...]] = {}
    children: dict[str, list[str]] = {rev: [] for rev in by_id}
    for script in scripts:
        downs = tuple(resolve_ref(ref, script, "down_revision") for ref in script.down_revisions)
        deps = tuple(resolve_ref(ref, script, "depends_on") for ref in script.depends_on)
        parents[script.revision] = downs + tuple(d for d in deps if d not in downs)
        for down in downs:
            children[down].append(script.revision)

    # Kahn's topological sort, oldest first; ties keep file order (stable, deterministic).
    file_order = {script.revision: i for i, script in enumerate(scripts)}
    waiting = {rev: len(set(ps)) for rev, ps in parents.items()}
    dependents: dict[str, list[str]] = {rev: [] for rev in by_id}
    for rev, ps in parents.items():
        for parent in set(ps):
            dependents[parent].append(rev)
    ready = sorted((rev for rev, n in waiting.items() if n == 0), key=file_order.__getitem__)
    order: list[str] = []
    while ready:
        rev = ready.pop(0)
        order.append(rev)
        released = []
        for child in dependents[rev]:
            waiting[child] -= 1
            if waiting[child] == 0:
                released.append(child)
        ready = sorted(ready + released, key=file_order.__getitem__)
    if len(order) != len(by_id):
        stuck = sorted(set(by_id) - set(order))
        raise RevisionError(f"the revisions form a cycle: {', '.join(stuck[:5])}")

    heads = [rev for rev in order if not children[rev]]
    return _Graph(revisions={rev: by_id[rev] for rev in order}, heads=heads, parents=parents,
                  children=children, labels=labels)
