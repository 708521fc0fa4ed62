"""The scheduled watch (runbook §4 on a schedule, §7.2): observe, evaluate, keep alert state.

Three steps, none of them Slack-specific (bot/watch.py posts what comes out):

* `observe(name, env)` -> `Observation`: the cheap poll (pg_stat_activity only) on a monitor
  connection with its own statement_timeout and lock_timeout, and the snapshot (the blocking
  tree, pg_locks for the exact wait start) only when the poll saw something over a threshold.
  A target that cannot be read is an observation too, not an exception.
* `evaluate(name, env, observation)` -> `[Condition]`: what is wrong now, each with a stable
  key (environment, kind, subject, since), so the same incident is recognised poll after poll.
* `AlertBook(store, ...)`: conditions -> alert state in the state database. One alert per key,
  opened once, kept up to date, resolved after `resolve_after_seconds` without it, re-opened
  (same alert, same message) when it comes back within `reopen_within_seconds`. Also the
  per-slot claims that make one scheduler run a slot, the pause switch and the last poll.

Time on the alert side comes from the caller (`now`), so tests drive it with their own clock.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable

from sqlalchemy import String, cast, delete, func, or_, select, true, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from runbook.activity import Activity, BlockingRoot, Poll, SessionInfo, poll, snapshot
from runbook.config import ALERT_KINDS, Environment
from runbook.state.models import AlertRow, JobClaimRow, WatchStateRow, utcnow
from runbook.state.store import Store
from runbook.target import Target, TargetError

MONITOR_PURPOSE = "watch"
QUERY_CHARS = 300          # query text kept per session (Slack shows less; escaping is the edge's job)
QUEUE_KEPT = 20            # waiters kept per lock alert (the count is always complete)
CLAIMS_KEPT = timedelta(days=1)


def aware(value: datetime | None) -> datetime | None:
    """SQLite hands timestamps back without a zone; everything here is UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=timezone.utc)


def _episode_start(row: AlertRow) -> datetime:
    return aware(row.episode_opened_at) or aware(row.opened_at)


def _iso(value: datetime | None) -> str:
    return value.astimezone(timezone.utc).isoformat() if value is not None else ""


# -- observe ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Observation:
    environment: str
    target: str                     # host:port/dbname, never credentials
    at: datetime
    seconds: float                  # how long reading the target took (poll, and snapshot if any)
    poll: Poll | None = None
    activity: Activity | None = None
    error: str | None = None        # one redacted line when the target could not be read

    @property
    def ok(self) -> bool:
        return self.error is None


def lock_wait_possible(counts: Poll, env: Environment) -> bool:
    """The poll's lock-wait age is the waiting query's age, an upper bound of the wait: below the
    threshold no waiter can be over it, and the lock manager is left alone (design rule 10)."""
    return bool(counts.lock_waiters and (counts.oldest_lock_wait_seconds or 0.0) >= env.thresholds.lock_wait_seconds)


def needs_snapshot(counts: Poll, env: Environment) -> bool:
    """Whether the poll saw anything that could be over a threshold."""
    return bool(lock_wait_possible(counts, env) or counts.long_queries > counts.long_lock_waiters
                or counts.idle_in_transaction or counts.old_prepared)


def observe(name: str, env: Environment, *, clock=utcnow) -> Observation:
    """One look at the target through a monitor connection that cannot become a blocker."""
    target = Target(env.dsn, connect_timeout=env.connect_timeout_seconds)
    thresholds = env.thresholds
    started_at, started = clock(), time.perf_counter()
    try:
        with target.connect(MONITOR_PURPOSE, statement_timeout=env.watch.statement_timeout,
                            lock_timeout=env.watch.lock_timeout,
                            deadline_seconds=env.watch.poll_deadline) as conn:
            counts = poll(conn, long_query_seconds=thresholds.long_query_seconds,
                          idle_in_transaction_seconds=thresholds.idle_in_transaction_seconds)
            activity = None
            if needs_snapshot(counts, env):
                # a long query alone does not earn the blocking tree: pg_blocking_pids and pg_locks
                # are read only when a waiter may be over lock_wait_seconds
                tree_counts = counts if lock_wait_possible(counts, env) else replace(counts, lock_waiters=0)
                activity = snapshot(conn, long_query_seconds=thresholds.long_query_seconds,
                                    idle_in_transaction_seconds=thresholds.idle_in_transaction_seconds,
                                    query_chars=QUERY_CHARS, counts=tree_counts)
    except TargetError as exc:
        return Observation(name, target.label, started_at, time.perf_counter() - started, error=str(exc))
    return Observation(name, target.label, started_at, time.perf_counter() - started, counts, activity)


