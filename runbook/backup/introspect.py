"""What the target's catalog says: its tables, views, partitions, foreign keys, objects created since a
backup, column definitions and row counts, and any pg_dump connected to it (the SQL lives here)."""
from __future__ import annotations

import re
from typing import Sequence

import psycopg
from psycopg import sql

from runbook.backup.model import Backup, BackupError, CatalogObject, DumpSession, OBJECT_KINDS
from runbook.backup.names import _ident, _plain, _split


_TABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]{0,62}(\.[A-Za-z_][A-Za-z0-9_$]{0,62})?$")


# User relations of the given kinds ('r' tables; 'v', 'm' views), not the catalogs', not extensions'.
RELATIONS_SQL = """
SELECT n.nspname, c.relname, c.relkind
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind = ANY(%s)
   AND n.nspname NOT IN ('pg_catalog', 'information_schema')
   AND n.nspname NOT LIKE 'pg\\_toast%%' AND n.nspname NOT LIKE 'pg\\_temp\\_%%'
   AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                    AND d.objid = c.oid AND d.deptype = 'e')
 ORDER BY 1, 2
"""

# Foreign keys between tables: restore order, and tables a table restore would touch.
FOREIGN_KEYS_SQL = """
SELECT cn.nspname || '.' || c.relname AS referencing, pn.nspname || '.' || p.relname AS referenced,
       k.conname, k.confdeltype
  FROM pg_constraint k
  JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace cn ON cn.oid = c.relnamespace
  JOIN pg_class p ON p.oid = k.confrelid JOIN pg_namespace pn ON pn.oid = p.relnamespace
 WHERE k.contype = 'f'
"""

OWNED_SEQUENCES_SQL = """
SELECT s.relname
  FROM pg_depend d JOIN pg_class s ON s.oid = d.objid
 WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
   AND d.refobjid = %s::regclass AND s.relkind = 'S' AND d.deptype IN ('a', 'i')
"""

DUMP_SESSIONS_SQL = """
SELECT pid, coalesce(application_name, ''), usename,
       extract(epoch FROM now() - backend_start)::float8, coalesce(query, '')
  FROM pg_stat_activity
 WHERE pid <> pg_backend_pid() AND backend_type = 'client backend'
   AND datname = current_database()
   AND (application_name = 'pg_dump'
        OR starts_with(application_name, 'runbook-bot/pg_dump')
        OR (state = 'active' AND query ~* '^\\s*COPY\\s.*\\sTO\\s+stdout'))
 ORDER BY backend_start
"""


def dump_in_progress(conn: psycopg.Connection) -> list[DumpSession]:
    """Every session of a pg_dump on this database, the bot's or anyone's (postgres.md §5): a
    migration must not start while one runs (its ALTER would abort a parallel dump or wait)."""
    return [DumpSession(pid=r[0], application=r[1], user=r[2], seconds=float(r[3] or 0), query=r[4])
            for r in conn.execute(DUMP_SESSIONS_SQL).fetchall()]


def _user_tables(conn: psycopg.Connection) -> list[str]:
    return [f"{schema}.{name}" for schema, name, _kind in conn.execute(RELATIONS_SQL, [["r"]]).fetchall()]


# Partitioned parents and their leaf partitions.
PARTITIONS_SQL = """
SELECT pn.nspname || '.' || p.relname AS parent, ln.nspname || '.' || l.relname AS leaf
  FROM pg_class p JOIN pg_namespace pn ON pn.oid = p.relnamespace
  LEFT JOIN LATERAL pg_partition_tree(p.oid) t ON t.isleaf
  LEFT JOIN pg_class l ON l.oid = t.relid
  LEFT JOIN pg_namespace ln ON ln.oid = l.relnamespace
 WHERE p.relkind = 'p' AND pn.nspname NOT IN ('pg_catalog', 'information_schema')
 ORDER BY 1, 2
"""


