"""Approvals over the real path: signed block_actions over HTTP -> the real Bolt app (Runtime.build)
-> Flows' executor -> bot/approvals.py -> the state database -> the local Slack Web API.

The kind approved here ("exercise") only counts its executions, so these tests are about the
machinery every kind shares (restore now, migrate and rollback next): authorisation, required
approvals, expiry, idempotent and concurrent clicks, forged buttons, audit and redaction.
"""
from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest

from bot import blocks
from bot.approvals import ACTION_APPROVE, ACTION_REJECT, ApprovalError, ApprovalKind, ApprovalService, Outcome
from bot.flows import Redactor
from bot.localslack import LocalSlack
from bot.server import Runtime
from runbook.state import Store
from runbook.state.approvals import ApprovalRequest, ApprovalStore
from tests.support.configs import settings_for, with_password
from tests.support.waiting import wait_for
from tests.support.slack import (  # noqa: F401  (fixtures)
    SIGNING_SECRET,
    block_actions_body,
    local_slack,
    log_lines,
    signed_post,
)

PASSWORD = "Appr0val-Db-Secret"
BOT_TOKEN = "xoxb-approvals-secret-token-7"
CHANNEL = "C0APPROVE1"
REQUESTER, ALICE, BOB, CAROL, MALLORY = "U0REQUEST1", "U0ALICE001", "U0BOB00001", "U0CAROL001", "U0MALLORY1"
TARGET = with_password("postgresql://app@127.0.0.1:1/budget", PASSWORD)


class Exercise:
    """An approvable kind that only counts how often it ran (thread-safe)."""

    def __init__(self, outcome: Outcome | None = None, raises: Exception | None = None):
        self.outcome = outcome or Outcome(True, "exercised", {"rows": 3})
        self.raises = raises
        self.runs: list[str] = []
        self._lock = threading.Lock()

    def execute(self, request: ApprovalRequest) -> Outcome:
        with self._lock:
            self.runs.append(request.id)
        if self.raises is not None:
            raise self.raises
        return self.outcome

    def kind(self) -> ApprovalKind:
        return ApprovalKind(
            "exercise", "Exercise", self.execute,
            summary=lambda r: f"exercise {r.params['what']}",
            describe=lambda r: [blocks.section(f"Will exercise {blocks.code(r.params['what'])}")],
            result_blocks=lambda r: [blocks.section(f"rows after: {(r.result or {}).get('rows')}")])


@dataclass
class Bot:
    runtime: Runtime
    server: Any
    slack: LocalSlack
    exercise: Exercise

    @property
    def service(self) -> ApprovalService:
        return self.runtime.flows.approvals

    def ask(self, *, requester: str = REQUESTER, environment: str = "production", what: str = "the tables",
            **kwargs: Any) -> ApprovalRequest:
        return self.service.request("exercise", environment, requester, {"what": what}, **kwargs)

    def click(self, request: ApprovalRequest, user: str, action: str = ACTION_APPROVE, *, value: str | None = None,
              message_ts: str | None = None, channel: str | None = None, wait: bool = True):
        body = block_actions_body(action, request.id if value is None else value, user_id=user,
                                  channel_id=channel or request.channel,
                                  message_ts=message_ts or request.message_ts)
        before = self.audited()
        answer = signed_post(self.server.url + "/slack/events", body)
        assert answer.status == 200 and answer.body in (b"", b"{}"), answer.text   # acked, nothing else
        if wait:
            self.wait_audited(before + 1)
        return answer

    def audited(self) -> int:
        """How many events the state database holds: every approval click adds one."""
        return len(self.runtime.store.events(limit=10_000))

    def wait_audited(self, count: int, *others: "Bot") -> None:
        """Until `count` events are recorded (the ack returns before the click is even submitted),
        then until this bot's (and `others`') executors are idle."""
        wait_for(lambda: self.audited() >= count, timeout=30, what=f"{count} audit events")
        for bot in (self, *others):
            assert bot.runtime.flows.wait_idle(timeout=60)

    def get(self, request: ApprovalRequest) -> ApprovalRequest:
        return self.service.requests.get(request.id)

    def message(self, request: ApprovalRequest):
        return self.slack.message(request.channel, request.message_ts)

    def ephemerals(self, user: str) -> list[str]:
        return [m.text for m in self.slack.messages(kind="ephemeral") if m.user == user]

    def events(self, request: ApprovalRequest) -> list[tuple[str, str, str]]:
        """(actor, action, outcome) of the request's audit events, oldest first."""
        return [(e.actor, e.action, e.outcome) for e in reversed(self.runtime.store.events(limit=500))
                if e.run_id == request.id]


