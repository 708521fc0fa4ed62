"""What the target database is doing: runbook §1.1 (health) and §4 (monitoring during a migration).

Two entry points, both taking an open autocommit psycopg connection (use
`Target(dsn).connect("precheck")`, which sets the monitor timeouts and names the session):

* `poll(conn)` -> `Poll`: one read of `pg_stat_activity`, a handful of counts. Cheap enough for
  the scheduled watch; it never touches the lock manager.
* `snapshot(conn, ...)` -> `Activity`: the sessions behind those counts. Long-running queries,
  idle-in-transaction sessions, prepared transactions and, only when someone waits on a lock,
  the blocking tree: `pg_blocking_pids()` for the waiting sessions only, roots and queues
  resolved here in Python, and `pg_locks` read once to add the lock mode, the relation and the
  exact wait start.

Design rule 10 and `reference/postgres.md` §2.2 explain the choices (the wiki self-join on
`pg_locks` is wrong on lock queues and quadratic). What is reported:

* client backends only, never the bot's own sessions (application_name starting with
  `runbook-bot`) nor the monitoring connection itself. A bot session that blocks others still
  shows up as the root of their queue: leaving it out would misplace the blame.
* by default the connected database only (`all_databases=True` widens it to the cluster).
  Blockers are followed wherever they are.

The monitor role needs `pg_monitor` (or `pg_read_all_stats`) to see other roles' sessions;
without it their state is hidden and they are not counted. Query texts are truncated, never
escaped: escaping belongs to the edge that renders them.
"""
from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from typing import Any, Mapping, Sequence

import psycopg
from psycopg.rows import dict_row

from runbook.target import APPLICATION_PREFIX


@dataclass(frozen=True)
class SessionInfo:
    pid: int
    user: str | None
    application: str | None
    state: str | None
    seconds: float            # how long the current query (or idle state) has lasted
    xact_seconds: float | None  # None outside a transaction, and once it has aborted
    query: str                # truncated, raw (escape at the edge)
    database: str | None = None
    wait_event_type: str | None = None
    wait_event: str | None = None
    backend_start: datetime | None = None   # with pid, names one session for its whole life
    query_start: datetime | None = None     # with pid, names one query (pooled connections run many)


@dataclass(frozen=True)
class LockWait:
    pid: int
    user: str | None
    application: str | None
    seconds: float            # true wait time (pg_locks.waitstart) where known, else query age
    query: str
    blocked_by: list[int]     # pg_blocking_pids(pid), in the server's order; 0 = prepared transaction
    root_blocker: int | None  # the session at the root of the chain (not itself waiting)
    mode: str | None = None   # lock mode requested, e.g. AccessExclusiveLock
    relation: str | None = None
    locktype: str | None = None   # relation, transactionid, tuple, advisory, ...
    database: str | None = None
    backend_start: datetime | None = None


@dataclass(frozen=True)
class BlockingRoot:
    pid: int                  # 0 for a prepared transaction
    session: SessionInfo | None
    queue: list[LockWait]     # every session waiting behind this root, head of the queue first
    prepared_gid: str | None = None

    @property
    def head(self) -> LockWait | None:
        return self.queue[0] if self.queue else None


@dataclass(frozen=True)
class PreparedXact:
    gid: str
    owner: str | None
    database: str | None
    seconds: float
    prepared_at: datetime | None = None      # with gid, names one prepared transaction


@dataclass
class Activity:
    active_count: int
    long_queries: list[SessionInfo] = field(default_factory=list)
    idle_in_transaction: list[SessionInfo] = field(default_factory=list)
    lock_waits: list[LockWait] = field(default_factory=list)
    roots: list[BlockingRoot] = field(default_factory=list)
    prepared: list[PreparedXact] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)   # what could not be read, in plain words


