"""Alert messages that missed an edit (Slack out of reach or erroring) catch up once Slack answers.

Driven as tests/test_watch.py drives the watch (WatchRunner.run with an injected clock and slot,
real sessions on a real PostgreSQL target); Slack is LocalSlack, made unreachable (its port
closed) or erroring (scripted `ok: false` answers to chat.update).
"""
from __future__ import annotations

import threading
from contextlib import closing

import pytest

from bot.app import make_client
from bot.flows import Redactor
from bot.localslack import LocalSlack
from bot.watch import RECONCILE_PER_POLL, WatchRunner
from runbook.state import Store
from runbook.watch import AlertBook
from tests.support.sessions import Sessions
from tests.support.waiting import wait_for
from tests.test_watch import make_watch, slack, state_older_than, state_url  # noqa: F401  (fixtures)

# chat.update answered with an error (not retried by the client, unlike a 5xx), as long as the outage lasts
ERRORING = dict(error="fatal_error", times=10_000)


def idle_in_transaction(s: Sessions):
    """A new session idle in its transaction for 0.4 s (over the 0.3 s threshold)."""
    conn = s.open(autocommit=False)
    conn.execute("SELECT 1")
    wait_for(lambda: state_older_than(s, conn.info.backend_pid, 0.4), timeout=10, what="idle 0.4 s")
    return conn


def unreachable_client():
    with LocalSlack() as gone:
        return make_client("xoxb-watch-test", gone.url)         # its port closed once it stops


def resolved_while_chat_update_errors(watch, slack: LocalSlack, s: Sessions):
    """An alert posted, then resolved (resolve_after_seconds 0) while chat.update errors; Slack answers
    again afterwards. Its message, still showing it open."""
    conn = idle_in_transaction(s)
    watch.run()
    [alert] = watch.posts()
    slack.fail_next("chat.update", **ERRORING)
    conn.commit()
    watch.run()
    slack.clear_faults()
    return alert


def resolved(message) -> bool:
    return message.text.startswith("RESOLVED")


@pytest.mark.parametrize("outage", ["unreachable", "erroring"])
def test_alert_resolved_while_slack_is_out_shows_resolved_once_slack_answers(pg_url, make_watch, slack, state_url,
                                                                              outage):
    """Nothing else goes back to a resolved alert: before alerts.rendered its message stayed red for good."""
    watch = make_watch(pg_url, thresholds={"idle_in_transaction_seconds": 0.3}, state_url=state_url)
    reachable = watch.runner.gateway.client
    with Sessions(pg_url) as s:
        conn = idle_in_transaction(s)
        watch.run()
        [alert] = watch.posts()
        if outage == "unreachable":
            watch.runner.gateway.client = unreachable_client()
        else:
            slack.fail_next("chat.update", **ERRORING)
        conn.commit()
        assert watch.run() == "ran"                    # first poll without it: cleared (an edit that fails)
        assert watch.run() == "ran"                    # resolved (an edit that fails)
        assert not resolved(alert) and alert.updates == 0
        assert AlertBook(watch.store).alerts("production") == []
        assert AlertBook(watch.store).messages_behind("production", 10) == [(alert.channel, alert.ts)]

        watch.runner.gateway.client = reachable
        slack.clear_faults()
        watch.run()                                    # nothing changed on the target: the catch-up edits it
        assert resolved(alert) and alert.updates == 1
        for advance in (60, 600, 3600):
            watch.run(advance=advance)
        assert alert.updates == 1 and len(watch.posts()) == 1          # once
        assert AlertBook(watch.store).messages_behind("production", 10) == []


def test_a_storm_resolved_during_an_outage_is_edited_a_few_a_poll_oldest_first(pg_url, make_watch, slack):
    """Incidents one after the other, each its own message, each resolving while chat.update errors: once
    Slack answers, RECONCILE_PER_POLL messages a poll are brought up to date, the oldest first, each once."""
    count = 2 * RECONCILE_PER_POLL + 1
    watch = make_watch(pg_url, thresholds={"idle_in_transaction_seconds": 0.3}, watch={"resolve_after_seconds": 0})
    slack.fail_next("chat.update", **ERRORING)
    with Sessions(pg_url) as s:
        for i in range(count):
            conn = idle_in_transaction(s)
            watch.run()
            assert len(watch.posts()) == i + 1                       # its own message
            conn.commit()
            watch.run()                                              # resolved: the edit errors
        posts = watch.posts()
        assert not any(map(resolved, posts)) and all(m.updates == 0 for m in posts)

        slack.clear_faults()
        updates = len(slack.calls("chat.update"))
        for polls in range(1, 4):
            watch.run()
            done = min(count, polls * RECONCILE_PER_POLL)
            assert [resolved(m) for m in posts] == [True] * done + [False] * (count - done), polls
            assert len(slack.calls("chat.update")) - updates == done            # no edit beyond the cap
        watch.run(advance=600)
        assert all(m.updates == 1 for m in posts) and len(slack.calls("chat.update")) - updates == count


@pytest.mark.parametrize("state_url", ["postgresql"], indirect=True)   # as replicas share it
def test_two_replicas_bring_a_message_up_to_date_once(pg_url, make_watch, slack, state_url):
    """Two watch runners on one PostgreSQL state database catching up at the same moment (a slow poll
    overlapping the next on another replica): one edit. A replica that holds the message (claimed, its
    edit in flight) leaves the other nothing to do; an edit that fails hands it back."""
    watch = make_watch(pg_url, thresholds={"idle_in_transaction_seconds": 0.3}, state_url=state_url,
                       watch={"resolve_after_seconds": 0})
    other_store = Store(state_url)            # the other replica's own connections to the shared state database
    other = WatchRunner(watch.settings, other_store, make_client("xoxb-watch-test", slack.url),
                        redactor=Redactor(watch.settings), identity="other-replica", clock=watch.clock)
    book = AlertBook(watch.store)
    with Sessions(pg_url) as s, closing(other_store):
        alert = resolved_while_chat_update_errors(watch, slack, s)
        assert not resolved(alert)
        message = (alert.channel, alert.ts)
        assert book.messages_behind("production", 10) == [message]

        taken = book.claim_render(*message)
        assert taken and book.claim_render(*message) == []
        assert other.reconcile("production", AlertBook(other_store), watch.clock()) == [] and alert.updates == 0
        book.release_render(taken)

        start = threading.Barrier(2)
        done: list = []

        def catch_up(runner: WatchRunner) -> None:
            start.wait(timeout=10)
            done.extend(runner.reconcile("production", AlertBook(runner.store), watch.clock()))

        threads = [threading.Thread(target=catch_up, args=(r,)) for r in (watch.runner, other)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert done == [message] and resolved(alert) and alert.updates == 1
        assert book.messages_behind("production", 10) == []


def test_a_paused_watch_still_brings_its_messages_up_to_date(pg_url, make_watch, slack):
    """`/migrate watch off` stops the polls of the target, not the catch-up of what Slack missed: a
    pause right after an outage must not leave its last alert open in the channel."""
    watch = make_watch(pg_url, thresholds={"idle_in_transaction_seconds": 0.3}, watch={"resolve_after_seconds": 0})
    with Sessions(pg_url) as s:
        alert = resolved_while_chat_update_errors(watch, slack, s)
    assert AlertBook(watch.store).set_paused("production", True, "U0TESTER1")
    assert watch.run() == "paused"
    assert resolved(alert) and alert.updates == 1
    assert watch.run() == "paused" and alert.updates == 1