# -- evaluate -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Condition:
    """Something wrong right now. `details` is plain JSON: it is stored and rendered later."""

    environment: str
    kind: str                 # one of runbook.config.ALERT_KINDS
    subject: str              # the pid, the root blocker's pid, a prepared gid, or the target
    since: str                # backend_start (or prepare time), ISO 8601; "" when unknown
    seconds: float            # how long it has lasted so far, as far as the server tells
    details: dict[str, Any] = field(default_factory=dict)
    # The session is the root blocker of a lock alert, which names it: it opens no alert of its own
    # (one incident, one message); an alert it already had carries on until it clears.
    absorbed: bool = False

    @property
    def key(self) -> str:
        return "|".join((self.environment, self.kind, self.subject, self.since))


def _session_details(s: SessionInfo) -> dict[str, Any]:
    return {"pid": s.pid, "user": s.user, "application": s.application, "state": s.state,
            "seconds": round(s.seconds, 1), "xact_seconds": None if s.xact_seconds is None else round(s.xact_seconds, 1),
            "query": s.query[:QUERY_CHARS], "database": s.database,
            "wait_event_type": s.wait_event_type, "wait_event": s.wait_event}


def _member(pid: int, backend_start: datetime | None) -> str:
    """One session for its whole life (a pid alone is reused)."""
    return f"{pid}@{_iso(backend_start)}"


def _lock_condition(name: str, root: BlockingRoot, over: float) -> Condition | None:
    queue = root.queue
    if not queue or max(w.seconds for w in queue) < over:
        return None
    head = queue[0]
    waiters = [{"pid": w.pid, "user": w.user, "application": w.application, "seconds": round(w.seconds, 1),
                "mode": w.mode, "relation": w.relation, "locktype": w.locktype, "query": w.query[:QUERY_CHARS],
                "blocked_by": list(w.blocked_by)} for w in queue[:QUEUE_KEPT]]
    if root.pid == 0 or root.session is None:
        subject = f"prepared:{root.prepared_gid}" if root.pid == 0 else str(root.pid)
        since = ""
        blocker = {"pid": root.pid, "prepared_gid": root.prepared_gid}
    else:
        subject, since = str(root.pid), _iso(root.session.backend_start)
        blocker = _session_details(root.session)
    return Condition(name, "lock_wait", subject, since, max(w.seconds for w in queue), {
        "root": blocker, "queue_length": len(queue), "head": waiters[0], "queue": waiters,
        "longest_wait_seconds": round(max(w.seconds for w in queue), 1),
        "relation": head.relation, "mode": head.mode,
        # every waiter, to recognise the same queue when its root hands over (AlertBook.apply)
        "waiters": [_member(w.pid, w.backend_start) for w in queue],
    })


def evaluate(name: str, env: Environment, observation: Observation) -> list[Condition]:
    """The alert conditions of one observation, against the environment's thresholds."""
    if not observation.ok:
        return [Condition(name, "unreachable", observation.target, "", 0.0,
                          {"target": observation.target, "error": observation.error})]
    activity = observation.activity
    if activity is None:
        return []
    thresholds = env.thresholds
    found: list[Condition] = []
    roots: set[str] = set()
    for root in activity.roots:
        condition = _lock_condition(name, root, thresholds.lock_wait_seconds)
        if condition is not None:
            found.append(condition)
            if root.session is not None:
                roots.add(_member(root.pid, root.session.backend_start))
    for s in activity.long_queries:
        if s.wait_event_type == "Lock":
            continue          # a waiter is the lock alert's business, named in its queue
        # keyed by the query's start too: two queries back to back on one pooled connection are two alerts
        found.append(Condition(name, "long_query", str(s.pid), _iso(s.query_start or s.backend_start), s.seconds,
                               _session_details(s), absorbed=_member(s.pid, s.backend_start) in roots))
    for s in activity.idle_in_transaction:
        found.append(Condition(name, "idle_in_transaction", str(s.pid), _iso(s.backend_start), s.seconds,
                               _session_details(s), absorbed=_member(s.pid, s.backend_start) in roots))
    for p in activity.prepared:
        if p.seconds >= thresholds.idle_in_transaction_seconds:
            found.append(Condition(name, "prepared_transaction", p.gid, _iso(p.prepared_at), p.seconds,
                                   {"gid": p.gid, "owner": p.owner, "database": p.database,
                                    "seconds": round(p.seconds, 1)}))
    return found