@dataclass(frozen=True)
class Poll:
    """Counts from one read of pg_stat_activity (same exclusions as the snapshot)."""

    active_count: int
    lock_waiters: int
    long_queries: int
    idle_in_transaction: int
    oldest_xact_seconds: float | None
    oldest_lock_wait_seconds: float | None = None  # query age of the longest waiter: an upper bound
    old_prepared: int = 0     # prepared transactions older than the idle-in-transaction threshold
    long_lock_waiters: int = 0  # of long_queries, those waiting on a lock (the lock alert's business)

    @property
    def quiet(self) -> bool:
        """Nothing waits on a lock and nothing is over a threshold: no snapshot needed."""
        return not (self.lock_waiters or self.long_queries or self.idle_in_transaction or self.old_prepared)


DEFAULT_LONG_QUERY_SECONDS = 300.0
DEFAULT_IDLE_IN_TRANSACTION_SECONDS = 300.0

# Shared WHERE clause: client backends of the scope, minus the bot's own sessions. The prefix
# test is starts_with(), not LIKE, so the prefix is never read as a pattern.
_REPORTED = """
      a.backend_type = 'client backend'
  AND a.pid <> pg_backend_pid()
  AND NOT starts_with(coalesce(a.application_name, ''), %(prefix)s)
  AND (%(all_databases)s OR a.datname = current_database())
"""

# The cheap poll (postgres.md §2.2): pg_stat_activity only, no lock manager, one row. Lock
# waiters are counted from wait_event_type; their age is the query's, an upper bound of the wait.
POLL_SQL = f"""
SELECT count(*) FILTER (WHERE a.state = 'active')                                   AS active_count,
       count(*) FILTER (WHERE a.wait_event_type = 'Lock')                           AS lock_waiters,
       count(*) FILTER (WHERE a.state = 'active'
                          AND now() - a.query_start > make_interval(secs => %(long_s)s)) AS long_queries,
       count(*) FILTER (WHERE a.state = 'active' AND a.wait_event_type = 'Lock'
                          AND now() - a.query_start > make_interval(secs => %(long_s)s)) AS long_lock_waiters,
       count(*) FILTER (WHERE a.state IN ('idle in transaction', 'idle in transaction (aborted)')
                          AND now() - a.state_change > make_interval(secs => %(idle_s)s)) AS idle_in_transaction,
       extract(epoch FROM max(now() - a.xact_start))::float8                        AS oldest_xact_seconds,
       extract(epoch FROM max(now() - a.query_start)
                          FILTER (WHERE a.wait_event_type = 'Lock'))::float8        AS oldest_lock_wait_seconds,
       -- pg_prepared_xacts reads the two-phase state only (no lock manager): a forgotten
       -- PREPARE TRANSACTION holds its locks with no session behind it to show up above.
       (SELECT count(*) FROM pg_prepared_xacts p
         WHERE now() - p.prepared > make_interval(secs => %(idle_s)s)
           AND (%(all_databases)s OR p.database = current_database()))           AS old_prepared
FROM pg_stat_activity a
WHERE {_REPORTED}
"""


def _check(conn: psycopg.Connection) -> None:
    # pg_stat_activity is read once per transaction and then cached until it ends: inside a
    # long transaction every poll would see the same stale picture.
    if not conn.autocommit:
        raise ValueError("activity checks need an autocommit connection (Target.connect gives one)")


def _params(all_databases: bool, **extra: Any) -> dict[str, Any]:
    return {"prefix": APPLICATION_PREFIX, "all_databases": all_databases, **extra}


def poll(
    conn: psycopg.Connection,
    *,
    long_query_seconds: float = DEFAULT_LONG_QUERY_SECONDS,
    idle_in_transaction_seconds: float = DEFAULT_IDLE_IN_TRANSACTION_SECONDS,
    all_databases: bool = False,
) -> Poll:
    """The scheduled check (design rule 10): counts only, from pg_stat_activity alone."""
    _check(conn)
    params = _params(all_databases, long_s=float(long_query_seconds), idle_s=float(idle_in_transaction_seconds))
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(POLL_SQL, params).fetchone()
    assert row is not None
    return Poll(
        active_count=row["active_count"],
        lock_waiters=row["lock_waiters"],
        long_queries=row["long_queries"],
        idle_in_transaction=row["idle_in_transaction"],
        oldest_xact_seconds=row["oldest_xact_seconds"],
        oldest_lock_wait_seconds=row["oldest_lock_wait_seconds"],
        old_prepared=row["old_prepared"],
        long_lock_waiters=row["long_lock_waiters"],
    )


