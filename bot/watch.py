"""The watch job's Slack side: one run = observe, evaluate, fold into alerts, post/update, escalate.

`WatchRunner.run(environment, slot)` is the function the scheduler calls every
`watch.every_seconds` (bot/scheduler.py). Tests call it directly with their own `slot` and
clock. What it does, in order:

1. only the leader sends (the gate is bot/scheduler's advisory lock or lock file), and only the
   one replica that claims the (job, slot) row runs that slot;
2. a paused environment (`/migrate watch off`) is skipped;
3. runbook.watch observes the target (poll; snapshot only when something is over a threshold),
   evaluates conditions and folds them into alert state in the state database;
4. each alert has one message: chat.postMessage once, chat.update by its stored ts after that,
   marked resolved (with how long it lasted) when the condition is gone;
5. alerts open longer than `escalation.escalate_after_seconds` tag the owner in their thread, once;
6. messages that show an older view of an alert than its row (an edit Slack never took, above all a
   resolution during an outage: nothing else ever goes back to a resolved alert) are edited again,
   at most RECONCILE_PER_POLL a poll, longest behind first (this runs on a paused environment too);
7. the Prometheus gauges of the environment are set.
"""
from __future__ import annotations

import json
import logging
import math
import os
import socket
import threading
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any, Callable, Protocol

from prometheus_client import CollectorRegistry, Gauge, Histogram

from bot import blocks
from bot.gateway import SlackCallFailed, SlackFailure, SlackGateway
from runbook.config import Settings
from runbook.state import Store
from runbook.watch import (OPENED, REOPENED, RESOLVED, Alert, AlertBook, Observation, evaluate,
                           kinds_seen, observe, utcnow)

log = logging.getLogger("runbook_bot.watch")

WATCH_ACTOR = "runbook-bot/watch"
# An open message whose content has not changed is still edited this often, to refresh its figures.
REFRESH_SECONDS = 300
# Messages behind their alerts edited again per poll at most: after an outage that saw a storm resolve,
# the backlog drains over a few polls instead of flooding the channel's rate budget in one.
RECONCILE_PER_POLL = 5


def job_id(environment: str) -> str:
    return f"watch:{environment}"


def slot_of(now: datetime, every_seconds: int) -> datetime:
    """The wall-clock slot `now` falls in: every replica computes the same one."""
    epoch = int(now.timestamp())
    return datetime.fromtimestamp(epoch - epoch % every_seconds, tz=timezone.utc)


def replica_identity() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Leader(Protocol):
    def is_leader(self) -> bool: ...


class AlwaysLeader:
    """The gate for a lone process (tests, SQLite after the lock file is taken)."""

    def is_leader(self) -> bool:
        return True