def _buttons(message) -> list[dict]:
    return [e for b in message.blocks if b["type"] == "actions" for e in b["elements"]]


@pytest.fixture
def slack(local_slack):
    return local_slack


@pytest.fixture
def make_bot(tmp_path, slack):
    """make_bot(approvers=..., production=..., state_url=..., exercise=..., **approvals) -> a running Bot."""
    started: list[tuple[Runtime, Any]] = []

    def make(*, approvers: tuple[str, ...] = (ALICE, BOB, CAROL), production: bool = False,
             state_url: str = "sqlite:///state.db", exercise: Exercise | None = None,
             staging: bool = False, **approvals: Any) -> Bot:
        extra = "    production: true" if production else ""
        if staging:
            extra += ("\n  staging:\n    database_url: \"postgresql://app@127.0.0.1:1/staging\"\n"
                      f"    app_dir: {json.dumps(str(tmp_path))}\n"
                      f"    approvals: {json.dumps({'approvers': list(approvers)})}")
        settings = settings_for(tmp_path, TARGET, channel=CHANNEL, approvers=approvers, approvals=approvals,
                                extra_env=extra, state_url=state_url)
        runtime = Runtime.build(settings, bot_token=BOT_TOKEN, api_url=slack.url, signing_secret=SIGNING_SECRET)
        server = runtime.serve_http("127.0.0.1", 0, background=True)
        started.append((runtime, server))
        exercise = exercise or Exercise()
        runtime.flows.approvals.register(exercise.kind())
        return Bot(runtime, server, slack, exercise)

    yield make
    for runtime, server in started:
        server.close()
        runtime.close()


# --------------------------------------------------------------------------
# the request message

def test_request_posts_buttons_carrying_only_the_id(make_bot, slack):
    bot = make_bot()
    request = bot.ask(what="<!channel> & co")
    message = bot.message(request)
    assert message.channel == CHANNEL and request.state == "pending" and request.required == 1
    approve, reject = _buttons(message)
    assert (approve["action_id"], approve["value"], approve["style"]) == (ACTION_APPROVE, request.id, "primary")
    assert (reject["action_id"], reject["value"], reject["style"]) == (ACTION_REJECT, request.id, "danger")
    assert approve["confirm"]["confirm"]["text"] == "Approve" and "confirm" not in reject
    shown = json.dumps(message.blocks)
    assert f"<@{REQUESTER}>" in message.text and f"<@{REQUESTER}>" in shown      # who asked: a mention
    assert "production" in shown and "Will exercise" in shown                    # where, and what will happen
    assert "&lt;!channel&gt; &amp; co" in shown and "<!channel>" not in shown    # user text escaped
    assert f"<@{ALICE}>" in shown                                                # who may approve
    assert bot.events(request) == [(REQUESTER, "exercise", "requested")]


def test_production_needs_two_approvals_unless_configured(make_bot):
    assert make_bot(production=True).ask().required == 2
    assert make_bot(production=True, required=1).ask().required == 1
    assert make_bot().ask().required == 1


def test_a_request_nobody_could_approve_is_refused_up_front(make_bot, slack):
    with pytest.raises(ApprovalError, match=r"nobody may approve on production: set environments.production.approvals.approvers"):
        make_bot(approvers=()).ask()
    with pytest.raises(ApprovalError, match="needs 2 approvals but only 1 approver other than the requester is configured"):
        make_bot(approvers=(ALICE, REQUESTER), required=2).ask()
    assert slack.calls("chat.postMessage") == []


def test_a_request_slack_refuses_is_cancelled_and_never_runs(make_bot, slack):
    bot = make_bot()
    slack.fail_next("chat.postMessage", error="channel_not_found")
    with pytest.raises(ApprovalError, match=r"Slack refused the approval request \(channel_not_found\); nothing will run"):
        bot.ask()
    [stored] = bot.service.requests.list()
    assert stored.state == "cancelled" and stored.message_ts is None