# Columns every session row carries. `seconds` is the age of what the session is doing now:
# the running query when active, the idle state otherwise (how long it has been idle in a
# transaction).
_SESSION_COLUMNS = """
       a.pid, a.usename, a.application_name, a.datname, a.state, a.backend_type,
       a.wait_event_type, a.wait_event, a.backend_start, a.query_start,
       extract(epoch FROM now() - CASE WHEN a.state = 'active' THEN a.query_start
                                       ELSE a.state_change END)::float8 AS seconds,
       extract(epoch FROM now() - a.query_start)::float8                AS query_seconds,
       extract(epoch FROM now() - a.xact_start)::float8                 AS xact_seconds,
       left(coalesce(a.query, ''), %(chars)s)                           AS query
"""

# Long-running queries and idle-in-transaction sessions (§1.1, postgres.md §2.2 "precheck"):
# one pass over pg_stat_activity, oldest first. "(aborted)" counts as idle in transaction.
SESSIONS_SQL = f"""
SELECT {_SESSION_COLUMNS}
FROM pg_stat_activity a
WHERE {_REPORTED}
  AND ((a.state = 'active' AND now() - a.query_start > make_interval(secs => %(long_s)s))
    OR (a.state IN ('idle in transaction', 'idle in transaction (aborted)')
        AND now() - a.state_change > make_interval(secs => %(idle_s)s)))
ORDER BY seconds DESC, a.pid
"""

# The blocking graph (postgres.md §2.2), run only when the poll saw lock waiters:
# pg_blocking_pids() costs a trip through the lock manager per call, so it is called once per
# session that waits on a lock and never in a join condition. The rows are the waiters plus
# the sessions named as their blockers; roots and queues are resolved in Python. With
# %(pids)s set, it expands just those sessions (blockers outside the scope that wait in turn).
GRAPH_SQL = f"""
WITH w AS MATERIALIZED (
  SELECT a.pid, pg_blocking_pids(a.pid) AS blocked_by
  FROM pg_stat_activity a
  WHERE a.wait_event_type = 'Lock' AND a.pid <> pg_backend_pid()
    AND CASE WHEN %(pids)s::int[] IS NULL THEN (%(all_databases)s OR a.datname = current_database())
             ELSE a.pid = ANY(%(pids)s::int[]) END
)
SELECT {_SESSION_COLUMNS}, w.blocked_by, (w.pid IS NOT NULL) AS is_waiting,
       (a.datname = current_database()) AS here
FROM pg_stat_activity a
LEFT JOIN w USING (pid)
WHERE w.pid IS NOT NULL
   OR a.pid IN (SELECT unnest(w.blocked_by) FROM w)
"""

# Enrichment, read only when there are lock waiters (pg_locks copies the whole lock table
# under the lock manager's partition locks): the waiters' requested lock (mode, object, exact
# wait start, PG 14+), the tuple locks the waiters hold (a row-lock waiter waits on the other
# transaction's id, which names no table; the tuple lock it took first does) and the locks held
# by prepared transactions (pid IS NULL), which is how blocker "0" is tied to a gid. Relation
# names resolve in the connected database only.
LOCKS_SQL = """
SELECT l.pid, l.granted, l.locktype, l.database, l.relation, l.page, l.tuple, l.virtualxid,
       l.transactionid::text AS transactionid, l.classid, l.objid, l.objsubid,
       l.virtualtransaction, l.mode,
       CASE WHEN l.relation IS NOT NULL
             AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
            THEN l.relation::regclass::text END AS relation_name,
       {wait_seconds} AS wait_seconds
FROM pg_locks l
WHERE (l.pid = ANY(%(pids)s::int[]) AND (NOT l.granted OR l.locktype = 'tuple'))
   OR (l.granted AND l.pid IS NULL)
"""
_WAITSTART = "extract(epoch FROM now() - l.waitstart)::float8"   # the column exists from PG 14