def kinds_seen(observation: Observation) -> frozenset[str]:
    """Which kinds an observation can vouch for: an unreadable target says nothing of its sessions."""
    return frozenset(ALERT_KINDS) if observation.ok else frozenset({"unreachable"})


# -- alert state ----------------------------------------------------------------------------------

OPENED, ONGOING, REOPENED, CLEARING, RESOLVED = "opened", "ongoing", "reopened", "clearing", "resolved"


def view_of(state: str, reopened: int) -> str:
    """What an alert's message must show of it, as kept in alerts.rendered: its state in its episode
    ("open:0", "resolved:0", "open:1" once it came back...). Figures that move within an open episode
    are not part of it: every poll edits an open alert's message when they change (bot/watch.py)."""
    return f"{state}:{reopened}"


# view_of in SQL (|| on both dialects)
_VIEW = AlertRow.state + ":" + cast(AlertRow.reopened, String)
_BEHIND = or_(AlertRow.rendered.is_(None), AlertRow.rendered != _VIEW)


@dataclass(frozen=True)
class Alert:
    id: int
    key: str
    environment: str
    kind: str
    subject: str
    since: str
    state: str                      # open | resolved
    opened_at: datetime
    last_seen_at: datetime
    cleared_at: datetime | None
    resolved_at: datetime | None
    escalated_at: datetime | None
    reopened: int
    peak_seconds: float
    details: dict[str, Any]
    channel: str | None
    ts: str | None
    episode_opened_at: datetime | None = None   # when the current open episode began
    open_seconds: float = 0.0                   # how long the earlier episodes were open
    rendered: str | None = None                 # what its message last showed of it (view_of), None: nothing yet
    change: str = ONGOING           # what this apply() did to it

    @classmethod
    def of(cls, row: AlertRow, change: str = ONGOING) -> "Alert":
        return cls(row.id, row.key, row.environment, row.kind, row.subject, row.since, row.state,
                   aware(row.opened_at), aware(row.last_seen_at), aware(row.cleared_at), aware(row.resolved_at),
                   aware(row.escalated_at), row.reopened, row.peak_seconds, dict(row.details or {}),
                   row.channel, row.ts, aware(row.episode_opened_at) or aware(row.opened_at), row.open_seconds or 0.0,
                   row.rendered, change=change)

    @property
    def is_open(self) -> bool:
        return self.state == "open"

    @property
    def view(self) -> str:
        return view_of(self.state, self.reopened)

    def open_for(self, now: datetime) -> float:
        """Seconds this incident has actually been open: resolved gaps between episodes do not count;
        a gap shorter than resolve_after_seconds is no gap (the alert never resolved)."""
        current = (now - (self.episode_opened_at or self.opened_at)).total_seconds() if self.is_open else 0.0
        return self.open_seconds + max(0.0, current)


@dataclass(frozen=True)
class WatchState:
    environment: str
    paused: bool = False
    changed_by: str | None = None
    changed_at: datetime | None = None
    last_poll_at: datetime | None = None
    last_poll_ok: bool | None = None
    last_poll_seconds: float | None = None
    last_error: str | None = None