def test_a_request_slack_cannot_be_reached_for_is_cancelled_too(make_bot, slack):
    """A network failure past the client's retries is a one-line refusal too (it used to escape as a URLError,
    leaving the request pending with no message)."""
    from bot.app import make_client

    bot = make_bot()
    with LocalSlack() as gone:
        bot.service.gateway.client = make_client(BOT_TOKEN, gone.url)     # its port closed once it stops
    with pytest.raises(ApprovalError, match=r"^Slack could not be reached for the approval request \(network error \(URLError\)\); "
                                            r"nothing will run$"):
        bot.ask()
    [stored] = bot.service.requests.list()
    assert stored.state == "cancelled" and stored.message_ts is None


# --------------------------------------------------------------------------
# approve, reject, cancel

def test_approve_runs_once_and_updates_the_message_in_place(make_bot, slack):
    bot = make_bot()
    request = bot.ask()
    bot.click(request, ALICE)
    final = bot.get(request)
    assert final.state == "done" and final.approvers == [ALICE] and final.result == {"rows": 3}
    assert bot.exercise.runs == [request.id]
    message = bot.message(request)
    assert _buttons(message) == []                                   # buttons gone once decided
    assert "Exercise production: done" in message.text
    shown = json.dumps(message.blocks)
    assert "exercised" in shown and "rows after: 3" in shown and f"<@{ALICE}>" in shown
    # updated in place: approved -> running -> done, all on the one message
    states = [v["text"].split(":")[1].split("—")[0].strip() for v in message.versions[1:]] + ["done"]
    assert states == ["approved, starting", "running", "done"]
    assert len(slack.messages(kind="message")) == 2                  # the request and one thread reply
    reply = slack.messages(kind="message")[-1]
    assert reply.thread_ts == request.message_ts and f"<@{REQUESTER}>" in reply.text and "done" in reply.text
    assert bot.events(request) == [(REQUESTER, "exercise", "requested"), (ALICE, "approve", "approved"),
                                   (REQUESTER, "exercise", "ok")]


def test_reject_stops_the_request_and_later_clicks_are_refused(make_bot, slack):
    bot = make_bot()
    request = bot.ask()
    bot.click(request, BOB, ACTION_REJECT)
    assert bot.get(request).state == "rejected" and bot.get(request).rejected_by == BOB
    message = bot.message(request)
    assert _buttons(message) == [] and f"Rejected by <@{BOB}>" in json.dumps(message.blocks)
    bot.click(request, ALICE)
    assert bot.ephemerals(ALICE) == [":warning: This request is already rejected; nothing was changed."]
    assert bot.exercise.runs == [] and bot.get(request).state == "rejected"
    assert bot.events(request)[1:] == [(BOB, "reject", "rejected"), (ALICE, "approve", "closed")]


def test_the_requesters_reject_withdraws_the_request(make_bot):
    bot = make_bot()
    request = bot.ask()
    bot.click(request, REQUESTER, ACTION_REJECT)
    assert bot.get(request).state == "cancelled" and bot.get(request).decisions == ()
    assert "Cancelled" in json.dumps(bot.message(request).blocks) and _buttons(bot.message(request)) == []
    assert bot.exercise.runs == []


def test_a_failing_execution_is_reported_without_a_trace(make_bot, slack):
    bot = make_bot(exercise=Exercise(raises=RuntimeError(f"boom with {PASSWORD}")))
    request = bot.ask()
    bot.click(request, ALICE)
    final = bot.get(request)
    assert final.state == "failed"
    assert final.result_summary == "exercise failed unexpectedly (RuntimeError); the bot's log has the details"
    assert "Failed" in json.dumps(bot.message(request).blocks)
    assert bot.events(request)[-1] == (REQUESTER, "exercise", "error")

    bot2 = make_bot(exercise=Exercise(outcome=Outcome(False, f"revision changed (password {PASSWORD})")))
    request2 = bot2.ask()
    bot2.click(request2, ALICE)
    assert bot2.get(request2).state == "failed" and bot2.get(request2).result_summary.startswith("revision changed")
    assert PASSWORD not in everything_slack_saw(slack) + json.dumps([e.summary for e in bot2.runtime.store.events()])


# --------------------------------------------------------------------------
# who may approve

