"""§6.5: the rollback decision tree, walked with the evidence at hand.

    Migration failed or causing issues?
    ├─ Data corruption detected?        YES -> full restore (§6.2)
    ├─ Migration is reversible?         YES -> Alembic downgrade (§6.1)
    ├─ Only specific tables affected?   YES -> table restore (§6.3)   NO -> full restore (§6.2)
    └─ Contact escalation (§7)

The evidence: the validation report (corruption: orphaned rows, NULLs in required columns;
loss: fewer rows than before the run), the reversibility of the revisions to undo (read from
the scripts with `ast`, runbook.revisions.scripts), and the tables those revisions touch (from their
offline SQL) or the ones validation found at fault. Before the tree, one question the runbook
leaves implicit: did the run leave anything applied? A failed attempt is one transaction and
rolls back whole, so often there is nothing to undo.

`irreversible_refusal` / `check_downgrade` are what the request side calls up front: an
irreversible downgrade is refused before anyone is asked to approve it, pointing to restore.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Sequence

from runbook.config import Environment
from runbook.precheck import project_of, target_of
from runbook.revisions import AlembicProject, Revision, RevisionError

Action = Literal["none", "downgrade", "table_restore", "full_restore", "escalate"]
SECTION = {"none": "3", "downgrade": "6.1", "table_restore": "6.3", "full_restore": "6.2", "escalate": "7"}


@dataclass(frozen=True)
class TreeStep:
    question: str
    answer: str                       # yes, no, unknown
    evidence: str


@dataclass(frozen=True)
class Recommendation:
    action: Action
    headline: str                     # one line: what to do, and why
    walk: list[TreeStep]              # the questions asked, in order, with their evidence
    target_revision: str | None = None    # for a downgrade: where to (an id or "base")
    tables: list[str] = field(default_factory=list)   # for a table restore
    undo: list[str] = field(default_factory=list)     # the revisions that would be undone, newest first

    @property
    def section(self) -> str:
        return SECTION[self.action]

    @property
    def reasons(self) -> list[str]:
        return [f"{s.question} {s.answer}: {s.evidence}" for s in self.walk]


class IrreversibleDowngrade(Exception):
    """A downgrade that cannot run: one line naming the revision and pointing to restore."""


def irreversible_refusal(undo: Sequence[Revision], environment: str) -> str | None:
    """Why a downgrade undoing `undo` must be refused before anyone approves it, or None."""
    bad = [r for r in undo if not r.reversible]
    if not bad:
        return None
    first = bad[0]
    more = f" (and {len(bad) - 1} more irreversible)" if len(bad) > 1 else ""
    return (f"cannot roll back {environment}: {first.revision} is irreversible ({first.irreversible_reason})"
            f"{more}; restore from a backup instead (`restore ID`, or with --table for the affected tables)")


@dataclass(frozen=True)
class DowngradePlan:
    current: list[str]
    target: str                       # resolved: a revision id or "base"
    undo: list[Revision]              # newest first


def check_downgrade(name: str, env: Environment, target: str = "-1", *,
                    project: AlembicProject | None = None) -> DowngradePlan:
    """The downgrade a rollback request would run, checked up front.

    RevisionError for a target that does not exist or is not behind the current revision;
    IrreversibleDowngrade when a revision on the way cannot be undone. TargetError when the
    database cannot be read.
    """
    project = project or project_of(env)
    with target_of(env).connect("rollback-check") as conn:
        current = project.current(conn)
    if len(current) > 1:
        raise RevisionError(f"the database has several current revisions ({', '.join(current)})")
    resolved = project.resolve(target, current)
    if resolved == "heads":
        raise RevisionError("a rollback needs one revision to go back to, not heads")
    undo = project.downgrades(current, resolved)
    if not undo:
        raise RevisionError(f"nothing to roll back: {name} is at {', '.join(current) or 'base'}, "
                            f"which is not ahead of {resolved}")
    refusal = irreversible_refusal(undo, name)
    if refusal:
        raise IrreversibleDowngrade(refusal)
    return DowngradePlan(current=current, target=resolved, undo=undo)


def tables_between(project: AlembicProject, dsn: str, older: Sequence[str], newer: Sequence[str]) -> list[str]:
    """Tables touched by the revisions from `older` (exclusive) to `newer` (inclusive), from their offline SQL."""
    from runbook.validate import tables_in_sql

    if not newer or sorted(older) == sorted(newer):
        return []
    try:
        return tables_in_sql(project.sql_preview(dsn, list(older), newer[0]))
    except RevisionError:
        return []


def decide(*, project: AlembicProject, start: Sequence[str] | None, current: Sequence[str] | None,
           direction: str = "upgrade", failure: str | None = None, validation: Any = None,
           touched_tables: Sequence[str] = (), backup_available: bool | None = None) -> Recommendation:
    """Walk §6.5 with the evidence and recommend one action.

    `start`: the revision(s) before the run (None: unknown, e.g. an on-demand validation; then
    the newest revision is the one in question). `current`: the version table now (None:
    unreadable). `validation`: a ValidationReport or None. `touched_tables`: tables the applied
    revisions change (their SQL). `backup_available`: False when no backup exists to restore from.
    """
    walk: list[TreeStep] = []
    if current is None:
        walk.append(TreeStep("Is the database's revision known?", "no",
                             failure or "the version table could not be read"))
        return Recommendation("escalate", "escalate (§7): the database's state is unknown; check it by hand first",
                              walk)
    current = list(current)

    # 0. Did the run leave anything applied?
    if start is not None and direction == "upgrade":
        start = list(start)
        if sorted(start) == sorted(current):
            evidence = (f"the database is still at {', '.join(current) or 'base'}: the failed attempt was rolled "
                        "back whole (one transaction)")
            walk.append(TreeStep("Did the run leave anything applied?", "no", evidence))
            fix = f"; {failure}" if failure else ""
            return Recommendation("none", f"nothing to roll back: {', '.join(current) or 'base'} is unchanged; fix "
                                          f"the failing revision and run again{fix}", walk)
    try:
        if start is not None and direction == "upgrade":
            back_to = start[0] if start else "base"
        else:
            back_to = project.resolve("-1", current)
        undo = project.downgrades(current, back_to)
    except RevisionError as exc:
        walk.append(TreeStep("Are the revisions to undo known?", "no", str(exc)))
        return Recommendation("escalate", f"escalate (§7): {exc}", walk)
    if start is not None and direction == "upgrade":
        walk.append(TreeStep("Did the run leave anything applied?", "yes",
                             f"{', '.join(r.revision for r in undo)} applied (now at {', '.join(current)})"))

    # 1. Data corruption detected?
    corrupt = validation is not None and (validation.corruption or validation.data_loss)
    if corrupt:
        found = [f"{c.name}: {c.detail}" for c in validation.failed if c.kind in ("corruption", "data_loss")]
        walk.append(TreeStep("Data corruption detected?", "yes", "; ".join(found)))
        return _restore(walk, "full_restore", undo, backup_available,
                        "full restore (§6.2): validation found corrupt or lost data")
    if validation is None:
        evidence = "no validation ran: the migration failed before it" if failure else "no validation ran"
    else:
        evidence = "validation found no orphans, no NULLs in required columns and no lost rows"
    walk.append(TreeStep("Data corruption detected?", "no" if validation is not None else "unknown", evidence))

    # 2. Migration reversible?
    irreversible = [r for r in undo if not r.reversible]
    downgrade_failed = direction == "downgrade" and failure is not None
    if not irreversible and not downgrade_failed and undo:
        target = back_to
        walk.append(TreeStep("Migration is reversible?", "yes",
                             f"{', '.join(r.revision for r in undo)} have downgrade() steps"))
        return Recommendation("downgrade", f"downgrade to {target} (§6.1): undoes "
                                           f"{', '.join(r.revision for r in undo)}", walk, target_revision=target,
                              undo=[r.revision for r in undo])
    if downgrade_failed:
        walk.append(TreeStep("Migration is reversible?", "no", f"the downgrade itself failed: {failure}"))
    elif not undo:
        walk.append(TreeStep("Migration is reversible?", "unknown", "no revision to undo"))
    else:
        walk.append(TreeStep("Migration is reversible?", "no", "; ".join(
            f"{r.revision}: {r.irreversible_reason}" for r in irreversible)))

    # 3. Only specific tables affected?
    tables = sorted(set(touched_tables) | set(validation.affected_tables if validation is not None else []))
    if tables:
        walk.append(TreeStep("Only specific tables affected?", "yes", ", ".join(tables)))
        return _restore(walk, "table_restore", undo, backup_available,
                        f"table restore (§6.3) of {', '.join(tables)}", tables)
    walk.append(TreeStep("Only specific tables affected?", "unknown",
                         "the revisions' SQL could not be rendered and validation named no table"))
    return _restore(walk, "full_restore", undo, backup_available, "full restore (§6.2): the affected tables are "
                                                                 "not known")


def _restore(walk: list[TreeStep], action: Action, undo: list[Revision], backup_available: bool | None,
             headline: str, tables: Sequence[str] = ()) -> Recommendation:
    if backup_available is False:
        walk.append(TreeStep("Is there a backup to restore from?", "no", "the catalogue has no verified backup"))
        return Recommendation("escalate", f"escalate (§7): {headline.split(':')[0]} is needed but there is no backup",
                              walk, tables=list(tables), undo=[r.revision for r in undo])
    return Recommendation(action, headline, walk, tables=list(tables), undo=[r.revision for r in undo])


def fit_to_backup(rec: Recommendation, backup: Any, conn: Any = None) -> Recommendation:
    """A table restore (§6.3) loads data only, so it needs every affected table in the backup it
    restores from, defined as it is now. A table the migration created is not in a pre-migration backup,
    and restoring the others would leave it (and the version table) behind; a column a revision added
    would be left NULL: then the tree's answer to "only specific tables affected?" is no, and §6.2
    (full restore from that backup) is the way back. `backup`: the runbook.backup.Backup the button
    would restore from, or None; `conn`: the target, to compare the tables' definitions."""
    if rec.action != "table_restore" or backup is None:
        return rec
    held = {t for t in backup.tables} | {t.partition(".")[2] for t in backup.tables if "." in t}
    missing = [t for t in rec.tables if t not in held]
    if not missing:
        from runbook.backup import definition_changes

        changed = definition_changes(conn, backup, rec.tables) if conn is not None else None
        if not changed:
            return rec
        names = ", ".join(changed)
        walk = [*rec.walk, TreeStep("Are the affected tables defined as in the backup?", "no",
                                    "; ".join(f"{t}: {c}" for t, c in changed.items())
                                    + ": a table restore loads rows only")]
        return Recommendation("full_restore", f"full restore (§6.2) from backup #{backup.id}: {names} changed "
                                              "definition since it was taken", walk, undo=list(rec.undo))
    names = ", ".join(missing)
    walk = [*rec.walk, TreeStep("Are the affected tables in the backup?", "no",
                                f"{names} did not exist when backup #{backup.id} was taken (created by the "
                                "revisions to undo): a table restore cannot undo that")]
    return Recommendation("full_restore", f"full restore (§6.2) from backup #{backup.id}: {names} did not exist "
                                          "when it was taken", walk, undo=list(rec.undo))


def recommendation_to_json(rec: Recommendation) -> dict[str, Any]:
    return {"action": rec.action, "section": rec.section, "headline": rec.headline,
            "target_revision": rec.target_revision, "tables": list(rec.tables), "undo": list(rec.undo),
            "walk": [asdict(s) for s in rec.walk]}


__all__ = ["DowngradePlan", "IrreversibleDowngrade", "Recommendation", "TreeStep", "check_downgrade", "decide",
           "fit_to_backup", "irreversible_refusal", "recommendation_to_json", "tables_between"]