class AlertBook:
    """Alert state, claims and the pause switch in the state database (design rule 3).

    Every change is a conditional UPDATE or an INSERT that loses cleanly on conflict, so two
    schedulers that both got this far still change each row once.
    """

    def __init__(self, store: Store, *, resolve_after_seconds: float = 60.0, reopen_within_seconds: float = 900.0):
        self.store = store
        self.resolve_after = timedelta(seconds=resolve_after_seconds)
        self.reopen_within = timedelta(seconds=reopen_within_seconds)

    @classmethod
    def for_environment(cls, store: Store, env: Environment) -> "AlertBook":
        return cls(store, resolve_after_seconds=env.watch.resolve_after_seconds,
                   reopen_within_seconds=env.watch.reopen_within_seconds)

    def _insert(self):
        return pg_insert if self.store.engine.dialect.name == "postgresql" else sqlite_insert

    # conditions -> alerts

    def apply(self, environment: str, conditions: Iterable[Condition], now: datetime,
              *, seen: Iterable[str] = ALERT_KINDS) -> list[Alert]:
        """Fold one observation's conditions into the alerts of `environment`.

        `seen`: the kinds the observation could see; open alerts of other kinds stay as they are
        (an unreachable target neither confirms nor clears a lock queue).
        Returns every alert this touched, each with its `change`.
        """
        conditions = {c.key: c for c in conditions}
        seen = set(seen)
        changed: list[Alert] = []
        with self.store.session() as session, session.begin():
            existing = {}
            if conditions:
                existing = {r.key: r for r in session.scalars(select(AlertRow).where(AlertRow.key.in_(list(conditions))))}
            handed_over: set[int] = set()
            for key, c in conditions.items():
                row = existing.get(key)
                if row is None and c.kind == "lock_wait":
                    row = self._same_queue(session, environment, c, set(conditions), handed_over)
                if row is None:
                    if c.absorbed:
                        continue    # named by the lock alert it is the root of
                    row = AlertRow(key=key, environment=environment, kind=c.kind, subject=c.subject[:250],
                                   since=c.since, state="open", opened_at=now, last_seen_at=now,
                                   peak_seconds=c.seconds, details=c.details, reopened=0,
                                   episode_opened_at=now, open_seconds=0.0)
                    session.add(row)
                    session.flush()
                    changed.append(Alert.of(row, OPENED))
                    continue
                if c.absorbed and row.state != "open":
                    continue
                change = ONGOING
                if row.state != "open":
                    if row.resolved_at is not None and now - aware(row.resolved_at) <= self.reopen_within:
                        # the same incident again: a new episode, whose figures the message shows
                        change, row.reopened = REOPENED, row.reopened + 1
                        row.episode_opened_at, row.peak_seconds = now, 0.0
                    else:   # the same key long after: a new incident, a new message
                        change = OPENED
                        row.opened_at, row.escalated_at, row.reopened = now, None, 0
                        row.channel, row.ts, row.rendered, row.peak_seconds = None, None, None, 0.0
                        row.episode_opened_at, row.open_seconds = now, 0.0
                    row.state, row.resolved_at = "open", None
                earlier = (row.details or {}).get("earlier_roots") if change != OPENED else None
                row.cleared_at, row.last_seen_at = None, now
                row.details = {"earlier_roots": earlier, **c.details} if earlier else c.details   # kept once handed over
                row.peak_seconds = max(row.peak_seconds, c.seconds, (now - _episode_start(row)).total_seconds()
                                       if c.kind == "unreachable" else 0.0)
                changed.append(Alert.of(row, change))
            gone = session.scalars(select(AlertRow).where(
                AlertRow.environment == environment, AlertRow.state == "open",
                AlertRow.key.not_in(list(conditions)) if conditions else true()))
            for row in gone:
                if row.kind not in seen:
                    continue
                if row.cleared_at is None:
                    row.cleared_at = now
                if now - aware(row.cleared_at) >= self.resolve_after:
                    row.state, row.resolved_at = "resolved", now
                    # the episode ended when it was first missed, not when the grace ran out
                    episode = max(0.0, (aware(row.cleared_at) - _episode_start(row)).total_seconds())
                    row.open_seconds = (row.open_seconds or 0.0) + episode
                    if row.kind == "unreachable":
                        row.peak_seconds = episode
                    changed.append(Alert.of(row, RESOLVED))
                else:
                    changed.append(Alert.of(row, CLEARING))
        return changed

    def _same_queue(self, session, environment: str, c: Condition, keys: set[str],
                    taken: set[int]) -> AlertRow | None:
        """An open lock alert whose root is gone while sessions of its queue still wait, now behind
        `c`'s root: the root handed over (the holder committed, the migration it held up took the
        lock and keeps it) and the readers' outage goes on. It is the same incident: the alert
        carries on under the new root's key."""
        waiting = set(c.details.get("waiters") or ())
        if not waiting:
            return None
        rows = session.scalars(select(AlertRow).where(
            AlertRow.environment == environment, AlertRow.kind == "lock_wait", AlertRow.state == "open")
            .order_by(AlertRow.id))
        for row in rows:
            if row.id in taken or row.key in keys:
                continue          # its own root still blocks someone: a queue of its own
            if waiting & set((row.details or {}).get("waiters") or ()):
                taken.add(row.id)
                earlier = [*((row.details or {}).get("earlier_roots") or []), row.subject][-5:]
                c.details["earlier_roots"] = earlier
                row.key, row.subject, row.since = c.key, c.subject[:250], c.since
                return row
        return None

    def group_message(self, environment: str, kind: str) -> tuple[str, str] | None:
        """(channel, ts) of the message that holds the open alerts of `kind` in `environment`, if
        any: a new alert of that kind joins it instead of posting one more (one incident, one message)."""
        with self.store.session() as session:
            row = session.scalars(select(AlertRow).where(
                AlertRow.environment == environment, AlertRow.kind == kind, AlertRow.state == "open",
                AlertRow.ts.is_not(None)).order_by(AlertRow.id.desc()).limit(1)).first()
            return (row.channel, row.ts) if row is not None else None

    def message_alerts(self, channel: str, ts: str) -> list[Alert]:
        """Every alert a message tells of, open or resolved."""
        with self.store.session() as session:
            return [Alert.of(r) for r in session.scalars(select(AlertRow).where(
                AlertRow.channel == channel, AlertRow.ts == ts).order_by(AlertRow.id))]

    def set_message(self, alert_id: int, channel: str, ts: str) -> bool:
        """Remember the alert's Slack message; only the first one sticks."""
        with self.store.session() as session, session.begin():
            result = session.execute(update(AlertRow).where(AlertRow.id == alert_id, AlertRow.ts.is_(None))
                                     .values(channel=channel, ts=ts))
            return result.rowcount == 1

    # what each message last showed: a lost edit (a Slack outage) is made again, once

    def mark_rendered(self, alerts: Iterable[Alert]) -> None:
        """Their message now shows each of `alerts` as it was when rendered (Alert.view)."""
        by_view: dict[str, list[int]] = {}
        for alert in alerts:
            by_view.setdefault(alert.view, []).append(alert.id)
        with self.store.session() as session, session.begin():
            for view, ids in by_view.items():
                session.execute(update(AlertRow).where(AlertRow.id.in_(ids), or_(
                    AlertRow.rendered.is_(None), AlertRow.rendered != view)).values(rendered=view))

    def messages_behind(self, environment: str, limit: int) -> list[tuple[str, str]]:
        """(channel, ts) of the messages of `environment` that show an older view of one of their alerts
        than its row (an edit Slack never took: above all a resolution during an outage), the longest
        behind first (resolved, else last seen, earliest), at most `limit`."""
        query = (select(AlertRow.channel, AlertRow.ts).where(
            AlertRow.environment == environment, AlertRow.channel.is_not(None), AlertRow.ts.is_not(None), _BEHIND)
            .group_by(AlertRow.channel, AlertRow.ts)
            .order_by(func.min(func.coalesce(AlertRow.resolved_at, AlertRow.last_seen_at)), func.min(AlertRow.id))
            .limit(limit))
        with self.store.session() as session:
            return [(channel, ts) for channel, ts in session.execute(query)]

    def claim_render(self, channel: str, ts: str) -> list[int]:
        """Take the message's behind alerts to edit it: marked as shown before the edit, in one conditional
        UPDATE, so of two replicas reconciling at once only one gets them (and edits); [] for the other.
        The ids taken, for release_render when the edit does not go through."""
        with self.store.session() as session, session.begin():
            taken = session.execute(update(AlertRow).where(AlertRow.channel == channel, AlertRow.ts == ts, _BEHIND)
                                    .values(rendered=_VIEW).returning(AlertRow.id)
                                    .execution_options(synchronize_session=False))
            return sorted(taken.scalars())

    def release_render(self, alert_ids: Iterable[int]) -> None:
        """The edit did not reach Slack: the message is behind again, for a later poll."""
        ids = list(alert_ids)
        if ids:
            with self.store.session() as session, session.begin():
                session.execute(update(AlertRow).where(AlertRow.id.in_(ids)).values(rendered=None))

    def due_for_escalation(self, environment: str, now: datetime, after_seconds: float,
                           kinds: Iterable[str]) -> list[Alert]:
        """Open alerts with a message, seen in the last poll, of an escalating kind, not yet escalated,
        that have been open at least `after_seconds` (Alert.open_for: resolved gaps do not count)."""
        with self.store.session() as session:
            rows = session.scalars(select(AlertRow).where(
                AlertRow.environment == environment, AlertRow.state == "open", AlertRow.escalated_at.is_(None),
                AlertRow.cleared_at.is_(None), AlertRow.ts.is_not(None), AlertRow.kind.in_(list(kinds)))
                .order_by(AlertRow.id))
            return [a for a in map(Alert.of, rows) if a.open_for(now) >= after_seconds]

    def claim_escalation(self, alert_id: int, now: datetime) -> bool:
        """The one caller that gets True tags the owner; everyone else does nothing."""
        with self.store.session() as session, session.begin():
            result = session.execute(update(AlertRow).where(
                AlertRow.id == alert_id, AlertRow.escalated_at.is_(None), AlertRow.state == "open")
                .values(escalated_at=now))
            return result.rowcount == 1

    def release_escalation(self, alert_id: int) -> None:
        """The tag could not be posted: let the next run try again."""
        with self.store.session() as session, session.begin():
            session.execute(update(AlertRow).where(AlertRow.id == alert_id).values(escalated_at=None))

    def alerts(self, environment: str | None = None, *, open_only: bool = True) -> list[Alert]:
        query = select(AlertRow).order_by(AlertRow.id)
        if environment is not None:
            query = query.where(AlertRow.environment == environment)
        if open_only:
            query = query.where(AlertRow.state == "open")
        with self.store.session() as session:
            return [Alert.of(r) for r in session.scalars(query)]

    # one run per slot

    def claim(self, job: str, slot: datetime, claimed_by: str) -> bool:
        """INSERT … ON CONFLICT DO NOTHING: True for exactly one caller per (job, slot)."""
        statement = (self._insert()(JobClaimRow)
                     .values(job=job, slot=slot, claimed_by=claimed_by[:120], claimed_at=utcnow())
                     .on_conflict_do_nothing(index_elements=["job", "slot"]).returning(JobClaimRow.job))
        with self.store.session() as session, session.begin():
            won = session.execute(statement).first() is not None
            session.execute(delete(JobClaimRow).where(JobClaimRow.job == job, JobClaimRow.slot < slot - CLAIMS_KEPT))
        return won

    # the pause switch and the last poll

    def _row(self, session, environment: str) -> WatchStateRow:
        session.execute(self._insert()(WatchStateRow).values(environment=environment, paused=False)
                        .on_conflict_do_nothing(index_elements=["environment"]))
        return session.get(WatchStateRow, environment, populate_existing=True)

    def state(self, environment: str) -> WatchState:
        with self.store.session() as session:
            row = session.get(WatchStateRow, environment)
            if row is None:
                return WatchState(environment)
            return WatchState(environment, bool(row.paused), row.changed_by, aware(row.changed_at),
                              aware(row.last_poll_at), row.last_poll_ok, row.last_poll_seconds, row.last_error)

    def paused(self, environment: str) -> bool:
        return self.state(environment).paused

    def set_paused(self, environment: str, paused: bool, actor: str, now: datetime | None = None) -> bool:
        """True when this call changed the switch (a second `off` changes nothing)."""
        with self.store.session() as session, session.begin():
            self._row(session, environment)
            result = session.execute(update(WatchStateRow).where(
                WatchStateRow.environment == environment, WatchStateRow.paused == (not paused))
                .values(paused=paused, changed_by=actor[:120], changed_at=now or utcnow()))
            return result.rowcount == 1

    def record_poll(self, observation: Observation) -> None:
        with self.store.session() as session, session.begin():
            self._row(session, observation.environment)
            session.execute(update(WatchStateRow).where(WatchStateRow.environment == observation.environment).values(
                last_poll_at=observation.at, last_poll_ok=observation.ok,
                last_poll_seconds=round(observation.seconds, 4), last_error=observation.error))


__all__ = [
    "Alert", "AlertBook", "Condition", "Observation", "WatchState", "evaluate", "kinds_seen", "needs_snapshot",
    "view_of", "observe", "utcnow", "OPENED", "ONGOING", "REOPENED", "CLEARING", "RESOLVED",
]


def live_activity(env: Environment) -> tuple[Activity, str]:
    """`activity` on demand (Slack and CLI): the full snapshot against the thresholds, and the target."""
    target = Target(env.dsn, connect_timeout=env.connect_timeout_seconds)
    with target.connect("activity", statement_timeout=env.watch.statement_timeout,
                        lock_timeout=env.watch.lock_timeout, deadline_seconds=env.watch.poll_deadline) as conn:
        result = snapshot(conn, long_query_seconds=env.thresholds.long_query_seconds,
                          idle_in_transaction_seconds=env.thresholds.idle_in_transaction_seconds,
                          query_chars=QUERY_CHARS)
    return result, target.label


__all__ += ["live_activity"]