def test_self_approval_is_refused(make_bot):
    bot = make_bot(approvers=(REQUESTER, ALICE))
    request = bot.ask()
    bot.click(request, REQUESTER)
    assert bot.ephemerals(REQUESTER) == [":warning: You asked for this exercise; someone else has to approve it."]
    assert bot.get(request).state == "pending" and bot.get(request).decisions == ()
    assert bot.events(request)[-1] == (REQUESTER, "approve", "self-approval")
    assert bot.exercise.runs == []


def test_self_approval_when_allowed(make_bot):
    bot = make_bot(approvers=(REQUESTER,), allow_self_approval=True)
    request = bot.ask()
    bot.click(request, REQUESTER)
    assert bot.get(request).state == "done" and bot.exercise.runs == [request.id]


def test_unauthorised_click_is_refused_with_an_ephemeral(make_bot, slack):
    bot = make_bot()
    request = bot.ask()
    bot.click(request, MALLORY)
    [refusal] = bot.ephemerals(MALLORY)
    # the approvers are real mentions, escaped once only (issue 13 §4: they showed as &lt;@U…&gt;)
    assert refusal == (f":warning: You are not an approver on production (approvers: <@{ALICE}>, <@{BOB}>, "
                       f"<@{CAROL}>); nothing was changed.")
    assert bot.get(request).state == "pending" and bot.get(request).decisions == ()
    assert bot.message(request).updates == 0
    assert bot.events(request)[-1] == (MALLORY, "approve", "unauthorised")
    bot.click(request, MALLORY, ACTION_REJECT)          # nor may they reject
    assert bot.get(request).state == "pending" and len(bot.ephemerals(MALLORY)) == 2


def test_user_group_members_may_approve(make_bot, slack):
    slack.set_usergroup("S0DBAS0001", [CAROL])
    bot = make_bot(approvers=("S0DBAS0001",))
    request = bot.ask()
    bot.click(request, MALLORY)                          # not in the group
    assert bot.get(request).state == "pending" and len(bot.ephemerals(MALLORY)) == 1
    bot.click(request, CAROL)
    assert bot.get(request).state == "done" and bot.get(request).approvers == [CAROL]
    assert [c.body["usergroup"] for c in slack.calls("usergroups.users.list")] == ["S0DBAS0001", "S0DBAS0001"]
    assert "<!subteam^S0DBAS0001>" in slack.messages(kind="message")[0].text + json.dumps(
        bot.message(request).versions[0]["blocks"])


def test_group_membership_that_cannot_be_checked_is_a_refusal(make_bot, slack):
    slack.set_usergroup("S0DBAS0001", [CAROL])
    bot = make_bot(approvers=("S0DBAS0001",))
    request = bot.ask()
    slack.fail_next("usergroups.users.list", error="missing_scope")
    bot.click(request, CAROL)
    assert bot.ephemerals(CAROL) == [":warning: Could not check membership of <!subteam^S0DBAS0001> "
                                     "(missing_scope); nothing was changed. Try again in a moment."]
    assert bot.get(request).state == "pending"
    bot.click(request, CAROL)                            # a retry works
    assert bot.get(request).state == "done"


# --------------------------------------------------------------------------
# counting

def test_required_two_needs_two_distinct_approvers_and_a_double_click_counts_once(make_bot):
    bot = make_bot(required=2)
    request = bot.ask()
    bot.click(request, ALICE)
    bot.click(request, ALICE)                            # double click
    assert bot.get(request).state == "pending" and bot.get(request).approvers == [ALICE]
    assert bot.ephemerals(ALICE) == [":warning: You have already decided on this request; "
                                     "a second click counts for nothing."]
    assert "1 of 2" in json.dumps(bot.message(request).blocks)
    assert _buttons(bot.message(request))                # still open
    bot.click(request, BOB)
    assert bot.get(request).state == "done" and bot.get(request).approvers == [ALICE, BOB]
    assert bot.exercise.runs == [request.id]
    assert [o for _, a, o in bot.events(request) if a == "approve"] == ["counted", "duplicate", "approved"]