# Prepared transactions hold their locks with no session behind them (pid 0 to
# pg_blocking_pids). Read from the whole cluster so that a blocker can always be named;
# the report keeps the ones in scope.
PREPARED_SQL = """
SELECT p.gid, p.owner, p.database, p.transaction::text AS xid, p.prepared,
       extract(epoch FROM now() - p.prepared)::float8 AS seconds,
       (p.database = current_database()) AS here
FROM pg_prepared_xacts p
ORDER BY p.prepared
"""

# How many times blockers outside the first read are expanded before the graph is taken as is.
_MAX_EXPANSIONS = 5


def snapshot(
    conn: psycopg.Connection,
    *,
    long_query_seconds: float,
    idle_in_transaction_seconds: float,
    query_chars: int = 300,
    all_databases: bool = False,
    counts: Poll | None = None,
) -> Activity:
    """Long queries, idle-in-transaction sessions, lock waits with their roots, prepared xacts.

    `counts`: a poll just taken with the same thresholds (the watch has one), so it is not
    read twice; the blocking tree is built only when it counted lock waiters.
    """
    _check(conn)
    if counts is None:
        counts = poll(
            conn,
            long_query_seconds=long_query_seconds,
            idle_in_transaction_seconds=idle_in_transaction_seconds,
            all_databases=all_databases,
        )
    params = _params(
        all_databases,
        long_s=float(long_query_seconds),
        idle_s=float(idle_in_transaction_seconds),
        chars=max(0, int(query_chars)),
    )
    activity = Activity(active_count=counts.active_count)
    with conn.cursor(row_factory=dict_row) as cur:
        for row in cur.execute(SESSIONS_SQL, params).fetchall():
            target = activity.long_queries if row["state"] == "active" else activity.idle_in_transaction
            target.append(_session(row))
        prepared_rows = cur.execute(PREPARED_SQL).fetchall()
    activity.prepared = [
        PreparedXact(gid=r["gid"], owner=r["owner"], database=r["database"], seconds=r["seconds"] or 0.0,
                     prepared_at=r["prepared"])
        for r in prepared_rows
        if all_databases or r["here"]
    ]
    if counts.lock_waiters:
        _blocking_tree(conn, params, activity, prepared_rows)
    return activity


def _session(row: Mapping[str, Any]) -> SessionInfo:
    return SessionInfo(
        pid=row["pid"],
        user=row["usename"],
        application=row["application_name"],
        state=row["state"],
        seconds=row["seconds"] or 0.0,
        xact_seconds=row["xact_seconds"],
        query=row["query"] or "",
        database=row["datname"],
        wait_event_type=row["wait_event_type"],
        wait_event=row["wait_event"],
        backend_start=row["backend_start"],
        query_start=row.get("query_start"),
    )


def _reported(row: Mapping[str, Any], all_databases: bool) -> bool:
    """Whether a waiting session belongs in the report (the same rules as _REPORTED)."""
    return (
        row["backend_type"] == "client backend"
        and not (row["application_name"] or "").startswith(APPLICATION_PREFIX)
        and (all_databases or bool(row["here"]))
    )