def _partitioned_tables(conn: psycopg.Connection) -> dict[str, list[str]]:
    """Partitioned parents -> their leaf partitions: the rows live in the leaves (user tables)."""
    found: dict[str, list[str]] = {}
    for parent, leaf in conn.execute(PARTITIONS_SQL).fetchall():
        found.setdefault(parent, []).extend([leaf] if leaf else [])
    return found


def _partitioned_refusal(chosen: Sequence[str], parents: dict[str, list[str]], item: Backup) -> str | None:
    """A table restore replaces rows: a partitioned parent holds none, its partitions do."""
    asked = [t for t in chosen if t in parents]
    if not asked:
        return None
    leaves = [leaf for t in asked for leaf in parents[t] if leaf in item.tables]
    hint = f" ({', '.join(_plain(t) for t in leaves[:10])})" if leaves else ""
    return f"{', '.join(_plain(t) for t in asked)} is partitioned: its rows live in its partitions; restore those{hint}"


def _user_views(conn: psycopg.Connection) -> list[tuple[str, str]]:
    """(schema.name, relkind) of views ('v') and materialized views ('m')."""
    return [(f"{schema}.{name}", kind) for schema, name, kind in conn.execute(RELATIONS_SQL, [["v", "m"]]).fetchall()]


# Schemas, types, domains, functions, procedures, aggregates and standalone sequences: what a full
# restore must also drop when they were created after the backup, since pg_restore --clean drops only
# what the archive holds. Never a candidate, as pg_dump never dumps them on their own: the system's
# schemas (pg_*, information_schema), public (pg_dump takes it as given), an extension's members or a
# schema an extension lives in, what is part of another object (deptype 'i': the row type of a table,
# array and multirange types, range constructors), sequences owned by a column (deptype 'a'/'i': they
# go with their table). `tag` is the name as pg_dump's TOC gives it: functions as name(argument types),
# the types by format_type, which qualifies them as pg_dump's does only under search_path = ''.
CATALOG_OBJECTS_SQL = """
WITH user_schemas AS (
  SELECT n.oid, n.nspname FROM pg_namespace n
   WHERE n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema'
), parts AS (
  SELECT classid, objid FROM pg_depend WHERE deptype IN ('e', 'i')
)
SELECT 'schema', n.nspname::text, n.nspname::text, n.nspname::text, ''
  FROM user_schemas n
 WHERE n.nspname <> 'public'
   AND NOT EXISTS (SELECT 1 FROM parts p WHERE p.classid = 'pg_namespace'::regclass AND p.objid = n.oid)
   AND NOT EXISTS (SELECT 1 FROM pg_depend d
                    WHERE d.refclassid = 'pg_namespace'::regclass AND d.refobjid = n.oid
                      AND (d.classid = 'pg_extension'::regclass
                           OR EXISTS (SELECT 1 FROM pg_depend e WHERE e.classid = d.classid AND e.objid = d.objid
                                         AND e.deptype = 'e')))
UNION ALL
SELECT CASE t.typtype WHEN 'd' THEN 'domain' ELSE 'type' END, n.nspname::text, t.typname::text, t.typname::text, ''
  FROM pg_type t JOIN user_schemas n ON n.oid = t.typnamespace
 WHERE t.typtype IN ('b', 'c', 'd', 'e', 'r')
   AND (t.typrelid = 0 OR EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = t.typrelid AND c.relkind = 'c'))
   AND NOT EXISTS (SELECT 1 FROM parts p WHERE p.classid = 'pg_type'::regclass AND p.objid = t.oid)
UNION ALL
SELECT CASE f.prokind WHEN 'p' THEN 'procedure' WHEN 'a' THEN 'aggregate' ELSE 'function' END,
       n.nspname::text, f.proname::text,
       f.proname || '(' || CASE WHEN f.prokind = 'a' AND f.pronargs = 0 THEN '*' ELSE coalesce(
           (SELECT string_agg(format_type(a.type, NULL), ', ' ORDER BY a.position)
              FROM unnest(f.proargtypes) WITH ORDINALITY AS a(type, position)), '') END || ')',
       CASE WHEN f.prokind = 'a' AND f.pronargs = 0 THEN '*' ELSE pg_get_function_identity_arguments(f.oid) END
  FROM pg_proc f JOIN user_schemas n ON n.oid = f.pronamespace
 WHERE f.prokind IN ('f', 'p', 'w', 'a')
   AND NOT EXISTS (SELECT 1 FROM parts p WHERE p.classid = 'pg_proc'::regclass AND p.objid = f.oid)
UNION ALL
SELECT 'sequence', n.nspname::text, s.relname::text, s.relname::text, ''
  FROM pg_class s JOIN user_schemas n ON n.oid = s.relnamespace
 WHERE s.relkind = 'S'
   AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = s.oid
                      AND d.deptype IN ('e', 'i', 'a'))
"""