def test_simultaneous_double_clicks_count_once(make_bot):
    bot = make_bot(required=2)
    request = bot.ask()
    before = bot.audited()
    with ThreadPoolExecutor(max_workers=6) as pool:
        list(pool.map(lambda _: bot.click(request, ALICE, wait=False), range(6)))
    bot.wait_audited(before + 6)
    assert bot.get(request).approvers == [ALICE] and bot.get(request).state == "pending"
    assert len(bot.ephemerals(ALICE)) == 5 and bot.exercise.runs == []


def test_concurrent_clicks_on_two_instances_execute_exactly_once(make_bot, pg_url):
    """Two Runtimes, each behind its own HTTP server, one PostgreSQL state database."""
    exercise = Exercise()
    first = make_bot(state_url=pg_url, exercise=exercise)
    second = make_bot(state_url=pg_url, exercise=exercise)
    for _ in range(3):
        request = first.ask()
        before = first.audited()
        clicks = [(bot, user) for user in (ALICE, BOB, CAROL) for bot in (first, second)]
        barrier = threading.Barrier(len(clicks))

        def click(pair):
            bot, user = pair
            barrier.wait()
            bot.click(request, user, wait=False)

        with ThreadPoolExecutor(max_workers=len(clicks)) as pool:
            list(pool.map(click, clicks))
        first.wait_audited(before + len(clicks) + 1, second)      # the clicks, and the execution's event
        final = second.get(request)
        assert final.state == "done", (first.events(request), first.slack.messages(kind="ephemeral"))
        assert exercise.runs.count(request.id) == 1
        outcomes = [o for _, a, o in first.events(request) if a == "approve"]
        assert outcomes.count("approved") == 1 and len(outcomes) == 6
        assert [o for _, a, o in first.events(request) if a == "exercise"] == ["requested", "ok"]
        assert "done" in first.message(request).text and _buttons(first.message(request)) == []


def test_a_transition_has_one_winner_under_contention(pg_url):
    """The state machine itself, hammered from threads on PostgreSQL: one winner per transition."""
    store = Store(pg_url)
    store.migrate()
    requests = ApprovalStore(store)
    try:
        from runbook.state.models import utcnow

        request = requests.create(kind="exercise", environment="production", requester=REQUESTER, params={},
                                  required=2, expires_at=utcnow() + timedelta(minutes=5))
        barrier = threading.Barrier(8)

        def approve(user: str) -> tuple[str, bool]:
            barrier.wait()
            added = requests.add_decision(request.id, user, "approve")
            won = added == "added" and requests.approval_count(request.id) >= 2 and \
                requests.transition(request.id, ["pending"], "approved")
            return added, won

        users = [ALICE, ALICE, BOB, BOB, CAROL, CAROL, MALLORY, MALLORY]
        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(approve, users))
        assert sum(won for _, won in results) == 1
        assert [added for added, _ in results].count("duplicate") + [a for a, _ in results].count("closed") >= 4
        assert requests.get(request.id).state == "approved"
    finally:
        store.close()


# --------------------------------------------------------------------------
# expiry

def test_expired_request_is_swept_and_later_clicks_refused(make_bot):
    bot = make_bot()
    request = bot.ask(expires_in=timedelta(seconds=-1))
    live = bot.ask(what="the other tables")
    assert bot.service.expire_due() == [request.id]
    assert bot.service.expire_due() == []                # once
    assert bot.get(request).state == "expired" and bot.get(live).state == "pending"
    message = bot.message(request)
    assert _buttons(message) == [] and "expired" in message.text and "Expired" in json.dumps(message.blocks)
    bot.click(request, ALICE)
    [refusal] = bot.ephemerals(ALICE)
    assert "This request is already expired; nothing was changed." in refusal
    assert bot.exercise.runs == []
    assert bot.events(request)[1:] == [("runbook-bot", "expire", "expired"), (ALICE, "approve", "closed")]


def test_a_click_after_the_expiry_time_expires_the_request(make_bot):
    bot = make_bot()
    request = bot.ask(expires_in=timedelta(seconds=-1))   # not swept yet
    bot.click(request, ALICE)
    [refusal] = bot.ephemerals(ALICE)
    assert refusal.startswith(":warning: This request expired at ") and "Ask again with `/migrate exercise" in refusal
    assert bot.get(request).state == "expired" and bot.get(request).decisions == ()
    assert _buttons(bot.message(request)) == [] and bot.exercise.runs == []


# --------------------------------------------------------------------------
# malformed and forged buttons

