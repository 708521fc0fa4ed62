"""What a restore would do (§6.2-6.4), for its approval request: the tables replaced, created and
dropped with their row counts now and in the backup, the objects dropped, warnings and refusals."""
from __future__ import annotations

from typing import Any, Sequence

from runbook.backup.catalogue import get_backup
from runbook.backup.environment import project_of, target_of
from runbook.backup.introspect import (_count_rows, _created_since, _definition_refusals, _foreign_keys,
                                       _partitioned_refusal, _partitioned_tables, _records_objects, _user_tables,
                                       resolve_tables)
from runbook.backup.model import Backup, BackupError, CatalogObject, RestorePlan, TableChange
from runbook.backup.names import _plain
from runbook.config import Environment
from runbook.target import TargetError


def _restorable(item: Backup) -> None:
    if item.kind == "schema":
        raise BackupError(f"backup {item.id} is schema-only (a reference, §2.2): restore a full or table backup")
    if item.status != "verified":
        why = f" ({item.error})" if item.error else ""
        raise BackupError(f"backup {item.id} is {item.status}{why}: only verified backups can be restored")


def _restore_tables(item: Backup, tables: Sequence[str]) -> tuple[str, list[str]]:
    if not tables:
        return ("tables" if item.kind == "tables" else "full"), list(item.tables)
    return "tables", resolve_tables(tables, item.tables, f"backup {item.id}")


def plan_restore(name: str, env: Environment, store, backup_id: int | str, *,
                 tables: Sequence[str] = ()) -> RestorePlan:
    """What a restore would replace, for the approval message; nothing is changed.

    BackupError for an unknown id, a backup that is not restorable, or an unknown table."""
    item = get_backup(store, name, backup_id)
    _restorable(item)
    mode, chosen = _restore_tables(item, tables)
    target = target_of(env)
    try:
        with target.connect("restore-plan", statement_timeout="120s") as conn:
            current = project_of(env).current(conn)
            existing = _user_tables(conn)
            parents = _partitioned_tables(conn)
            fks = _foreign_keys(conn)
            extras = [t for t in [*existing, *parents] if t not in item.tables] if mode == "full" else []
            later = _created_since(conn, item) if mode == "full" else []
            now_counts = _count_rows(conn, [t for t in chosen + extras if t in existing or t in parents])
            definitions = _definition_refusals(conn, item, [t for t in chosen if t in existing], current, name) \
                if mode == "tables" else []
    except TargetError as exc:
        raise BackupError(str(exc)) from None
    changes = [TableChange(table=t, rows_now=now_counts.get(t), rows_in_backup=item.row_counts.get(t),
                           action="replace" if t in existing or t in parents else "create") for t in chosen]
    changes += [TableChange(table=t, rows_now=now_counts.get(t), rows_in_backup=None, action="drop") for t in extras]
    warnings: list[str] = []
    blockers: list[str] = []
    if item.revision is not None and sorted(item.revision) != sorted(current):
        warnings.append(f"the database is at {', '.join(current) or 'no revision'}; the backup was taken at "
                        f"{', '.join(item.revision) or 'no revision'}: the restore brings that revision back")
    if mode == "full" and extras:
        warnings.append(f"{len(extras)} table(s) created since the backup will be dropped: "
                        + ", ".join(_plain(t) for t in extras[:10]))
    if mode == "full":
        warnings += _drop_warnings(later)
        if not _records_objects(item):
            warnings.append(f"backup {item.id} was taken before backups recorded their types, domains, functions, "
                            "sequences and schemas: those created since it stay in place (drop them by hand if a "
                            "migration will create them again)")
    if mode == "tables":
        refusal = _partitioned_refusal(chosen, parents, item)
        if refusal:
            blockers.append(refusal)
        blockers += definitions
        missing = [t for t in chosen if t not in existing and t not in parents]
        if missing:
            blockers.append(f"{', '.join(_plain(t) for t in missing)} no longer exist(s) in {name}: a table restore "
                            "replaces rows only; use a full restore")
        for src, ref, conname, deltype in fks:
            if ref in chosen and src not in chosen:
                if deltype in ("c", "n", "d"):
                    blockers.append(f"{_plain(src)} references {_plain(ref)} with ON DELETE "
                                    f"{ {'c': 'CASCADE', 'n': 'SET NULL', 'd': 'SET DEFAULT'}[deltype]} "
                                    f"({conname}): replacing {_plain(ref)} would change {_plain(src)}; "
                                    "restore both tables together")
                else:
                    warnings.append(f"{_plain(src)} references {_plain(ref)} ({conname}): if any of its rows "
                                    f"point at rows the backup lacks, the restore fails and changes nothing")
    return RestorePlan(environment=name, target=target.label, backup=item, mode=mode, tables=chosen,
                       current_revision=current, backup_revision=item.revision, changes=changes,
                       warnings=warnings, blockers=blockers, dropped=later)


def _drop_warnings(later: Sequence[CatalogObject]) -> list[str]:
    """One line per kind, in the order they are dropped."""
    names: dict[str, list[str]] = {}
    for obj in later:
        names.setdefault(obj.kind, []).append(obj.shown)
    return [f"{len(shown)} {kind}(s) created since the backup will be dropped"
            f"{' with everything in them' if kind == 'schema' else ''}: "
            + ", ".join(shown[:10]) + (" …" if len(shown) > 10 else "") for kind, shown in names.items()]


def plan_to_params(plan: RestorePlan) -> dict[str, Any]:
    """A restore plan as its approval request keeps it (JSON): what the executor needs (backup id,
    tables, the revision the approvers saw) and the facts the request message shows."""
    item = plan.backup
    finished = item.finished_at or item.started_at
    return {
        "backup_id": item.id, "mode": plan.mode, "tables": list(plan.tables),
        "expected_revision": list(plan.current_revision), "target": plan.target,
        "backup": {"name": item.name, "kind": item.kind, "format": item.format, "level": item.level,
                   "sha256": item.sha256, "size_bytes": item.size_bytes, "revision": item.revision,
                   "finished_at": finished.isoformat() if finished else None},
        "changes": [{"table": c.table, "rows_now": c.rows_now, "rows_in_backup": c.rows_in_backup, "action": c.action}
                    for c in plan.changes],
        "warnings": list(plan.warnings),
    }
