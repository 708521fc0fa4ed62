"""The one analyser of rendered migration SQL (pglast: PostgreSQL's own parser): which statements a
revision runs, the locks each takes on which relations (the risk review, runbook/review/), and which
tables and indexes a run touches (the no-go gate, validation, the §6.5 choice between a table and a
full restore). One parse, so these never disagree.

SQL that pglast cannot parse touches an unknown set of tables: `touched` says so (`parsed` False) and
callers take the whole database as touched, never an empty list as "nothing".
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# ---------------------------------------------------------------------------
# Statements: which tables each one locks, and how strongly (PostgreSQL's explicit-locking table)

LOCK_MODES = ("AccessShareLock", "RowShareLock", "RowExclusiveLock", "ShareUpdateExclusiveLock", "ShareLock",
              "ShareRowExclusiveLock", "ExclusiveLock", "AccessExclusiveLock")
_CONFLICTS = {
    "AccessShareLock": {"AccessExclusiveLock"},
    "RowShareLock": {"ExclusiveLock", "AccessExclusiveLock"},
    "RowExclusiveLock": {"ShareLock", "ShareRowExclusiveLock", "ExclusiveLock", "AccessExclusiveLock"},
    "ShareUpdateExclusiveLock": {"ShareUpdateExclusiveLock", "ShareLock", "ShareRowExclusiveLock", "ExclusiveLock",
                                 "AccessExclusiveLock"},
    "ShareLock": {"RowExclusiveLock", "ShareUpdateExclusiveLock", "ShareRowExclusiveLock", "ExclusiveLock",
                  "AccessExclusiveLock"},
    "ShareRowExclusiveLock": {"RowExclusiveLock", "ShareUpdateExclusiveLock", "ShareLock", "ShareRowExclusiveLock",
                              "ExclusiveLock", "AccessExclusiveLock"},
    "ExclusiveLock": set(LOCK_MODES[1:]),
    "AccessExclusiveLock": set(LOCK_MODES),
}
# ALTER TABLE subcommands that take less than ACCESS EXCLUSIVE (the ALTER TABLE reference page).
_SHARE_UPDATE_EXCLUSIVE_CMDS = {"AT_ValidateConstraint", "AT_SetStatistics", "AT_SetOptions", "AT_ResetOptions",
                                "AT_ClusterOn", "AT_DropCluster", "AT_SetRelOptions", "AT_ResetRelOptions",
                                "AT_ReplaceRelOptions", "AT_DetachPartitionFinalize"}
_SHARE_ROW_EXCLUSIVE_CMDS = {"AT_EnableTrig", "AT_EnableAlwaysTrig", "AT_EnableReplicaTrig", "AT_DisableTrig",
                             "AT_EnableTrigAll", "AT_DisableTrigAll", "AT_EnableTrigUser", "AT_DisableTrigUser"}


def conflicts(wanted: str, held: str) -> bool:
    return held in _CONFLICTS.get(wanted, set())


@dataclass(frozen=True)
class Statement:
    start: int                     # byte offsets in the rendered SQL
    end: int
    line: int                      # 1-based line of its first character
    text: str                      # one line
    locks: tuple[tuple[str, str], ...]   # (relation as named, lock mode), strongest per relation
    indexes: tuple[str, ...] = ()  # index names whose table the database tells (DROP INDEX)


def _name(range_var: Any) -> str:
    schema = getattr(range_var, "schemaname", None)
    return f"{schema}.{range_var.relname}" if schema else range_var.relname


def _stronger(a: str | None, b: str) -> str:
    return b if a is None or LOCK_MODES.index(b) > LOCK_MODES.index(a) else a


def _statement_locks(node: Any) -> tuple[dict[str, str], list[str]]:
    """{relation: lock mode} a statement takes on existing relations, and index names it drops."""
    kind = type(node).__name__
    locks: dict[str, str] = {}
    indexes: list[str] = []

    def take(range_var: Any, mode: str) -> None:
        if range_var is not None and getattr(range_var, "relname", None):
            name = _name(range_var)
            locks[name] = _stronger(locks.get(name), mode)

    if kind == "IndexStmt":
        take(node.relation, "ShareUpdateExclusiveLock" if node.concurrent else "ShareLock")
    elif kind == "AlterTableStmt":
        for cmd in node.cmds or ():
            sub = cmd.subtype.name if hasattr(cmd.subtype, "name") else str(cmd.subtype)
            constraint = cmd.def_ if type(cmd.def_).__name__ == "Constraint" else None
            if constraint is not None and constraint.contype.name == "CONSTR_FOREIGN":
                take(node.relation, "ShareRowExclusiveLock")
                take(constraint.pktable, "ShareRowExclusiveLock")
            elif sub in _SHARE_UPDATE_EXCLUSIVE_CMDS:
                take(node.relation, "ShareUpdateExclusiveLock")
            elif sub in _SHARE_ROW_EXCLUSIVE_CMDS:
                take(node.relation, "ShareRowExclusiveLock")
            else:
                take(node.relation, "AccessExclusiveLock")
    elif kind in ("RenameStmt",):
        take(node.relation, "AccessExclusiveLock")
    elif kind == "TruncateStmt":
        for rel in node.relations or ():
            take(rel, "AccessExclusiveLock")
    elif kind in ("InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"):
        take(node.relation, "RowExclusiveLock")
    elif kind == "ReindexStmt":
        take(node.relation, "ShareLock")
    elif kind == "DropStmt":
        type_name = node.removeType.name
        for obj in node.objects or ():
            parts = [getattr(p, "sval", "") for p in obj] if isinstance(obj, (tuple, list)) else []
            if not parts or not all(parts):
                continue
            name = ".".join(parts)
            if type_name == "OBJECT_TABLE":
                locks[name] = "AccessExclusiveLock"
            elif type_name == "OBJECT_INDEX":
                indexes.append(name)
    elif kind == "CreateStmt":
        for element in node.tableElts or ():
            for constraint in getattr(element, "constraints", None) or ([element] if type(element).__name__ ==
                                                                         "Constraint" else []):
                if constraint.contype.name == "CONSTR_FOREIGN":
                    take(constraint.pktable, "ShareRowExclusiveLock")
    return locks, indexes


def statements(sql: str) -> list[Statement]:
    """The statements of a rendered revision with the locks they take; [] when pglast cannot parse it."""
    import pglast

    data = sql.encode("utf-8")
    try:
        parsed = pglast.parse_sql(sql)
    except Exception:  # pglast.parser.ParseError: squawk reports syntax-error itself
        return []
    out = []
    for raw in parsed:
        start = raw.stmt_location or 0
        end = start + (raw.stmt_len or (len(data) - start))
        chunk = data[start:end].decode("utf-8", errors="replace")
        lead = len(chunk) - len(chunk.lstrip())
        body = "\n".join(line for line in chunk.strip().splitlines() if not line.lstrip().startswith("--"))
        line = data[:start + len(chunk[:lead].encode())].count(b"\n") + 1
        # leading comment lines are part of the chunk: the statement starts after them
        for text_line in chunk[lead:].splitlines():
            if text_line.lstrip().startswith("--") or not text_line.strip():
                line += 1
                continue
            break
        locks, indexes = _statement_locks(raw.stmt)
        out.append(Statement(start, end, line, " ".join(body.split()), tuple(locks.items()), tuple(indexes)))
    return out


# Relations the bot's own bookkeeping touches in every rendered revision.
_IGNORED_TABLES = {"alembic_version"}


@dataclass(frozen=True)
class Touched:
    tables: list[str]          # created, altered, filled, emptied, dropped or referenced, in order of appearance
    indexes: list[str]         # created
    parsed: bool = True        # False: pglast could not parse the SQL, so nothing is known


def touched(sql: str) -> Touched:
    """The tables and new indexes of a rendered migration (alembic_version left out)."""
    import pglast

    if not (sql or "").strip():
        return Touched([], [])
    try:
        parsed = pglast.parse_sql(sql)
    except Exception:  # pglast.parser.ParseError
        return Touched([], [], parsed=False)
    tables: dict[str, None] = {}
    indexes: dict[str, None] = {}

    def add(name: str | None) -> None:
        if name and name.rpartition(".")[2] not in _IGNORED_TABLES:
            tables[name] = None

    for raw in parsed:
        node = raw.stmt
        kind = type(node).__name__
        if kind == "CreateStmt" and getattr(node, "relation", None) is not None:
            add(_name(node.relation))
        if kind == "IndexStmt" and node.idxname:
            indexes[node.idxname] = None
        locks, _dropped = _statement_locks(node)
        for name in locks:
            add(name)
    return Touched(list(tables), list(indexes))