def _blocking_tree(
    conn: psycopg.Connection,
    params: dict[str, Any],
    activity: Activity,
    prepared_rows: list[dict[str, Any]],
) -> None:
    rows: dict[int, dict[str, Any]] = {}
    graph: dict[int, list[int]] = {}
    with conn.cursor(row_factory=dict_row) as cur:
        pids: list[int] | None = None
        expanded: set[int] = set()
        for _ in range(_MAX_EXPANSIONS):
            for row in cur.execute(GRAPH_SQL, {**params, "pids": pids}).fetchall():
                rows.setdefault(row["pid"], row)
                if row["is_waiting"]:
                    rows[row["pid"]] = row
                    graph[row["pid"]] = list(dict.fromkeys(row["blocked_by"] or []))  # parallel workers repeat
            # A blocker outside the scope that itself waits on a lock: expand it too, once.
            pids = [p for p, r in rows.items()
                    if p not in graph and p not in expanded and r["wait_event_type"] == "Lock"]
            if not pids:
                break
            expanded.update(pids)
        if not graph:
            return
        locks, held = _read_locks(conn, cur, list(graph), activity)

    all_databases = params["all_databases"]
    waits: dict[int, LockWait] = {}
    for pid, blocked_by in graph.items():
        row = rows[pid]
        if not _reported(row, all_databases):
            continue
        lock = locks.get(pid) or {}
        seconds = lock.get("wait_seconds")
        if seconds is None:                       # waitstart is NULL for a moment, or PG < 14
            seconds = row["query_seconds"] or 0.0
        waits[pid] = LockWait(
            pid=pid,
            user=row["usename"],
            application=row["application_name"],
            seconds=seconds,
            query=row["query"] or "",
            blocked_by=blocked_by,
            root_blocker=None,
            mode=lock.get("mode"),
            relation=lock.get("relation_name") or (str(lock["relation"]) if lock.get("relation") else None),
            locktype=lock.get("locktype") or row["wait_event"],
            database=row["datname"],
            backend_start=row["backend_start"],
        )

    gids = _prepared_blockers(graph, locks, held, prepared_rows)
    fallback_gid = prepared_rows[0]["gid"] if len(prepared_rows) == 1 else None
    activity.lock_waits, activity.roots = _group_by_root(graph, waits, rows, gids, fallback_gid)


def _group_by_root(
    graph: Mapping[int, Sequence[int]],
    waits: Mapping[int, LockWait],
    rows: Mapping[int, Mapping[str, Any]],
    gids: Mapping[int, list[str]],
    fallback_gid: str | None,
) -> tuple[list[LockWait], list[BlockingRoot]]:
    """Each reported wait gets its nearest root; each root its queue, head first.

    Roots are keyed (pid, gid): prepared transactions all appear as pid 0 and are told apart
    by gid, from the waiters they block directly. Roots with the longest queue come first.
    """
    behind = _behind(graph)
    queues: dict[tuple[int, str | None], dict[int, int]] = {}
    for root in _roots(graph):
        direct = behind.get(root, [])
        if root != 0:
            queues[(root, None)] = _depths(behind, direct, root)
            continue
        starts: dict[str | None, list[int]] = {}
        for waiter in direct:
            for gid in gids.get(waiter) or [fallback_gid]:
                starts.setdefault(gid, []).append(waiter)
        for gid, waiters in starts.items():
            queues[(0, gid)] = _depths(behind, waiters, 0)

    nearest: dict[int, tuple[int, int]] = {}
    for (root, _), depth in queues.items():
        for pid, d in depth.items():
            if pid in waits and (d, root) < nearest.get(pid, (d + 1, root)):
                nearest[pid] = (d, root)
    done = {pid: replace(w, root_blocker=nearest[pid][1] if pid in nearest else None) for pid, w in waits.items()}

    roots: list[BlockingRoot] = []
    for (root, gid), depth in queues.items():
        members = sorted((p for p in depth if p in done), key=lambda p: (depth[p], -done[p].seconds, p))
        if not members:
            continue
        session = _session(rows[root]) if root and root in rows else None
        roots.append(BlockingRoot(pid=root, session=session, queue=[done[p] for p in members], prepared_gid=gid))
    roots.sort(key=lambda r: (-len(r.queue), -(r.head.seconds if r.head else 0.0), r.pid, r.prepared_gid or ""))
    return sorted(done.values(), key=lambda w: (-w.seconds, w.pid)), roots


