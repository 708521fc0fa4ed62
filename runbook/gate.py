"""The no-go gate every run passes immediately before its first Alembic statement.

An approval is given minutes, sometimes hours, before the run; the backup before it can take as long.
What made the precheck a go may no longer hold, and what the precheck never saw (a session that went
idle in a transaction on the table a minute ago) decides whether the migration's ALTER waits in the
lock queue with every reader of the table queued behind it. So the run re-checks, on its own monitor
connection, under its operation lock, after its backup and before any `rbmigrate/...` session exists:

* lock waits on the tables the run touches (or whose root blocker holds a lock on them);
* long-running queries and sessions idle in a transaction that hold a lock on those tables, and
  prepared transactions holding one (the precheck's thresholds);
* an upgrade's risk review: a HIGH rating not acknowledged (or a conflicting lock held right now);
* the promotion gate (`promote_from`).

When the tables a run touches are unknown (its SQL could not be rendered offline), every session of
the database counts: the gate is then the precheck's own no-go. A closed gate refuses the run with
its reasons; only an override (runbook.ops: approvers, with a reason, recorded as its own event)
lets it through.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import psycopg
from psycopg.rows import dict_row

from runbook import activity
from runbook.config import Environment
from runbook.revisions import AlembicProject, one_line
from runbook.target import APPLICATION_PREFIX
from runbook.units import short_duration

# The sessions holding or waiting for a lock on the run's tables. Read once, right before the run, and
# only for those relations (design rule 10 keeps pg_locks out of polling, not out of this one check).
# pid IS NULL: a prepared transaction's lock. The bot's own sessions (the operation lock's holder, this
# monitor) are not in the way.
TABLE_LOCKS_SQL = """
SELECT l.pid, l.mode, l.granted, l.relation::regclass::text AS relation, p.gid
  FROM pg_locks l
  LEFT JOIN pg_stat_activity a ON a.pid = l.pid
  LEFT JOIN pg_prepared_xacts p ON l.pid IS NULL AND p.transaction::text = split_part(l.virtualtransaction, '/', 2)
 WHERE l.locktype = 'relation'
   AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
   AND l.relation = ANY(%(oids)s::oid[])
   AND l.pid IS DISTINCT FROM pg_backend_pid()
   AND NOT starts_with(coalesce(a.application_name, ''), %(prefix)s)
"""

# How long a session must have been idle in a transaction holding a lock on the run's tables to close the gate.
IDLE_HOLDER_SECONDS = 1.0

# The relations the run touches that exist now (a table the run creates holds no lock yet).
RELATIONS_SQL = "SELECT to_regclass(t)::oid AS oid FROM unnest(%(tables)s::text[]) AS t WHERE to_regclass(t) IS NOT NULL"


@dataclass(frozen=True)
class GateCheck:
    """The gate's answer; `reasons` are one line each, for the requester and the audit log."""

    open: bool
    reasons: list[str] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)      # [] when the whole database was looked at

    def summary(self) -> str:
        scope = f"the tables it touches ({', '.join(self.tables)})" if self.tables else "the whole database"
        if self.open:
            return f"the no-go gate is open: nothing in the way on {scope}"
        return f"the no-go gate is closed on {scope}: " + "; ".join(self.reasons)


@dataclass(frozen=True)
class GateOverride:
    """Who lets a run through a closed gate, and why (checked by runbook.ops, recorded by the run)."""

    actor: str
    reason: str


def _lockers(conn: psycopg.Connection, tables: Sequence[str]) -> dict[int | None, list[dict[str, Any]]]:
    with conn.cursor(row_factory=dict_row) as cur:
        oids = [row["oid"] for row in cur.execute(RELATIONS_SQL, {"tables": list(tables)}).fetchall()]
        if not oids:
            return {}
        found: dict[int | None, list[dict[str, Any]]] = {}
        for row in cur.execute(TABLE_LOCKS_SQL, {"oids": oids, "prefix": APPLICATION_PREFIX}).fetchall():
            found.setdefault(row["pid"], []).append(row)
        return found