def _catalog_objects(conn: psycopg.Connection) -> list[CatalogObject]:
    with conn.transaction():
        conn.execute("SET LOCAL search_path = ''")      # format_type then qualifies as pg_dump's tags do
        found = conn.execute(CATALOG_OBJECTS_SQL).fetchall()
    return [CatalogObject(kind=kind, schema=schema, name=name, tag=tag, identity=identity)
            for kind, schema, name, tag, identity in found]


def _records_objects(item: Backup) -> bool:
    """Backups taken before the record of OBJECT_KINDS was kept have none: nothing of those kinds is dropped."""
    return isinstance(item.details.get("objects"), dict)


def _created_since(conn: psycopg.Connection, item: Backup) -> list[CatalogObject]:
    """The views and the objects of OBJECT_KINDS that `item` does not hold, in the order a full restore
    drops them (tables are dropped after the views, before the rest)."""
    held_views = set(item.details.get("views", []))
    later = [CatalogObject(kind="materialized view" if relkind == "m" else "view", schema=schema, name=name, tag=name)
             for view, relkind in _user_views(conn) if view not in held_views for schema, name in [_split(view)]]
    if _records_objects(item):
        held = {kind: set(keys) for kind, keys in item.details["objects"].items()}
        order = list(OBJECT_KINDS)
        later += sorted((o for o in _catalog_objects(conn) if o.key not in held.get(o.kind, ())),
                        key=lambda o: (order.index(o.kind), o.key))
    return later


def resolve_tables(requested: Sequence[str], existing: Sequence[str], where: str) -> list[str]:
    """Validate user-supplied names against what exists: schema.table, or a bare name found in
    exactly one schema. BackupError names the unknown table and what there is."""
    resolved: list[str] = []
    for raw in requested:
        name = str(raw).strip()
        if not _TABLE_NAME.match(name):
            shown = name if len(name) <= 40 else name[:40] + "…"
            raise BackupError(f"'{shown}' is not a table name: use table or schema.table")
        if "." in name:
            matches = [t for t in existing if t == name]
        else:
            matches = [t for t in existing if _split(t)[1] == name]
        if not matches:
            known = ", ".join(_plain(t) for t in existing[:15]) + (" …" if len(existing) > 15 else "")
            raise BackupError(f"unknown table '{name}' in {where}; tables: {known or 'none'}")
        if len(matches) > 1:
            raise BackupError(f"table '{name}' exists in several schemas ({', '.join(matches)}): "
                              "name it as schema.table")
        if matches[0] not in resolved:
            resolved.append(matches[0])
    return resolved