def _read_locks(
    conn: psycopg.Connection, cur: psycopg.Cursor, pids: list[int], activity: Activity
) -> tuple[dict[int, dict[str, Any]], list[dict[str, Any]]]:
    """The waiters' requested locks by pid, and the locks prepared transactions hold."""
    wait_seconds = _WAITSTART if conn.info.server_version >= 140000 else "NULL::float8"
    try:
        lock_rows = cur.execute(LOCKS_SQL.format(wait_seconds=wait_seconds), {"pids": pids}).fetchall()
    except psycopg.errors.QueryCanceled:
        # The lock table is huge or the server is struggling: the tree stands without the details.
        activity.notes.append("lock details (mode, relation, wait start) unavailable: pg_locks timed out")
        return {}, []
    waiting: dict[int, dict[str, Any]] = {}
    held: list[dict[str, Any]] = []
    rows_held: dict[int, dict[str, Any]] = {}
    for row in lock_rows:
        if not row["granted"]:
            waiting.setdefault(row["pid"], row)   # a backend waits for one lock at a time
        elif row["pid"] is None:
            held.append(row)
        else:
            rows_held.setdefault(row["pid"], row)
    for pid, wanted in waiting.items():
        tuple_lock = rows_held.get(pid)
        if wanted["relation"] is None and tuple_lock is not None:
            # the row's table, for the report only: "relation" stays as the lock manager has it
            waiting[pid] = {**wanted, "relation_name": tuple_lock["relation_name"] or str(tuple_lock["relation"])}
    return waiting, held


# Which lock modes conflict with which (the table in the PostgreSQL docs, "Explicit Locking").
_CONFLICTS: dict[str, frozenset[str]] = {
    "AccessShareLock": frozenset({"AccessExclusiveLock"}),
    "RowShareLock": frozenset({"ExclusiveLock", "AccessExclusiveLock"}),
    "RowExclusiveLock": frozenset({"ShareLock", "ShareRowExclusiveLock", "ExclusiveLock", "AccessExclusiveLock"}),
    "ShareUpdateExclusiveLock": frozenset({
        "ShareUpdateExclusiveLock", "ShareLock", "ShareRowExclusiveLock", "ExclusiveLock", "AccessExclusiveLock"}),
    "ShareLock": frozenset({
        "RowExclusiveLock", "ShareUpdateExclusiveLock", "ShareRowExclusiveLock", "ExclusiveLock",
        "AccessExclusiveLock"}),
    "ShareRowExclusiveLock": frozenset({
        "RowExclusiveLock", "ShareUpdateExclusiveLock", "ShareLock", "ShareRowExclusiveLock", "ExclusiveLock",
        "AccessExclusiveLock"}),
    "ExclusiveLock": frozenset({
        "RowShareLock", "RowExclusiveLock", "ShareUpdateExclusiveLock", "ShareLock", "ShareRowExclusiveLock",
        "ExclusiveLock", "AccessExclusiveLock"}),
    "AccessExclusiveLock": frozenset({
        "AccessShareLock", "RowShareLock", "RowExclusiveLock", "ShareUpdateExclusiveLock", "ShareLock",
        "ShareRowExclusiveLock", "ExclusiveLock", "AccessExclusiveLock"}),
}
_LOCK_TARGET = ("locktype", "database", "relation", "page", "tuple", "virtualxid", "transactionid",
                "classid", "objid", "objsubid")


def _prepared_blockers(
    graph: Mapping[int, Sequence[int]],
    locks: Mapping[int, Mapping[str, Any]],
    held: list[dict[str, Any]],
    prepared_rows: list[dict[str, Any]],
) -> dict[int, list[str]]:
    """For each waiter blocked by pid 0, the gids of the prepared transactions in its way.

    A prepared transaction's locks have no pid; they are tied to it through its virtual
    transaction, which also holds the ExclusiveLock on the transaction's own xid.
    """
    if not held:
        return {}
    gid_by_xid = {r["xid"]: r["gid"] for r in prepared_rows}
    xid_by_vxact = {
        r["virtualtransaction"]: r["transactionid"]
        for r in held
        if r["locktype"] == "transactionid" and r["mode"] == "ExclusiveLock"
    }
    result: dict[int, list[str]] = {}
    for pid, blocked_by in graph.items():
        wanted = locks.get(pid)
        if 0 not in blocked_by or not wanted:
            continue
        target = tuple(wanted[k] for k in _LOCK_TARGET)
        conflicting = _CONFLICTS.get(wanted["mode"], frozenset())
        gids: list[str] = []
        for h in held:
            if tuple(h[k] for k in _LOCK_TARGET) != target or h["mode"] not in conflicting:
                continue
            gid = gid_by_xid.get(xid_by_vxact.get(h["virtualtransaction"], ""))
            if gid and gid not in gids:
                gids.append(gid)
        if gids:
            result[pid] = gids
    return result