def _held(rows: Sequence[dict[str, Any]]) -> str:
    granted = [r for r in rows if r["granted"]]
    shown = granted or rows
    return ", ".join(sorted({f"{r['mode']} on {r['relation']}" for r in shown}))


def check(conn: psycopg.Connection, name: str, env: Environment, *, direction: str, revisions: Sequence[Any],
          touched_tables: Sequence[str], project: AlembicProject, store: Any, target: str) -> GateCheck:
    """The gate for a run of `name` in `direction` to `target` applying (or undoing) `revisions`;
    `conn` is an autocommit monitor connection to the target. Never raises for what it finds."""
    from runbook import promotion, review

    t = env.thresholds
    tables = list(touched_tables)
    # A session idle in a transaction that holds a lock on the run's tables holds it for as long as it
    # stays idle: the migration would wait behind it however young it is (past a second: not a statement
    # boundary of a busy application). Elsewhere, the precheck's threshold.
    idle_floor = min(IDLE_HOLDER_SECONDS, t.idle_in_transaction_seconds) if tables else t.idle_in_transaction_seconds
    snapshot = activity.snapshot(conn, long_query_seconds=t.long_query_seconds, idle_in_transaction_seconds=idle_floor)
    lockers = _lockers(conn, tables) if tables else None
    reasons: list[str] = []

    def concerns(pid: int | None) -> bool:
        return lockers is None or pid in lockers

    def holding(pid: int) -> str:
        return f", holding {_held(lockers[pid])}" if lockers is not None and pid in lockers else ""

    for wait in snapshot.lock_waits:
        on_ours = lockers is None or wait.relation in tables or wait.pid in lockers \
            or (wait.root_blocker is not None and wait.root_blocker in lockers)
        if on_ours:
            reasons.append(f"pid {wait.pid} has waited {short_duration(wait.seconds)} for {wait.mode or 'a lock'}"
                           + (f" on {wait.relation}" if wait.relation else "")
                           + (f", behind pid {wait.root_blocker}" if wait.root_blocker is not None else ""))
    for session in snapshot.long_queries:
        if concerns(session.pid):
            reasons.append(f"pid {session.pid} ({session.application or session.user or 'unknown'}) has run a "
                           f"query for {short_duration(session.seconds)}{holding(session.pid)}")
    for session in snapshot.idle_in_transaction:
        if concerns(session.pid) and (lockers is not None or session.seconds > t.idle_in_transaction_seconds):
            reasons.append(f"pid {session.pid} ({session.application or session.user or 'unknown'}) is idle in a "
                           f"transaction for {short_duration(session.seconds)}{holding(session.pid)}: "
                           "the migration would queue behind it, and every reader behind the migration")
    if lockers is not None and None in lockers:
        gids = sorted({str(r["gid"]) for r in lockers[None] if r["gid"] is not None}) or ["(unnamed)"]
        reasons.append(f"prepared transaction(s) {', '.join(gids)} hold {_held(lockers[None])} until committed "
                       "or rolled back")
    elif lockers is None:
        for prepared in snapshot.prepared:
            if prepared.seconds > t.idle_in_transaction_seconds:
                reasons.append(f"prepared transaction '{prepared.gid}' has held its locks for "
                               f"{short_duration(prepared.seconds)}")

    if direction == "upgrade" and revisions and env.review.enabled:
        try:
            risk = review.review(name, env, conn, project=project, revisions=list(revisions),
                                 acknowledgements=lambda: review.acknowledgements(store, name) if store is not None
                                 else [])
        except review.ReviewError as exc:
            reasons.append(f"the risk review could not run: {one_line(str(exc), 200)}")
        else:
            for item in risk.blocking:
                how = "" if item.live_high else f" (once reviewed: `{review.ack_hint(name, item.revision)}`)"
                reasons.append(f"{item.revision} is rated HIGH and not acknowledged: {item.reason}{how}")
    if direction == "upgrade" and revisions and env.promote_from:
        promoted = promotion.check(store, name, env, target, project)
        if not promoted.allowed:
            reasons.append(promoted.reason)
    return GateCheck(open=not reasons, reasons=reasons, tables=tables)


__all__ = ["GateCheck", "GateOverride", "check"]