class WatchMetrics:
    """Per-environment gauges on /metrics (the same registry as the Slack metrics)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        def gauge(name: str, doc: str, labels: tuple[str, ...] = ("environment",)) -> Gauge:
            return Gauge(name, doc, list(labels), registry=registry)

        self.lock_waiters = gauge("runbook_bot_watch_lock_waiters", "Sessions waiting on a heavyweight lock")
        self.long_queries = gauge("runbook_bot_watch_long_queries",
                                  "Queries running longer than long_query_seconds, lock waiters not included")
        self.idle_in_transaction = gauge("runbook_bot_watch_idle_in_transaction",
                                         "Sessions idle in transaction longer than idle_in_transaction_seconds")
        self.oldest_xact = gauge("runbook_bot_watch_oldest_transaction_seconds", "Age of the oldest open transaction")
        self.poll_seconds = Histogram("runbook_bot_watch_poll_seconds", "Time to read the target (poll, snapshot if any)",
                                      ["environment"], registry=registry,
                                      buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.last_poll_seconds = gauge("runbook_bot_watch_last_poll_duration_seconds", "Duration of the last poll")
        self.up = gauge("runbook_bot_watch_up", "1 when the last poll read the target, 0 when it could not")
        self.last_success = gauge("runbook_bot_watch_last_success_timestamp_seconds",
                                  "Unix time of the last poll that read the target")
        self.open_alerts = gauge("runbook_bot_watch_open_alerts", "Open alerts by kind", ("environment", "kind"))
        self.leader = Gauge("runbook_bot_scheduler_leader", "1 on the replica that runs the watch and sends alerts",
                            registry=registry)

    def observed(self, observation: Observation) -> None:
        env = observation.environment
        self.poll_seconds.labels(env).observe(observation.seconds)
        self.last_poll_seconds.labels(env).set(observation.seconds)
        self.up.labels(env).set(1 if observation.ok else 0)
        counts = observation.poll if observation.ok else None
        if counts is None:
            # unknown, not the last values: a dashboard must not show a calm target it cannot see
            for gauge in (self.lock_waiters, self.long_queries, self.idle_in_transaction, self.oldest_xact):
                gauge.labels(env).set(math.nan)
            return
        self.lock_waiters.labels(env).set(counts.lock_waiters)
        # lock waiters are counted once, by lock_waiters, not again as long queries
        self.long_queries.labels(env).set(counts.long_queries - counts.long_lock_waiters)
        self.idle_in_transaction.labels(env).set(counts.idle_in_transaction)
        self.oldest_xact.labels(env).set(counts.oldest_xact_seconds or 0.0)
        self.last_success.labels(env).set(observation.at.timestamp())

    def alerts(self, environment: str, open_alerts: list[Alert]) -> None:
        from runbook.config import ALERT_KINDS

        for kind in ALERT_KINDS:
            self.open_alerts.labels(environment, kind).set(sum(1 for a in open_alerts if a.kind == kind))


class WatchRunner:
    """The job function and everything it needs; safe to call from several threads."""

    def __init__(self, settings: Settings, store: Store, client: Any, *, redactor: Any,
                 metrics: WatchMetrics | None = None, leader: Leader | None = None,
                 identity: str | None = None, clock: Callable[[], datetime] = utcnow) -> None:
        self.settings = settings
        self.store = store
        self.client = client
        self.redactor = redactor      # bot.redaction.Redactor: every text and message passes it
        self.gateway = SlackGateway(client, redactor)
        self.metrics = metrics
        self.leader = leader or AlwaysLeader()
        self.identity = identity or replica_identity()
        self.clock = clock
        # what each open message last said, by ts: an edit is sent only when that changes. Kept in
        # the process (a cache, not state): a new leader edits each open message once more.
        self._sent: dict[str, tuple[Any, datetime]] = {}
        self._sent_lock = threading.Lock()

    def book(self, environment: str) -> AlertBook:
        return AlertBook.for_environment(self.store, self.settings.environments[environment])

    def report_leadership(self) -> bool:
        """Ask the leader gate now and set the gauge: at start, so /metrics says which replica leads
        before the first slot (up to watch.every_seconds away) instead of 0 on every replica."""
        leader = self.leader.is_leader()
        if self.metrics is not None:
            self.metrics.leader.set(1 if leader else 0)
        return leader

    def run(self, environment: str, slot: datetime | None = None) -> str:
        """One watch run; returns what happened ("follower", "claimed", "paused", "no-channel", "ran")."""
        env = self.settings.environments[environment]
        if not self.report_leadership():
            return "follower"
        book = self.book(environment)
        slot = slot or slot_of(self.clock(), env.watch.every_seconds)
        if not book.claim(job_id(environment), slot, self.identity):
            return "claimed"
        if book.paused(environment):
            self._catch_up(environment, book, self.clock())
            return "paused"
        observation = observe(environment, env, clock=self.clock)
        if observation.error:
            observation = _with_error(observation, self.redactor(observation.error))
        book.record_poll(observation)
        if self.metrics is not None:
            self.metrics.observed(observation)
        # the poll's own time, its wall-clock slot: resolve_after_seconds and escalate_after_seconds
        # are counted on the polls' grid, not on when each poll's work happened to finish
        now = slot
        changed = book.apply(environment, evaluate(environment, env, observation), now, seen=kinds_seen(observation))
        self._catch_up(environment, book, now, changed)
        if self.metrics is not None:
            self.metrics.alerts(environment, book.alerts(environment))
        return "ran"

    def _catch_up(self, environment: str, book: AlertBook, now: datetime, changed: list[Alert] | None = None) -> None:
        """The poll's Slack work: its changes, the escalations due, then what earlier polls could not edit.
        `changed` None (a paused environment: nothing observed, nobody tagged): only the last."""
        try:
            touched: set[tuple[str, str]] = set()
            if changed is not None:
                touched = self.deliver(changed, now)
                self.escalate(environment, book, now)
            self.reconcile(environment, book, now, skip=touched)
        except SlackCallFailed as exc:
            # Slack unreachable: the poll's other messages wait for the next poll (the alerts are in the state
            # database) rather than each waiting out its own timeout
            log.error("the watch of %s stopped posting for this poll: %s", environment, exc)

    # -- Slack ----------------------------------------------------------------------------

    @property
    def channel(self) -> str | None:
        return self.settings.slack.channel if self.settings.slack is not None else None

    def _message(self, alerts: list[Alert]) -> blocks.Message:
        return blocks.alert_group_message(alerts, dashboards=self.settings.escalation.dashboards)

    @staticmethod
    def _failed(failure: SlackFailure, what: str) -> None:
        """Log a call that failed; one that did not reach Slack ends the run's Slack work (SlackCallFailed)."""
        if failure.network:
            raise SlackCallFailed(what, failure)
        log.error("%s: %s", what, failure)

    def deliver(self, changed: list[Alert], now: datetime | None = None) -> set[tuple[str, str]]:
        """One message per incident: the alerts of one kind in one environment share it.

        New incidents are posted first, so they never queue behind edits of old ones in Slack's
        per-channel budget; a new alert of a kind that already has an open message joins it. Then
        each message touched is edited, only when what it says changed (sessions in or out,
        cleared, resolved, re-opened) or its figures are older than REFRESH_SECONDS. Returns the
        messages it posted or tried to edit, (channel, ts).
        """
        now = now or self.clock()
        book = AlertBook(self.store)
        for alert in changed:
            self._record(alert)
        fresh: dict[tuple[str, str], list[Alert]] = {}
        for alert in changed:
            if alert.ts is None and alert.is_open:     # resolved before Slack ever saw it: nothing to do
                fresh.setdefault((alert.environment, alert.kind), []).append(alert)
        touched: dict[tuple[str, str], None] = {}
        for (environment, kind), alerts in fresh.items():
            current = book.group_message(environment, kind)
            if current is None:
                self._post(book, alerts, now)
                continue
            for alert in alerts:
                book.set_message(alert.id, *current)
            touched[current] = None
        for alert in changed:
            if alert.ts is not None and alert.channel is not None:
                touched[(alert.channel, alert.ts)] = None
        for channel, ts in touched:
            self._update(book, channel, ts, now)
        return set(touched)

    def _post(self, book: AlertBook, alerts: list[Alert], now: datetime) -> None:
        channel = self.channel
        if channel is None:
            log.warning("an alert opened but slack.channel is not configured: %s", alerts[0].key)
            return
        posted = self.gateway.post(channel, self._message(alerts))
        if posted.failure is not None:
            self._failed(posted.failure, f"the {alerts[0].kind} alert {alerts[0].id} was not posted")
            return
        for alert in alerts:
            book.set_message(alert.id, channel, posted.ts)
        book.mark_rendered(alerts)
        self._remember(posted.ts, _fingerprint(book.message_alerts(channel, posted.ts)), now)

    def _update(self, book: AlertBook, channel: str, ts: str, now: datetime) -> None:
        alerts = book.message_alerts(channel, ts)
        if not alerts:
            return
        fingerprint = _fingerprint(alerts)
        with self._sent_lock:
            last = self._sent.get(ts)
        if last is not None and last[0] == fingerprint and (now - last[1]).total_seconds() < REFRESH_SECONDS:
            return
        failure = self.gateway.update(channel, ts, self._message(alerts))
        if failure is not None:
            self._failed(failure, f"the {alerts[0].kind} alert {alerts[0].id} was not updated")
            return
        book.mark_rendered(alerts)
        self._remember(ts, fingerprint, now, done=not any(a.is_open for a in alerts))

    def reconcile(self, environment: str, book: AlertBook, now: datetime, *,
                  skip: set[tuple[str, str]] = frozenset()) -> list[tuple[str, str]]:
        """Edit the messages behind their alerts again (AlertBook.messages_behind), at most
        RECONCILE_PER_POLL, each by one replica only (AlertBook.claim_render); `skip`: the messages this
        poll already tried. Returns the messages edited."""
        done: list[tuple[str, str]] = []
        behind = [m for m in book.messages_behind(environment, RECONCILE_PER_POLL + len(skip)) if m not in skip]
        for channel, ts in behind[:RECONCILE_PER_POLL]:
            taken = book.claim_render(channel, ts)
            if not taken:
                continue                        # another replica is editing it
            alerts = book.message_alerts(channel, ts)
            failure = self.gateway.update(channel, ts, self._message(alerts))
            if failure is not None:
                book.release_render(taken)
                self._failed(failure, f"the {alerts[0].kind} alert {alerts[0].id} was not brought up to date")
                continue
            self._remember(ts, _fingerprint(alerts), now, done=not any(a.is_open for a in alerts))
            done.append((channel, ts))
        if done:
            log.info("the watch of %s brought %d alert message(s) up to date", environment, len(done))
        return done

    def _remember(self, ts: str, fingerprint: Any, now: datetime, *, done: bool = False) -> None:
        with self._sent_lock:
            if done:
                self._sent.pop(ts, None)        # a re-opening changes what it says anyway
            else:
                self._sent[ts] = (fingerprint, now)

    def _record(self, alert: Alert) -> None:
        outcome = {OPENED: "opened", REOPENED: "reopened", RESOLVED: "resolved"}.get(alert.change)
        if outcome is None:
            return
        summary = f"{alert.kind} {alert.subject}" + (f" lasted {round(alert.peak_seconds)} s" if outcome == "resolved" else "")
        self.store.record(actor=WATCH_ACTOR, action="alert", environment=alert.environment, outcome=outcome,
                          summary=self.redactor(summary), details={"alert_id": alert.id, "kind": alert.kind,
                                                                   "key": self.redactor(alert.key)})

    def escalate(self, environment: str, book: AlertBook, now: datetime) -> None:
        """Tag the owner once per message: a grouped incident is one page, not one per session."""
        escalation = self.settings.escalation
        owner = escalation.owner.slack
        if owner is None:
            return
        due: dict[tuple[str, str], list[Alert]] = {}
        for alert in book.due_for_escalation(environment, now, escalation.escalate_after_seconds,
                                             escalation.escalate_kinds):
            due.setdefault((alert.channel, alert.ts), []).append(alert)
        for (channel, ts), alerts in due.items():
            tagged_before = any(a.escalated_at is not None for a in book.message_alerts(channel, ts))
            won = [a for a in alerts if book.claim_escalation(a.id, now)]
            if tagged_before or not won:
                continue
            alert = won[0]
            sessions = sum(1 for a in book.message_alerts(channel, ts) if a.is_open)
            message = blocks.escalation_message(alert, owner, alert.open_for(now), sessions=sessions)
            posted = self.gateway.post(channel, message, thread_ts=ts)
            if posted.failure is not None:
                for claimed in won:             # tagged at a later poll
                    book.release_escalation(claimed.id)
                self._failed(posted.failure, f"could not tag the escalation owner for alert {alert.id}")
                continue
            self.store.record(actor=WATCH_ACTOR, action="alert", environment=environment, outcome="escalated",
                              summary=f"{alert.kind} {alert.subject} tagged {owner}", details={"alert_id": alert.id})


def _fingerprint(alerts: list[Alert]) -> tuple:
    """What a message says, without the figures that move every poll (ages, wait times)."""
    return tuple((a.id, a.state, a.cleared_at is None, a.reopened, json.dumps(_steady(a.details), sort_keys=True,
                                                                              default=str)) for a in alerts)


_MOVING = frozenset({"seconds", "xact_seconds", "longest_wait_seconds"})


def _steady(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _steady(v) for k, v in node.items() if k not in _MOVING}
    if isinstance(node, list):
        return [_steady(v) for v in node]
    return node


def _with_error(observation: Observation, error: str) -> Observation:
    return replace(observation, error=error)


__all__ = ["AlwaysLeader", "WATCH_ACTOR", "WatchMetrics", "WatchRunner", "job_id", "replica_identity", "slot_of"]