# The graph is {waiter pid: blocked_by}, one entry per session waiting on a lock. Roots are
# found from the bottom up (every waiter a root reaches, by breadth-first search over the
# reversed edges) rather than by walking up from every waiter: deep row-lock queues have
# O(n^2) edges (soft blocks), and a walk per waiter would make that O(n^3). A visited set
# keeps cycles (a deadlock before the detector breaks it) from looping; waiters caught in a
# cycle with no way out to a root simply have no root.

def _behind(graph: Mapping[int, Sequence[int]]) -> dict[int, list[int]]:
    """{blocker: the waiters it blocks}, in the order the waiters appear."""
    behind: dict[int, list[int]] = {}
    for waiter, blockers in graph.items():
        for b in blockers:
            behind.setdefault(b, []).append(waiter)
    return behind


def _roots(graph: Mapping[int, Sequence[int]]) -> list[int]:
    """Blockers that do not wait on a lock themselves (or whose wait just ended), and 0."""
    found: dict[int, None] = {}
    for blockers in graph.values():
        for b in blockers:
            if b == 0 or not graph.get(b):
                found[b] = None
    return list(found)


def _depths(behind: Mapping[int, Sequence[int]], starts: Sequence[int], root: int) -> dict[int, int]:
    depth: dict[int, int] = {}
    todo: deque[int] = deque()
    for pid in starts:
        if pid != root and pid not in depth:
            depth[pid] = 1
            todo.append(pid)
    while todo:
        node = todo.popleft()
        for waiter in behind.get(node, ()):
            if waiter != root and waiter not in depth:
                depth[waiter] = depth[node] + 1
                todo.append(waiter)
    return depth


def queue_depths(graph: Mapping[int, Sequence[int]], root: int) -> dict[int, int]:
    """Every session waiting behind `root`, with how far it stands from it: 1 = blocked by the
    root itself (the head of the queue, e.g. the ALTER TABLE), 2 = queued behind one of those
    (the readers behind the ALTER), and so on."""
    behind = _behind(graph)
    return _depths(behind, behind.get(root, []), root)


def find_roots(graph: Mapping[int, Sequence[int]], pid: int) -> list[int]:
    """The root blockers behind `pid` in a {waiter: blocked_by} graph, nearest first.

    A root is a blocker that does not itself wait on a lock, or 0 for a prepared transaction.
    Empty when `pid` waits on nobody, or only on a cycle with no way out.
    """
    behind = _behind(graph)
    reach = [(d[pid], root) for root in _roots(graph) if pid in (d := _depths(behind, behind.get(root, []), root))]
    return [root for _, root in sorted(reach)]


def activity_to_json(activity: Activity) -> dict[str, Any]:
    """The `activity --json` contract: the dataclasses as plain JSON (times as ISO 8601)."""
    def plain(node: Any) -> Any:
        if isinstance(node, datetime):
            return node.isoformat()
        if isinstance(node, float):
            return round(node, 3)
        if isinstance(node, dict):
            return {k: plain(v) for k, v in node.items()}
        if isinstance(node, (list, tuple)):
            return [plain(v) for v in node]
        return node

    return plain(asdict(activity))


__all__ = [
    "Activity", "BlockingRoot", "LockWait", "Poll", "PreparedXact", "SessionInfo",
    "activity_to_json", "find_roots", "poll", "queue_depths", "snapshot",
]
