"""Approval requests and decisions in the state database: the state machine, in SQL.

Every state change is one conditional UPDATE (`... WHERE id = :id AND state IN (...)`) whose
row count says who won: double clicks, and concurrent clicks on two replicas sharing this
database, are harmless, and only the winner acts (design rules 3 and 4).

    pending --approve x required--> approved --> executing --> done | failed
    pending --> rejected | expired | cancelled
    approved | executing (no run yet) --> failed ("not started": the process that held it is gone)
    executing (its run finished) --> done | failed, as the run ended (the process that held it is gone)

Knows nothing of Slack: bot/approvals.py authorises clicks and posts the messages.

Two facts on each row keep a request from being left behind (issue 13 §3):
- who holds it: the process (host, pid) that approved it or started it. Between the final approval
  and its run's row (runbook/state/runs.py) the request lives only in that process's executor queue;
  if the process dies there, or its queue is full, nothing would ever run it or say so.
  `reap_not_started` closes such requests, once (a conditional UPDATE), with an event;
  `left_after_run` finds the requests whose run finished but whose holder died before closing them
  (between the run's end and executing -> done | failed), and `close_after_run` closes each once;
- what its message last showed (`rendered_at`: the updated_at of the version rendered). A Slack
  outage can swallow an update; `unrendered` lists the requests whose message is behind.
"""
from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Iterable

from sqlalchemy import and_, exists, func, insert, literal, or_, select, update
from sqlalchemy.exc import IntegrityError

from runbook.state.models import ApprovalDecisionRow, ApprovalRow, RunRow, as_utc, utcnow
from runbook.state.records import RUNNING
from runbook.state.store import Store

if TYPE_CHECKING:
    from runbook.state.runs import Run

PENDING, APPROVED, EXECUTING, DONE, FAILED = "pending", "approved", "executing", "done", "failed"
REJECTED, EXPIRED, CANCELLED = "rejected", "expired", "cancelled"

APPROVE, REJECT, YES = "approve", "reject", "yes"     # YES: the CLI's --yes, standing for the approval
APPROVING_DECISIONS = (APPROVE, YES)

# What a button value may look like: the opaque id and nothing else.
ID_PATTERN = r"^[0-9a-f]{32}$"

# result["outcome"] of a request closed because its execution never started (reap_not_started).
NOT_STARTED = "not_started"
# The grace period of an approved request whose holder cannot be asked whether it lives (on another
# host, or not recorded): reaped once it has waited this long without a run. Long enough for a queue
# behind other work; a late execution loses anyway (approved -> executing is conditional), and
# executing -> its run's row takes seconds. A holder dead on this host needs no grace: it runs nothing.
NOT_STARTED_STALE_SECONDS = 600.0


@dataclass(frozen=True)
class Decision:
    approver: str
    decision: str
    at: datetime


@dataclass(frozen=True)
class ApprovalRequest:
    id: str
    kind: str
    environment: str
    requester: str
    params: dict[str, Any]
    state: str
    required: int
    expires_at: datetime
    channel: str | None
    message_ts: str | None
    result: dict[str, Any] | None
    result_summary: str
    created_at: datetime
    updated_at: datetime
    decisions: tuple[Decision, ...] = ()
    claimed_host: str | None = None     # who holds it once approved (NOT_STARTED, reap_not_started)
    claimed_pid: int | None = None
    rendered_at: datetime | None = None  # the updated_at its message last showed

    @property
    def rendered(self) -> bool:
        """Its message shows it as it stands (or it has none)."""
        return not self.message_ts or self.rendered_at == self.updated_at

    @property
    def approvers(self) -> list[str]:
        """Who approved, in order."""
        return [d.approver for d in self.decisions if d.decision in APPROVING_DECISIONS]

    @property
    def rejected_by(self) -> str | None:
        return next((d.approver for d in self.decisions if d.decision == REJECT), None)

    def is_due(self, now: datetime) -> bool:
        """Pending past its expiry time."""
        return self.state == PENDING and self.expires_at <= now

    @property
    def version(self) -> tuple[str, int, datetime]:
        """Changes whenever what a message shows about the request changes."""
        return self.state, len(self.decisions), self.updated_at

    @classmethod
    def of(cls, row: ApprovalRow, decisions: Iterable[ApprovalDecisionRow]) -> "ApprovalRequest":
        return cls(row.id, row.kind, row.environment, row.requester, dict(row.params or {}), row.state,
                   row.required, as_utc(row.expires_at), row.channel, row.message_ts,
                   dict(row.result) if row.result is not None else None, row.result_summary or "",
                   as_utc(row.created_at), as_utc(row.updated_at),
                   tuple(Decision(d.approver, d.decision, as_utc(d.at)) for d in decisions),
                   row.claimed_host, row.claimed_pid, as_utc(row.rendered_at))


