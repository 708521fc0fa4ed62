"""Requests acted on once, however often they arrive (issue 13 §4; design rule 18).

Slack accepts a signed request for five minutes after its timestamp, so anyone who captured one
(a proxy log, a leaked HAR file) could send it again in that window and, say, ask for the same
migration three times. Each state-changing request's identity (its signature, or its trigger_id)
is claimed once in job_claims, in the state database every replica shares: the primary key
decides, so the first delivery wins on any replica and every repeat is ignored.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError

from runbook.state.models import JobClaimRow, utcnow

# Slack's window (its verifier refuses older timestamps, as ours does), plus clock skew either way:
# a claim is kept well past the last moment its request could still be accepted.
REPLAY_WINDOW = timedelta(minutes=5)
KEPT_FOR = 2 * REPLAY_WINDOW + timedelta(minutes=1)
PREFIX = "request:"
# Every request claim uses this one slot: the key alone identifies it.
_SLOT = datetime(2000, 1, 1, tzinfo=timezone.utc)


def first_delivery(store, key: str, *, claimed_by: str, now: datetime | None = None) -> bool:
    """True the first time `key` is seen (within KEPT_FOR), False for every repeat. Old claims are
    removed as new ones are made."""
    now = now or utcnow()
    job = (PREFIX + key)[:80]
    try:
        with store.session() as session, session.begin():
            session.add(JobClaimRow(job=job, slot=_SLOT, claimed_by=claimed_by[:120], claimed_at=now))
    except IntegrityError:
        return False
    with store.session() as session, session.begin():
        session.execute(delete(JobClaimRow).where(JobClaimRow.job.like(PREFIX + "%"),
                                                  JobClaimRow.claimed_at < _stored(store, now - KEPT_FOR)))
    return True


def _stored(store, value: datetime) -> datetime:
    """A time as the database holds it: SQLite keeps naive UTC."""
    return value.replace(tzinfo=None) if store.engine.dialect.name == "sqlite" else value


__all__ = ["REPLAY_WINDOW", "first_delivery"]
