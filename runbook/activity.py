"""pg_stat_activity: long queries, idle in transaction, lock waiters, the blocking tree (§1.1, §4).

CONTRACT (filled in by the activity work; shapes are fixed, others build on them).
Design rule 10: poll pg_stat_activity only; pg_blocking_pids() only for sessions
waiting on a lock; pg_locks only to enrich lock waits that were already found.
The bot's own sessions (application_name starting with 'runbook-bot') are excluded.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class SessionInfo:
    pid: int
    user: str | None
    application: str | None
    state: str | None
    seconds: float            # how long the current query (or idle state) has lasted
    xact_seconds: float | None
    query: str                # truncated, raw (escape at the edge)


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


@dataclass
class Activity:
    active_count: int
    long_queries: list[SessionInfo] = field(default_factory=list)
    idle_in_transaction: list[SessionInfo] = field(default_factory=list)
    lock_waits: list[LockWait] = field(default_factory=list)
    roots: list[BlockingRoot] = field(default_factory=list)
    prepared: list[PreparedXact] = field(default_factory=list)