def _count_rows(conn: psycopg.Connection, tables: Sequence[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    tables = list(tables)
    for start in range(0, len(tables), 100):
        part = tables[start:start + 100]
        query = sql.SQL(" UNION ALL ").join(
            sql.SQL("SELECT {}, count(*) FROM {}").format(sql.Literal(t), _ident(t)) for t in part)
        for table, count in conn.execute(query).fetchall():
            counts[table] = int(count)
    return counts


# Each table's columns as the database defines them now: name and type, in order (dropped ones left out).
COLUMNS_SQL = """
SELECT a.attname, format_type(a.atttypid, a.atttypmod)
  FROM pg_attribute a
 WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped
 ORDER BY a.attnum
"""


def _table_columns(conn: psycopg.Connection, tables: Sequence[str]) -> dict[str, list[list[str]]]:
    """table -> [[column, type], ...]: what a table restore compares with the live definition."""
    return {t: [[name, kind] for name, kind in conn.execute(COLUMNS_SQL, (t,)).fetchall()] for t in tables}


def definition_changes(conn: psycopg.Connection, item: Backup, tables: Sequence[str]) -> dict[str, str] | None:
    """table -> how its definition changed since `item` was taken ("added since: note"), for the tables
    that changed; None when the backup recorded no definitions (taken before they were recorded)."""
    recorded = item.details.get("columns")
    if not isinstance(recorded, dict):
        return None
    names = {t: t if t in recorded else next((r for r in recorded if r.partition(".")[2] == t), t) for t in tables}
    live = _table_columns(conn, [n for n in names.values() if n in recorded])
    changes: dict[str, str] = {}
    for table, name in names.items():
        if name not in recorded or not live.get(name):
            continue
        then, now = dict(map(tuple, recorded[name])), dict(map(tuple, live[name]))
        added = [c for c in now if c not in then]
        dropped = [c for c in then if c not in now]
        retyped = [f"{c} ({then[c]} -> {now[c]})" for c in then if c in now and then[c] != now[c]]
        parts = ([f"added since: {', '.join(added)}"] if added else []) + \
                ([f"dropped since: {', '.join(dropped)}"] if dropped else []) + \
                ([f"retyped: {', '.join(retyped)}"] if retyped else [])
        if parts:
            changes[table] = "; ".join(parts)
    return changes


def _definition_refusals(conn: psycopg.Connection, item: Backup, chosen: Sequence[str], current: Sequence[str],
                         name: str) -> list[str]:
    """Why a table restore of `chosen` from `item` must be refused: a table restore replaces rows only, so
    a table whose definition changed since the backup (a column added, dropped or retyped) would be left
    with every value of the new column NULL or the restore would fail half-way. Backups that recorded
    no definitions are compared by revision instead."""
    changes = definition_changes(conn, item, chosen)
    if changes is None:
        if item.revision is not None and sorted(item.revision) == sorted(current):
            return []
        return [f"backup #{item.id} was taken at {', '.join(item.revision or []) or 'an unrecorded revision'}, "
                f"{name} is at {', '.join(current) or 'no revision'}, and it did not record its table definitions: "
                "a table restore cannot tell whether they still match; use a full restore, or a backup taken at "
                "the current revision"]
    return [f"{_plain(table)} is not defined as it was in backup #{item.id} ({change}): a table restore replaces "
            "rows only and would leave those columns wrong; use a full restore, or take a backup at the current "
            "revision" for table, change in changes.items()]


def _foreign_keys(conn: psycopg.Connection) -> list[tuple[str, str, str, str]]:
    return [tuple(r) for r in conn.execute(FOREIGN_KEYS_SQL).fetchall()]


def _parents_first(tables: Sequence[str], fks: Sequence[tuple[str, str, str, str]]) -> list[str]:
    """Referenced tables before the tables referencing them (cycles keep their given order)."""
    chosen = list(tables)
    needs = {t: {ref for (src, ref, _n, _d) in fks if src == t and ref in chosen and ref != t} for t in chosen}
    ordered: list[str] = []
    while needs:
        ready = [t for t in chosen if t in needs and not (needs[t] - set(ordered))]
        if not ready:                      # a cycle: take the rest as they are
            ordered += [t for t in chosen if t in needs]
            break
        for t in ready:
            ordered.append(t)
            del needs[t]
    return ordered