@pytest.mark.parametrize("case, expected", [
    ("unknown action", "That button is not one the bot knows; nothing was changed."),
    ("garbage value", "That button does not carry an approval request id; nothing was changed."),
    ("huge value", "That button does not carry an approval request id; nothing was changed."),
    ("unknown id", "That approval request does not exist; nothing was changed."),
    ("another environment's request", "That button does not belong to this request's message; nothing was changed."),
    ("another message", "That button does not belong to this request's message; nothing was changed."),
    ("another channel", "That button does not belong to this request's message; nothing was changed."),
])
def test_malformed_or_forged_buttons_change_nothing(make_bot, slack, case, expected):
    bot = make_bot(staging=True)
    request = bot.ask()
    other = bot.ask(environment="staging")
    value, action, ts, channel = None, ACTION_APPROVE, None, None
    if case == "unknown action":
        action = "approval_delete_everything"
    elif case == "garbage value":
        value = "'; DROP TABLE approvals; --"
    elif case == "huge value":
        value = "x" * 5000
    elif case == "unknown id":
        value = "0" * 32
    elif case == "another environment's request":
        value = other.id                                    # clicked on production's message
    elif case == "another message":
        ts = "1700000000.000999"
    elif case == "another channel":
        channel = "C0ELSEWHERE"
        slack.join(channel)                                 # a click comes from a channel the bot is in
    before = slack.methods().count("chat.update")
    bot.click(request, ALICE, action, value=value, message_ts=ts, channel=channel)
    [refusal] = [m for m in slack.messages(kind="ephemeral") if m.user == ALICE]
    assert refusal.text == f":warning: {expected}"
    assert (bot.get(request).state, bot.get(other).state) == ("pending", "pending")
    assert bot.get(request).decisions == () and bot.get(other).decisions == ()
    assert slack.methods().count("chat.update") == before and bot.exercise.runs == []
    [audit] = [e for e in bot.runtime.store.events() if e.actor == ALICE]
    assert audit.outcome == "invalid" and audit.details["reason"] == expected


def test_approval_buttons_are_handled_before_the_fallback(make_bot, slack):
    """An action id outside the approval namespace still reaches the catch-all (acked, logged)."""
    bot = make_bot()
    request = bot.ask()
    bot.click(request, ALICE, "something_else", wait=False)     # nothing to wait for: no handler acts
    bot.click(request, ALICE, ACTION_REJECT)                    # the next click is decided normally
    assert bot.ephemerals(ALICE) == [] and bot.get(request).state == "rejected"
    assert [o for _, a, o in bot.events(request)] == ["requested", "rejected"]


# --------------------------------------------------------------------------
# the CLI's --yes

def test_cli_yes_is_an_audited_approval_executed_at_once(tmp_path, slack):
    settings = settings_for(tmp_path, TARGET, channel=CHANNEL)
    store = Store(settings.state_url)
    store.migrate()
    exercise = Exercise()
    service = ApprovalService(settings, store, None, redactor=Redactor(settings))
    service.register(exercise.kind())
    try:
        final = service.run_confirmed("exercise", "production", "cli:ops", {"what": "the tables"})
        assert final.state == "done" and exercise.runs == [final.id]
        assert [(d.approver, d.decision) for d in final.decisions] == [("cli:ops", "yes")]
        assert final.requester == "cli:ops" and final.result == {"rows": 3}
        events = [(e.actor, e.action, e.outcome, e.details.get("via")) for e in reversed(store.events())]
        assert events == [("cli:ops", "exercise", "approved", "--yes"), ("cli:ops", "exercise", "ok", None)]
        assert slack.calls() == []
        with pytest.raises(ApprovalError, match="unknown environment 'staging'"):
            service.run_confirmed("exercise", "staging", "cli:ops", {"what": "x"})
        with pytest.raises(ApprovalError, match="the bot has no approval kind 'drop'"):
            service.run_confirmed("drop", "production", "cli:ops", {})
    finally:
        store.close()


# --------------------------------------------------------------------------
# secrets

def everything_slack_saw(slack) -> str:
    return "\n".join(json.dumps(c.body, default=str) + c.raw.decode("utf-8", "replace") for c in slack.calls())