class ApprovalStore:
    """Approval rows on top of the bot's Store (same engine, short sessions, thread-safe)."""

    def __init__(self, store: Store, *, host: str | None = None):
        self.store = store
        self.host = (host or socket.gethostname())[:255]

    # -- reading ----------------------------------------------------------------------------

    def get(self, request_id: str) -> ApprovalRequest | None:
        with self.store.session() as session:
            row = session.get(ApprovalRow, request_id)
            if row is None:
                return None
            decisions = session.scalars(select(ApprovalDecisionRow)
                                        .where(ApprovalDecisionRow.request_id == request_id)
                                        .order_by(ApprovalDecisionRow.id)).all()
            return ApprovalRequest.of(row, decisions)

    def list(self, *, environment: str | None = None, states: Iterable[str] | None = None,
             limit: int = 50) -> list[ApprovalRequest]:
        query = select(ApprovalRow.id).order_by(ApprovalRow.created_at.desc()).limit(limit)
        if environment is not None:
            query = query.where(ApprovalRow.environment == environment)
        if states is not None:
            query = query.where(ApprovalRow.state.in_(list(states)))
        with self.store.session() as session:
            ids = list(session.scalars(query))
        return [r for r in (self.get(i) for i in ids) if r is not None]

    def due_for_expiry(self, now: datetime | None = None) -> list[str]:
        now = now or utcnow()
        with self.store.session() as session:
            return list(session.scalars(select(ApprovalRow.id).where(ApprovalRow.state == PENDING)
                                        .where(ApprovalRow.expires_at <= now)))

    def unrendered(self, kinds: Iterable[str], *, settled_before: datetime, limit: int = 100) -> list[ApprovalRequest]:
        """Requests of `kinds` with a message that shows an older version than the row (a lost update),
        unchanged since `settled_before` (whoever changed it just now is still updating it). Oldest first."""
        query = (select(ApprovalRow.id).where(ApprovalRow.kind.in_(list(kinds)))
                 .where(ApprovalRow.channel.is_not(None)).where(ApprovalRow.message_ts.is_not(None))
                 .where(or_(ApprovalRow.rendered_at.is_(None), ApprovalRow.rendered_at != ApprovalRow.updated_at))
                 .where(ApprovalRow.updated_at <= self._stored(settled_before))
                 .order_by(ApprovalRow.updated_at).limit(limit))
        with self.store.session() as session:
            ids = list(session.scalars(query))
        return [r for r in (self.get(i) for i in ids) if r is not None and not r.rendered]

    def approval_count(self, request_id: str) -> int:
        with self.store.session() as session:
            return session.scalar(select(func.count()).select_from(ApprovalDecisionRow)
                                  .where(ApprovalDecisionRow.request_id == request_id)
                                  .where(ApprovalDecisionRow.decision.in_(APPROVING_DECISIONS))) or 0

    # -- writing ----------------------------------------------------------------------------

    def create(self, *, kind: str, environment: str, requester: str, params: dict[str, Any], required: int,
               expires_at: datetime, state: str = PENDING) -> ApprovalRequest:
        """Created approved (the CLI's --yes), it is held by this process from the start."""
        now = utcnow()
        holder = self._holder() if state == APPROVED else {}
        row = ApprovalRow(id=uuid.uuid4().hex, kind=kind, environment=environment, requester=requester,
                          params=params, state=state, required=required, expires_at=expires_at,
                          result_summary="", created_at=now, updated_at=now, **holder)
        with self.store.session() as session, session.begin():
            session.add(row)
        return ApprovalRequest.of(row, ())

    def set_message(self, request_id: str, channel: str, ts: str, *, rendered_at: datetime | None = None) -> None:
        """Where its message is; `rendered_at`: the updated_at of the version that message shows."""
        with self.store.session() as session, session.begin():
            session.execute(update(ApprovalRow).where(ApprovalRow.id == request_id)
                            .values(channel=channel, message_ts=ts, rendered_at=rendered_at))

    def mark_rendered(self, request_id: str, updated_at: datetime) -> None:
        """Its message now shows the version of `updated_at` (never moves updated_at itself)."""
        with self.store.session() as session, session.begin():
            session.execute(update(ApprovalRow).where(ApprovalRow.id == request_id)
                            .values(rendered_at=self._stored(updated_at)))

    def add_decision(self, request_id: str, approver: str, decision: str) -> str:
        """Record a decision while the request is pending: "added", "duplicate" or "closed".

        Committed on its own, before anyone counts: two approvers clicking at once in two
        transactions would each see only their own uncounted row otherwise, and both stop
        short of `required`. Counted after commit, the later of the two sees both.
        """
        pending = exists().where(and_(ApprovalRow.id == request_id, ApprovalRow.state == PENDING))
        statement = insert(ApprovalDecisionRow).from_select(
            ["request_id", "approver", "decision", "at"],
            select(literal(request_id), literal(approver), literal(decision), literal(utcnow(), ApprovalDecisionRow.at.type))
            .where(pending)).returning(ApprovalDecisionRow.id)
        try:
            with self.store.session() as session, session.begin():
                # RETURNING, not rowcount: an ORM session's INSERT ... SELECT reports -1 on psycopg
                inserted = session.execute(statement).first()
                if inserted is not None:    # the message shows the decisions: a new version to render
                    session.execute(update(ApprovalRow).where(ApprovalRow.id == request_id)
                                    .values(updated_at=utcnow()))
        except IntegrityError:
            return "duplicate"
        return "added" if inserted is not None else "closed"

    def add_cli_decision(self, request_id: str, approver: str) -> None:
        """The CLI's --yes on a request it created approved (nobody else can see it yet)."""
        with self.store.session() as session, session.begin():
            session.add(ApprovalDecisionRow(request_id=request_id, approver=approver, decision=YES, at=utcnow()))

    def note(self, request_id: str, text: str) -> bool:
        """Progress of a running request (its result_summary while executing)."""
        with self.store.session() as session, session.begin():
            return session.execute(update(ApprovalRow).where(ApprovalRow.id == request_id)
                                   .where(ApprovalRow.state == EXECUTING)
                                   .values(result_summary=text[:2000], updated_at=utcnow())).rowcount == 1

    def transition(self, request_id: str, from_states: Iterable[str], to_state: str, *,
                   unexpired_at: datetime | None = None, result: dict[str, Any] | None = None,
                   result_summary: str | None = None, hold: bool = False) -> bool:
        """Move the request to `to_state` if it is in one of `from_states` (and, with
        `unexpired_at`, not past its expiry then). True only for the one caller that moved it.
        `hold`: this process takes it (approving it, starting it): it is the one to run it."""
        values: dict[str, Any] = {"state": to_state, "updated_at": utcnow(), **(self._holder() if hold else {})}
        if result is not None:
            values["result"] = result
        if result_summary is not None:
            values["result_summary"] = result_summary
        statement = (update(ApprovalRow).where(ApprovalRow.id == request_id)
                     .where(ApprovalRow.state.in_(list(from_states))).values(**values))
        if unexpired_at is not None:
            statement = statement.where(ApprovalRow.expires_at > unexpired_at)
        with self.store.session() as session, session.begin():
            return session.execute(statement).rowcount == 1

    # -- requests whose execution never started ----------------------------------------------

    def reap_not_started(self, kinds: Iterable[str], *, stale_after_seconds: float = NOT_STARTED_STALE_SECONDS,
                         now: datetime | None = None, actor: str = "runbook-bot") -> list[ApprovalRequest]:
        """Close approved (or executing) requests that have no run and never will: failed, result
        outcome NOT_STARTED, one event each; returns them (the caller updates their messages).

        Never started: no runs row names the request. Never will: on this host, the process holding
        it is dead; from anywhere, it has waited `stale_after_seconds` since it last changed (its
        holder may be on a host this one cannot ask). A holder that is this very process is alive.
        Conditional on the state and updated_at read, and on no run having appeared: a request that
        starts meanwhile is left alone."""
        now = now or utcnow()
        no_run = ~exists().where(RunRow.approval_id == ApprovalRow.id)
        query = (select(ApprovalRow.id).where(ApprovalRow.state.in_([APPROVED, EXECUTING]))
                 .where(ApprovalRow.kind.in_(list(kinds))).where(no_run).order_by(ApprovalRow.updated_at))
        with self.store.session() as session:
            ids = list(session.scalars(query))
        closed: list[ApprovalRequest] = []
        for request in (r for r in (self.get(i) for i in ids) if r is not None):
            gone = self._holder_gone(request, request.updated_at, now, stale_after_seconds)
            if gone is None:
                continue
            holder = self._holder_of(request)
            why = (f"the bot process that held it ({holder}) stopped before starting it" if gone == "dead" else
                   f"it waited since {request.updated_at:%Y-%m-%d %H:%M:%S} UTC for {holder} to start it")
            if self.close_not_started(request, why, actor=actor, outcome="not-started",
                                      conditions=(ApprovalRow.updated_at == self._stored(request.updated_at),
                                                  no_run)):
                closed.append(self.get(request.id) or request)
        return closed

    def _holder_gone(self, request: ApprovalRequest, since: datetime, now: datetime,
                     stale_after_seconds: float) -> str | None:
        """Whether the process holding `request` is gone: "dead" (on this host, its pid is not alive),
        "stale" (nothing has changed since `since` for `stale_after_seconds`: its holder may be on a host
        this one cannot ask), else None. This very process is never gone: it may be about to act."""
        from runbook.state.runs import process_alive     # runs imports this module

        here = request.claimed_host == self.host and request.claimed_pid is not None
        if here and request.claimed_pid == os.getpid():
            return None
        if here and not process_alive(request.claimed_pid or 0):
            return "dead"
        return "stale" if since <= now - timedelta(seconds=stale_after_seconds) else None

    @staticmethod
    def _holder_of(request: ApprovalRequest) -> str:
        return (f"pid {request.claimed_pid} on {request.claimed_host}" if request.claimed_pid
                else "an unrecorded process")

    # -- requests whose run finished but which were never closed -----------------------------

    def left_after_run(self, kinds: Iterable[str], *, stale_after_seconds: float = NOT_STARTED_STALE_SECONDS,
                       now: datetime | None = None, limit: int = 20) -> list[tuple[ApprovalRequest, "Run"]]:
        """Executing requests whose run finished (succeeded, failed or refused: runs.approval_id names the
        request) while the process holding the request is gone: it died between the run's end and
        executing -> done | failed (bot.approvals.ApprovalService.execute), so nothing else will close
        them. Gone: the rule of reap_not_started, with "stale" counted from the later of the request's
        last change and the run's end (its holder may still be posting the run's log and summary).
        A holder that is this very process is never gone: it may be closing the request this instant.
        An interrupted run is not here: its follow-up closes its request (bot.migrations). Oldest first."""
        from runbook.state.runs import INTERRUPTED, Run

        query = (select(RunRow).join(ApprovalRow, ApprovalRow.id == RunRow.approval_id)
                 .where(ApprovalRow.state == EXECUTING).where(ApprovalRow.kind.in_(list(kinds)))
                 .where(RunRow.finished_at.is_not(None)).where(RunRow.state.not_in([RUNNING, INTERRUPTED]))
                 .order_by(RunRow.finished_at).limit(limit))
        now = now or utcnow()
        with self.store.session() as session:
            runs = [Run.of(row) for row in session.scalars(query)]
        left = []
        for run in runs:
            request = self.get(run.approval_id or "")
            if request is None or request.state != EXECUTING:
                continue
            since = max(request.updated_at, run.finished_at or request.updated_at)
            if self._holder_gone(request, since, now, stale_after_seconds) is not None:
                left.append((request, run))
        return left

    def close_after_run(self, request: ApprovalRequest, run: "Run", *, result: dict[str, Any],
                        result_summary: str, actor: str = "runbook-bot") -> bool:
        """executing -> done (the run succeeded) or failed (it failed or was refused), with the `result` and
        `summary` the kind made of the run, and one event (the outcome its holder would have recorded, with
        who held it): if it is still as `left_after_run` read it. True only for the one caller that closed it."""
        from runbook.state.runs import SUCCEEDED

        state = DONE if run.state == SUCCEEDED else FAILED
        statement = (update(ApprovalRow).where(ApprovalRow.id == request.id).where(ApprovalRow.state == EXECUTING)
                     .where(ApprovalRow.updated_at == self._stored(request.updated_at))
                     .values(state=state, updated_at=utcnow(), result=result, result_summary=result_summary[:2000]))
        with self.store.session() as session, session.begin():
            if session.execute(statement).rowcount != 1:
                return False
        self.store.record(actor=actor, action=request.kind[:40], environment=request.environment,
                          outcome="ok" if state == DONE else "error", summary=result_summary[:2000],
                          run_id=request.id,
                          details={"kind": request.kind, "run_id": run.id, "run_state": run.state,
                                   "closed_for": self._holder_of(request), "approved_by": request.approvers})
        return True

    def close_own_queued(self, why: str, kinds: Iterable[str], *, actor: str = "runbook-bot") -> list[ApprovalRequest]:
        """This process is stopping: the approved requests it holds that wait in its queue (not yet
        executing) are closed now, with `why`, rather than by the next start or a replica's reaper.
        Executing ones are left: they may be starting their run this instant (the run reaper has them)."""
        query = (select(ApprovalRow.id).where(ApprovalRow.state == APPROVED).where(ApprovalRow.kind.in_(list(kinds)))
                 .where(ApprovalRow.claimed_host == self.host).where(ApprovalRow.claimed_pid == os.getpid()))
        with self.store.session() as session:
            ids = list(session.scalars(query))
        closed = []
        for request in (r for r in (self.get(i) for i in ids) if r is not None):
            if self.close_not_started(request, why, actor=actor):
                closed.append(self.get(request.id) or request)
        return closed

    def close_not_started(self, request: ApprovalRequest, why: str, *, actor: str = "runbook-bot",
                          outcome: str = "not-started", conditions: tuple[Any, ...] = ()) -> bool:
        """approved | executing -> failed, result outcome NOT_STARTED, and its event (`outcome`), if it
        is still in the state it was read in: True only for the one caller that closed it."""
        summary = f"approved, but never started: {why}; nothing ran"
        result = {"outcome": NOT_STARTED, "state_was": request.state, "why": why,
                  "host": request.claimed_host, "pid": request.claimed_pid}
        statement = (update(ApprovalRow).where(ApprovalRow.id == request.id)
                     .where(ApprovalRow.state == request.state).where(*conditions)
                     .values(state=FAILED, updated_at=utcnow(), result=result, result_summary=summary))
        with self.store.session() as session, session.begin():
            if session.execute(statement).rowcount != 1:
                return False
        self.store.record(actor=actor, action=request.kind[:40], environment=request.environment,
                          outcome=outcome[:20], summary=summary[:2000], run_id=request.id,
                          details={"kind": request.kind, "state_was": request.state, "host": request.claimed_host,
                                   "pid": request.claimed_pid, "approved_by": request.approvers})
        return True

    def _holder(self) -> dict[str, Any]:
        return {"claimed_host": self.host, "claimed_pid": os.getpid()}

    def _stored(self, value: datetime) -> datetime:
        """A time as the database holds it: SQLite keeps naive UTC."""
        return value.replace(tzinfo=None) if self.store.engine.dialect.name == "sqlite" else value


__all__ = ["ApprovalRequest", "ApprovalStore", "Decision", "PENDING", "APPROVED",
           "EXECUTING", "DONE", "FAILED", "REJECTED", "EXPIRED", "CANCELLED", "APPROVE", "REJECT", "YES",
           "ID_PATTERN", "NOT_STARTED", "NOT_STARTED_STALE_SECONDS"]
