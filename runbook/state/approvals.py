"""Approval requests and decisions in the state database: the state machine, in SQL.

Every state change is one conditional UPDATE (`... WHERE id = :id AND state IN (...)`) whose
row count says who won: double clicks, and concurrent clicks on two replicas sharing this
database, are harmless, and only the winner acts (design rules 3 and 4).

    pending --approve x required--> approved --> executing --> done | failed
    pending --> rejected | expired | cancelled

Knows nothing of Slack: bot/approvals.py authorises clicks and posts the messages.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterable

from sqlalchemy import and_, exists, func, insert, literal, select, update
from sqlalchemy.exc import IntegrityError

from runbook.state.models import ApprovalDecisionRow, ApprovalRow, as_utc, utcnow
from runbook.state.store import Store

PENDING, APPROVED, EXECUTING, DONE, FAILED = "pending", "approved", "executing", "done", "failed"
REJECTED, EXPIRED, CANCELLED = "rejected", "expired", "cancelled"

APPROVE, REJECT, YES = "approve", "reject", "yes"     # YES: the CLI's --yes, standing for the approval
APPROVING_DECISIONS = (APPROVE, YES)

# What a button value may look like: the opaque id and nothing else.
ID_PATTERN = r"^[0-9a-f]{32}$"


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
                   tuple(Decision(d.approver, d.decision, as_utc(d.at)) for d in decisions))


class ApprovalStore:
    """Approval rows on top of the bot's Store (same engine, short sessions, thread-safe)."""

    def __init__(self, store: Store):
        self.store = store

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

    def approval_count(self, request_id: str) -> int:
        with self.store.session() as session:
            return session.scalar(select(func.count()).select_from(ApprovalDecisionRow)
                                  .where(ApprovalDecisionRow.request_id == request_id)
                                  .where(ApprovalDecisionRow.decision.in_(APPROVING_DECISIONS))) or 0

    # -- writing ----------------------------------------------------------------------------

    def create(self, *, kind: str, environment: str, requester: str, params: dict[str, Any], required: int,
               expires_at: datetime, state: str = PENDING) -> ApprovalRequest:
        now = utcnow()
        row = ApprovalRow(id=uuid.uuid4().hex, kind=kind, environment=environment, requester=requester,
                          params=params, state=state, required=required, expires_at=expires_at,
                          result_summary="", created_at=now, updated_at=now)
        with self.store.session() as session, session.begin():
            session.add(row)
        return ApprovalRequest.of(row, ())

    def set_message(self, request_id: str, channel: str, ts: str) -> None:
        with self.store.session() as session, session.begin():
            session.execute(update(ApprovalRow).where(ApprovalRow.id == request_id)
                            .values(channel=channel, message_ts=ts))

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
                   result_summary: str | None = None) -> bool:
        """Move the request to `to_state` if it is in one of `from_states` (and, with
        `unexpired_at`, not past its expiry then). True only for the one caller that moved it."""
        values: dict[str, Any] = {"state": to_state, "updated_at": utcnow()}
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


__all__ = ["ApprovalRequest", "ApprovalStore", "Decision", "PENDING", "APPROVED",
           "EXECUTING", "DONE", "FAILED", "REJECTED", "EXPIRED", "CANCELLED", "APPROVE", "REJECT", "YES",
           "ID_PATTERN"]