def test_no_password_or_token_in_messages_events_or_logs(make_bot, slack, log_lines):
    leaky = Exercise(outcome=Outcome(True, f"connected to {TARGET}", {"dsn": TARGET, "note": BOT_TOKEN}))
    bot = make_bot(exercise=leaky)
    request = bot.ask(what=f"postgresql://app:{PASSWORD}@db/x")
    bot.click(request, MALLORY)
    bot.click(request, ALICE)
    assert bot.get(request).state == "done"
    stored = json.dumps([bot.get(request).params, bot.get(request).result, bot.get(request).result_summary]
                        + [[e.summary, e.details] for e in bot.runtime.store.events()])
    seen = everything_slack_saw(slack) + log_lines.getvalue() + stored
    assert PASSWORD not in seen and BOT_TOKEN not in seen


def test_the_scheduler_sweeps_expired_requests(make_bot):
    """serve() starts the scheduler; its approvals-expiry job is expire_due (run here by hand, no waiting)."""
    bot = make_bot()
    request = bot.ask(expires_in=timedelta(seconds=-1))
    bot.runtime.start_scheduler()
    [job] = [j for j in bot.runtime.scheduler.jobs() if j.id == "approvals-expiry"]
    assert job.trigger.interval == timedelta(seconds=30)
    job.func()
    assert bot.get(request).state == "expired" and _buttons(bot.message(request)) == []


@pytest.mark.parametrize("approvals, expected", [
    ({"required": 0}, "environments.production.approvals.required: Input should be greater than or equal to 1"),
    ({"required": "two"}, "environments.production.approvals.required: Input should be a valid integer"),
    ({"allow_self_aproval": True}, "environments.production.approvals.allow_self_aproval: unknown key"),
    ({"expire_minutes": 0}, "environments.production.approvals.expire_minutes: Input should be greater than or equal to 1"),
])
def test_bad_approvals_config_is_one_line(tmp_path, approvals, expected):
    from runbook.config import ConfigError

    with pytest.raises(ConfigError) as caught:
        settings_for(tmp_path, TARGET, approvals=approvals)
    assert expected in str(caught.value) and "\n" not in str(caught.value) and PASSWORD not in str(caught.value)


def test_a_click_is_acked_before_any_web_api_call_and_decided_on_the_executor(make_bot, slack):
    slack.set_usergroup("S0DBAS0001", [CAROL])
    bot = make_bot(approvers=("S0DBAS0001",))
    request = bot.ask()
    submitted: list[tuple[float, str]] = []
    decided: list[str] = []
    flows = bot.runtime.flows
    real_submit, real_handle = flows.submit_click, flows.approvals.handle_click

    def submit_click(click):
        submitted.append((time.monotonic(), threading.current_thread().name))
        return real_submit(click)

    def handle_click(click):
        decided.append(threading.current_thread().name)
        return real_handle(click)

    flows.submit_click, flows.approvals.handle_click = submit_click, handle_click
    calls_before = len(slack.calls())
    answer = bot.click(request, CAROL)
    assert answer.elapsed < 1.0
    [(at, listener_thread)] = submitted
    assert listener_thread.startswith("slack-listener")          # Bolt's sized pool, not the request thread
    assert decided == [decided[0]] and decided[0].startswith("runbook-flow")  # our executor decides
    click_calls = slack.calls()[calls_before:]
    assert [c.method for c in click_calls][:1] == ["usergroups.users.list"]
    assert all(c.at >= at for c in click_calls)                   # no Web API call before the hand-off
    assert bot.get(request).state == "done"


def test_a_click_that_fails_inside_is_audited_and_answered_without_a_trace(make_bot, slack, monkeypatch):
    bot = make_bot()
    request = bot.ask()

    def broken(*_args, **_kwargs):
        raise RuntimeError(f"state database exploded ({PASSWORD})")

    monkeypatch.setattr(bot.service.requests, "add_decision", broken)
    bot.click(request, ALICE)
    assert bot.ephemerals(ALICE) == [":warning: Your click could not be handled (the bot's log has the details); "
                                     "check the request message, then try again."]
    assert bot.events(request)[-1] == (ALICE, "approve", "error")
    assert bot.get(request).state == "pending" and bot.exercise.runs == []
    monkeypatch.undo()
    bot.click(request, ALICE)                                    # the next click works
    assert bot.get(request).state == "done"
    assert PASSWORD not in everything_slack_saw(slack)
