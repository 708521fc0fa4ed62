"""The live database, read once for all revisions: sizes, row estimates, and who holds (or queues
for) locks on the relations the SQL names."""
from __future__ import annotations

from typing import Iterable, Sequence

import psycopg

from runbook.review.model import LockHolder, TableFacts


# Catalog only, so it never waits on a lock: which table each name is (a dropped index counts as its
# table), its row estimate, and a size from relpages (table, its indexes, its TOAST) for when the exact
# size cannot be read.
TABLE_FACTS_SQL = """
SELECT want.name, t.oid, t.oid::regclass::text, t.reltuples::bigint,
       (t.relpages::bigint
        + coalesce((SELECT sum(ic.relpages) FROM pg_index x JOIN pg_class ic ON ic.oid = x.indexrelid
                     WHERE x.indrelid = t.oid), 0)
        + coalesce((SELECT tc.relpages FROM pg_class tc WHERE tc.oid = t.reltoastrelid), 0))
       * current_setting('block_size')::bigint
  FROM unnest(%s::text[]) AS want(name)
  JOIN pg_class c ON c.oid = to_regclass(want.name)
  LEFT JOIN pg_index i ON i.indexrelid = c.oid
  JOIN pg_class t ON t.oid = coalesce(i.indrelid, c.oid)
"""

# pg_total_relation_size takes ACCESS SHARE: behind a lock held (or queued for) ACCESS EXCLUSIVE it
# fails after the monitor connection's lock_timeout, and the catalog's estimate stands in.
TABLE_SIZES_SQL = "SELECT oid, pg_total_relation_size(oid) FROM unnest(%s::oid[]) AS oid"

# pg_locks for the named relations only (design rule 10: never the whole lock table), with the
# session (or prepared transaction) behind each lock; our own connection left out.
LOCK_HOLDERS_SQL = """
SELECT l.relation, l.relation::regclass::text, l.mode, l.granted, l.pid, a.state, a.application_name, a.usename,
       extract(epoch FROM now() - coalesce(a.xact_start, p.prepared)), left(coalesce(a.query, ''), 300), p.gid
  FROM pg_locks l
  LEFT JOIN pg_stat_activity a ON a.pid = l.pid
  LEFT JOIN pg_prepared_xacts p ON l.pid IS NULL AND l.virtualtransaction = '-1/' || p.transaction::text
 WHERE l.locktype = 'relation'
   AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
   AND l.relation = ANY(%s::oid[])
   AND l.pid IS DISTINCT FROM pg_backend_pid()
 ORDER BY l.granted DESC, l.pid
"""


def _quoted(name: str) -> str:
    return ".".join('"' + part.replace('"', '""') + '"' for part in name.split("."))


def live_facts(conn, names: Iterable[str]) -> dict[str, TableFacts]:
    """Facts of every relation named (a dropped index counts as its table); one query each."""
    names = sorted(set(names))
    if not names:
        return {}
    rows = conn.execute(TABLE_FACTS_SQL, [[_quoted(n) for n in names]]).fetchall()
    found = {row[0]: row for row in rows}
    oids = sorted({row[1] for row in rows})
    sizes = _exact_sizes(conn, oids)
    holders: dict[int, list[LockHolder]] = {}
    if oids:
        for (oid, relation, mode, granted, pid, state, app, user, xact, query, gid) in conn.execute(
                LOCK_HOLDERS_SQL, [oids]).fetchall():
            holders.setdefault(oid, []).append(LockHolder(relation, mode, granted, pid, state, app, user,
                                                          float(xact) if xact is not None else None,
                                                          " ".join((query or "").split()), gid))
    facts = {}
    for name in names:
        row = found.get(_quoted(name))
        if row is None:
            facts[name] = TableFacts(name, False)
            continue
        rows_estimate = int(row[3]) if row[3] is not None and row[3] >= 0 else None
        size = sizes.get(row[1])
        facts[name] = TableFacts(row[2], True, int(row[4] if size is None else size), rows_estimate,
                                 tuple(holders.get(row[1], ())), exact_size=size is not None)
    return facts


def _exact_sizes(conn, oids: Sequence[int]) -> dict[int, int]:
    """pg_total_relation_size of each table; a table that is locked now is left out (see above)."""
    if not oids:
        return {}
    try:
        return dict(conn.execute(TABLE_SIZES_SQL, [list(oids)]).fetchall())
    except psycopg.errors.LockNotAvailable:
        _recover(conn)
    out = {}
    for oid in oids:                                   # one at a time: only the locked ones are missing
        try:
            out.update(conn.execute(TABLE_SIZES_SQL, [[oid]]).fetchall())
        except psycopg.errors.LockNotAvailable:
            _recover(conn)
    return out


def _recover(conn) -> None:
    """After a failed statement: an explicit transaction must be rolled back to go on."""
    if not conn.autocommit:
        conn.rollback()
