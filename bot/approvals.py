"""Approvals: request, approve, reject, expire; who may approve (design rules 3–6).

Generic over what is being approved. A kind (restore now; migrate and rollback next) is
registered once with `ApprovalService.register(ApprovalKind(...))`: its name, how its request
and result look (Block Kit), and the callback that executes it after the final approval.
The service does the rest the same way for every kind:

- `request(kind, environment, requester, params)` stores the request (state DB), posts it
  with Approve/Reject buttons whose value is only the request's opaque id, and keeps the
  message's channel and ts so any replica can `chat.update` it later;
- `handle_click(click)` (on Flows' executor, after the listener acked) re-loads the request,
  checks the click belongs to that message, authorises the clicker on the server (configured
  user IDs and user groups via `usergroups.users.list`, no self-approval unless allowed),
  records the decision once per person, and moves the state with conditional UPDATEs: only
  the click that completes `required` approvals wins and submits the execution;
- `expire_due()` (called by the scheduler) and a check at click time expire old requests;
- `run_confirmed(...)` is the CLI's `--yes`: an approved request recorded with the CLI
  user's decision, executed at once, with the same audit trail.

Every click, accepted or not, is an event in the audit table; a refused click also gets a
one-line ephemeral reply and changes nothing.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Callable, Mapping, Protocol

from bot import blocks
from bot.gateway import SlackFailure, SlackGateway
from runbook import authz
from runbook.config import ConfigError, Settings
from runbook.state import StateError, Store
from runbook.state.approvals import (
    APPROVE,
    APPROVED,
    CANCELLED,
    DONE,
    EXECUTING,
    EXPIRED,
    FAILED,
    ID_PATTERN,
    PENDING,
    REJECT,
    REJECTED,
    ApprovalRequest,
    ApprovalStore,
)
from runbook.state.models import utcnow
from runbook.state.runs import SUCCEEDED

log = logging.getLogger(__name__)

ACTION_APPROVE = "approval_approve"
ACTION_REJECT = "approval_reject"
# Every approval button's action_id starts so; bot/app.py routes them all here, known or not.
ACTION_PATTERN = re.compile(r"^approval_")
_DECISION_OF_ACTION = {ACTION_APPROVE: APPROVE, ACTION_REJECT: REJECT}
_REQUEST_ID = re.compile(ID_PATTERN)
_SLACK_ID = re.compile(r"^[A-Z0-9]{2,40}$")
_TS = re.compile(r"^\d{1,12}\.\d{1,8}$")


class ApprovalError(Exception):
    """A request that cannot be made; one line for the requester."""


class Refusal(Exception):
    """A click that changes nothing; one line for the clicker, and the audit outcome. `text` keeps
    a blocks.Mrkdwn line as it is (its mentions shown as mentions); str() of it is plain."""

    def __init__(self, text: str, outcome: str = "refused"):
        super().__init__(text)
        self.text = text
        self.outcome = outcome


@dataclass(frozen=True)
class Outcome:
    """What an executor reports: ok or not, one line, and facts for the result renderer."""

    ok: bool
    summary: str
    details: dict[str, Any] = field(default_factory=dict)


def _no_blocks(_request: ApprovalRequest) -> list[dict[str, Any]]:
    return []


@dataclass(frozen=True)
class ApprovalKind:
    """One kind of approvable action.

    - `execute(request) -> Outcome` runs on Flows' executor (or in the CLI process for
      `--yes`) once the request is approved; it may raise, and the request is then failed;
    - `command` the `/migrate` action that asks for it (default: the kind's name);
    - `summary(request)` one line: the text fallback, the confirm dialog, the audit event;
    - `describe(request)` blocks saying what will happen (from `request.params`, which hold
      the facts captured when it was requested);
    - `result_blocks(request)` blocks for `request.result` once done or failed;
    - `on_failed(request)` what a failed execution triggers (restore: the level-2 escalation).
    """

    name: str
    title: str
    execute: Callable[[ApprovalRequest], Outcome]
    command: str = ""
    summary: Callable[[ApprovalRequest], str] = lambda r: f"{r.kind} on {r.environment}"
    describe: Callable[[ApprovalRequest], list[dict[str, Any]]] = _no_blocks
    result_blocks: Callable[[ApprovalRequest], list[dict[str, Any]]] = _no_blocks
    # called with the final request when its execution failed, after the result is announced
    on_failed: Callable[[ApprovalRequest], Any] | None = None
    # the `/migrate ...` that asks for the same again (shown when it never started); default
    # `/migrate <command> <environment>`
    ask_again: Callable[[ApprovalRequest], str] | None = None
    # what a request ends with, made from its finished run's row (runbook.state.runs.Run) when the process
    # that ran it died before saying so (close_left_after_run); default: the run's own summary
    outcome_of_run: Callable[[Any], Outcome] | None = None


def _short(value: Any, limit: int) -> str | None:
    return value[:limit] if isinstance(value, str) and value else None


@dataclass(frozen=True)
class Click:
    """The parts of a block_actions payload the service needs; parsed without any I/O."""

    action_id: str
    value: str
    user_id: str
    channel_id: str | None
    message_ts: str | None
    response_url: str | None = None

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> "Click":
        action = (body.get("actions") or [{}])[0] if isinstance(body.get("actions"), list) else {}
        action = action if isinstance(action, Mapping) else {}
        user = body.get("user") if isinstance(body.get("user"), Mapping) else {}
        channel = body.get("channel") if isinstance(body.get("channel"), Mapping) else {}
        container = body.get("container") if isinstance(body.get("container"), Mapping) else {}
        message = body.get("message") if isinstance(body.get("message"), Mapping) else {}
        return cls(action_id=_short(action.get("action_id"), 255) or "",
                   value=_short(action.get("value"), 100) or "",
                   user_id=_short(user.get("id"), 40) or "",
                   channel_id=_short(channel.get("id") or container.get("channel_id"), 40),
                   message_ts=_short(container.get("message_ts") or message.get("ts"), 40),
                   response_url=_short(body.get("response_url"), 2000))


Submit = Callable[..., Any]


class RedactorLike(Protocol):
    """bot.redaction.Redactor: every secret the bot knows, removed from texts, trees and messages."""

    def __call__(self, text: str) -> str: ...

    def tree(self, node: Any) -> Any: ...

    def message(self, message: blocks.Message) -> blocks.Message: ...


class ApprovalService:
    """Approvals for every kind; no state in the process beyond the kinds registered at start."""

    def __init__(self, settings: Settings, store: Store, client: Any, *, redactor: RedactorLike,
                 submit: Submit | None = None, user_errors: tuple[type[BaseException], ...] = (),
                 clock: Callable[[], datetime] = utcnow):
        """`submit(fn, *args)` schedules work on Flows' executor; without it (the CLI) work runs inline.
        `user_errors`: exception types whose text is meant for users (one line, shown as the failure)."""
        self.settings = settings
        self.store = store
        self.requests = ApprovalStore(store)
        self.redactor = redactor
        # its own gateway: a rate limit on an approval message does not hold up Flows' run monitors
        self.gateway = SlackGateway(client, redactor) if client is not None else None
        self._submit = submit
        self._user_errors = (ConfigError, StateError, ApprovalError) + tuple(user_errors)
        self._clock = clock
        self._kinds: dict[str, ApprovalKind] = {}

    # -- kinds ------------------------------------------------------------------------------

    def register(self, kind: ApprovalKind) -> None:
        if not re.fullmatch(r"[a-z][a-z0-9_-]{0,19}", kind.name):
            raise ValueError(f"approval kind name {kind.name!r} must be 1-20 lower-case characters")
        self._kinds[kind.name] = kind

    def kind(self, name: str) -> ApprovalKind:
        if name not in self._kinds:
            raise ApprovalError(f"the bot has no approval kind '{name}'")
        return self._kinds[name]

    # -- asking -----------------------------------------------------------------------------

    def request(self, kind: str, environment: str, requester: str, params: dict[str, Any], *,
                channel: str | None = None, expires_in: timedelta | None = None) -> ApprovalRequest:
        """Store and post a request for approval. `channel` is used only when `slack.channel`
        is not configured. `expires_in` overrides approvals.expire_minutes (a past time is allowed:
        the tests use it)."""
        self.kind(kind)  # registered, or ApprovalError
        env = self._environment(environment)
        required = env.required_approvals
        self._check_approvers_suffice(environment, requester, required)
        target = self.settings.slack.channel if self.settings.slack is not None else channel
        if not target:
            raise ApprovalError("approval requests need a channel: set slack.channel in the configuration")
        expires_at = self._clock() + (expires_in if expires_in is not None
                                      else timedelta(minutes=env.approvals.expire_minutes))
        request = self.requests.create(kind=kind, environment=environment, requester=requester,
                                       params=self.redactor.tree(params), required=required, expires_at=expires_at)
        posted = self.gateway.post(target, self.render(request)) if self.gateway is not None else None
        if posted is None or posted.failure is not None:
            reason = self.redactor(str(posted.failure if posted is not None else "no Slack client"))
            self.requests.transition(request.id, [PENDING], CANCELLED,
                                     result_summary=f"the request could not be posted ({reason})")
            log.error("approval request %s could not be posted: %s", request.id, reason)
            refused = posted is None or posted.failure.answered
            raise ApprovalError(f"{'Slack refused' if refused else 'Slack could not be reached for'} the approval "
                                f"request ({reason}); nothing will run")
        self.requests.set_message(request.id, posted.channel, posted.ts, rendered_at=request.updated_at)
        self._audit(requester, kind, environment, "requested", self.summary(request), request,
                    {"required": required, "expires_at": expires_at.isoformat()})
        return self.requests.get(request.id)  # type: ignore[return-value]

    def _environment(self, name: str):
        if name not in self.settings.environments:
            raise ApprovalError(f"unknown environment '{name}'")
        return self.settings.environments[name]

    def _check_approvers_suffice(self, environment: str, requester: str, required: int) -> None:
        """Refuse up front a request nobody could ever complete."""
        approvals = self.settings.environments[environment].approvals
        key = f"environments.{environment}.approvals"
        if not approvals.approvers:
            raise ApprovalError(f"nobody may approve on {environment}: set {key}.approvers "
                                "(Slack user IDs U… or user-group IDs S…)")
        if any(a.startswith("S") for a in approvals.approvers):
            return  # group sizes are only known at click time
        eligible = {a for a in approvals.approvers if approvals.allow_self_approval or a != requester}
        if len(eligible) < required:
            who = "approver" + ("s" if len(eligible) != 1 else "")
            besides = "" if approvals.allow_self_approval else " other than the requester"
            raise ApprovalError(f"{environment} needs {required} approvals but only {len(eligible)} {who}{besides} "
                                f"{'are' if len(eligible) != 1 else 'is'} configured: add to {key}.approvers "
                                f"or lower {key}.required")

    # -- clicks -----------------------------------------------------------------------------

    def handle_click(self, click: Click) -> str:
        """Decide one Approve/Reject click. Runs on Flows' executor. Returns the audit outcome."""
        request: ApprovalRequest | None = None
        decision = _DECISION_OF_ACTION.get(click.action_id, "click")
        try:
            request = self._request_of(click)
            return self._decide(request, click, decision)
        except Refusal as refusal:
            facts = {"reason": str(refusal)}
            if request is None and _REQUEST_ID.match(click.value):
                facts["button_value"] = click.value    # which request a forged or stale button named
            self._audit(click.user_id or "unknown", decision, request.environment if request else None,
                        refusal.outcome, str(refusal), request, facts)
            self._ephemeral(click, refusal.text)
            return refusal.outcome
        except Exception as exc:
            log.error("approval click failed: %s", self.redactor(repr(exc)))
            self._audit(click.user_id or "unknown", decision, request.environment if request else None, "error",
                        f"the click failed ({type(exc).__name__})", request, None)
            self._ephemeral(click, "Your click could not be handled (the bot's log has the details); "
                                   "check the request message, then try again.")
            return "error"

    def _request_of(self, click: Click) -> ApprovalRequest:
        nothing = "nothing was changed"
        if click.action_id not in _DECISION_OF_ACTION:
            raise Refusal(f"That button is not one the bot knows; {nothing}.", "invalid")
        if not _SLACK_ID.match(click.user_id):
            raise Refusal(f"That click carries no Slack user; {nothing}.", "invalid")
        if not _REQUEST_ID.match(click.value):
            raise Refusal(f"That button does not carry an approval request id; {nothing}.", "invalid")
        request = self.requests.get(click.value)
        if request is None:
            raise Refusal(f"That approval request does not exist; {nothing}.", "invalid")
        if (click.channel_id, click.message_ts) != (request.channel, request.message_ts):
            # a value copied from another request (another environment, another message)
            raise Refusal(f"That button does not belong to this request's message; {nothing}.", "invalid")
        if request.kind not in self._kinds or request.environment not in self.settings.environments:
            raise Refusal(f"This bot can no longer run that request ({request.kind} on {request.environment}); "
                          f"{nothing}.", "invalid")
        return request

    def _decide(self, request: ApprovalRequest, click: Click, decision: str) -> str:
        now = self._clock()
        if request.is_due(now):
            self._expire(request.id, now)
            raise Refusal(self._expired_text(request), "expired")
        if request.state != PENDING:
            raise Refusal(f"This request is already {request.state}; nothing was changed.", "closed")
        if decision == REJECT and click.user_id == request.requester:
            return self._cancel(request, click)
        self._authorise(request, click.user_id)
        added = self.requests.add_decision(request.id, click.user_id, decision)
        if added == "duplicate":
            raise Refusal("You have already decided on this request; a second click counts for nothing.",
                          "duplicate")
        if added == "closed":
            latest = self.requests.get(request.id)
            raise Refusal(f"This request is already {latest.state if latest else 'gone'}; nothing was changed.",
                          "closed")
        if decision == REJECT:
            won = self.requests.transition(request.id, [PENDING], REJECTED)
            return self._after(request, click, decision, "rejected" if won else "closed")
        count = self.requests.approval_count(request.id)
        if count < request.required:
            return self._after(request, click, decision, "counted", {"approvals": count})
        if self.requests.transition(request.id, [PENDING], APPROVED, unexpired_at=now, hold=True):
            outcome = self._after(request, click, decision, "approved", {"approvals": count})
            if not self._run_later(request.id):
                raise Refusal(self._busy_text(request), "busy")
            return outcome
        latest = self.requests.get(request.id)
        if latest is not None and latest.is_due(now):
            self._expire(request.id, now)
            raise Refusal(self._expired_text(request), "expired")
        # another click (here or on another replica) completed it first; that one acts
        return self._after(request, click, decision, "counted", {"approvals": count})

    def _after(self, request: ApprovalRequest, click: Click, decision: str, outcome: str,
               details: dict[str, Any] | None = None) -> str:
        self._audit(click.user_id, decision, request.environment, outcome,
                    f"{decision} {self.summary(request)}", request, details)
        self.sync_message(request.id)
        return outcome

    def _cancel(self, request: ApprovalRequest, click: Click) -> str:
        """The requester's own Reject withdraws the request."""
        won = self.requests.transition(request.id, [PENDING], CANCELLED,
                                       result_summary="withdrawn by the requester")
        if not won:
            latest = self.requests.get(request.id)
            raise Refusal(f"This request is already {latest.state if latest else 'gone'}; nothing was changed.",
                          "closed")
        return self._after(request, click, REJECT, "cancelled")

    def _authorise(self, request: ApprovalRequest, user_id: str) -> None:
        approvals = self.settings.environments[request.environment].approvals
        if user_id == request.requester and not approvals.allow_self_approval:
            spec = self._kinds.get(request.kind)
            what = spec.title.lower() if spec is not None else request.kind
            raise Refusal(f"You asked for this {what}; someone else has to approve it.", "self-approval")
        if self.is_approver(request.environment, user_id):
            return
        raise Refusal(blocks.mrkdwn("You are not an approver on {} (approvers: {}); nothing was changed.",
                                    request.environment, blocks.mentions(approvals.approvers)), "unauthorised")

    def is_approver(self, environment: str, user_id: str) -> bool:
        """Whether `user_id` is one of the environment's approvers, directly or through a user group
        (Refusal "unverifiable" when Slack cannot say who is in a group)."""
        return authz.listed(user_id, self.settings.environments[environment].approvals.approvers,
                            self.group_members)

    def group_members(self, group: str) -> list[str]:
        """Asked on every click that needs it, so a removal from the group counts at once."""
        members = self.gateway.group_members(group) if self.gateway is not None else SlackFailure("no Slack client")
        if isinstance(members, SlackFailure):
            raise Refusal(blocks.mrkdwn("Could not check membership of {} ({}); nothing was changed. "
                                        "Try again in a moment.", blocks.mention(group), str(members)),
                          "unverifiable")
        return members

    # -- expiry -----------------------------------------------------------------------------

    def expire_due(self) -> list[str]:
        """Expire every pending request past its time; returns the ids this call expired.

        The scheduler calls it on every replica; each request is expired (and its message
        updated) by exactly one of them."""
        now = self._clock()
        return [request_id for request_id in self.requests.due_for_expiry(now) if self._expire(request_id, now)]

    def _expire(self, request_id: str, now: datetime) -> bool:
        if not self.requests.transition(request_id, [PENDING], EXPIRED,
                                        result_summary="expired before enough approvals"):
            return False
        request = self.requests.get(request_id)
        if request is not None:
            self._audit("runbook-bot", "expire", request.environment, "expired", f"expired: {self.summary(request)}",
                        request, None)
        self.sync_message(request_id)
        return True

    def _expired_text(self, request: ApprovalRequest) -> str:
        spec = self._kinds.get(request.kind)
        command = (spec.command if spec is not None else "") or request.kind
        return (f"This request expired at {request.expires_at:%Y-%m-%d %H:%M} UTC; nothing was changed. "
                f"Ask again with `/migrate {command} {request.environment} …`.")

    # -- execution --------------------------------------------------------------------------

    def _run_later(self, request_id: str) -> bool:
        """Hand the approved request to the executor. False when the executor would not take it (its
        queue is full: bot.flows.Busy): the request is then closed as never started, its message says
        so, and the approval does not hang as "approved, starting" (issue 13 §3)."""
        if self._submit is None:
            self.execute(request_id)
            return True
        try:
            self._submit(self.execute, request_id)
            return True
        except Exception as exc:
            log.warning("approved request %s could not be queued: %s", request_id, self.redactor(str(exc)))
            request = self.requests.get(request_id)
            if request is not None and self.requests.close_not_started(
                    request, f"the bot was too busy to start it ({blocks.one_line(str(exc), 200)})", outcome="busy"):
                self.sync_message(request_id)
            return False

    def _busy_text(self, request: ApprovalRequest) -> str:
        return (f"Your approval was counted, but the bot was too busy to start the {self._title(request)}: "
                f"nothing ran and the request is closed. Ask again in a minute with `{self.ask_again(request)}`.")

    def close_not_started(self) -> list[str]:
        """Approved requests whose execution never started and never will (the process holding them
        died, runbook.state.approvals.ApprovalStore.reap_not_started decides): closed, each message
        updated in place once (what happened, how to ask again, no buttons). Returns their ids."""
        return self._closed(self.requests.reap_not_started(self._kinds))

    def close_left_after_run(self, after_failed_run: Callable[[str, tuple[str, str] | None], Any] | None = None,
                             *, incident_posted: Callable[[str], bool] = lambda _run_id: False) -> list[str]:
        """Executing requests whose run finished while the process holding them died before closing them
        (runbook.state.approvals.ApprovalStore.left_after_run decides): closed as the run ended, once (a
        conditional UPDATE: replicas racing change it once), with the result and summary the kind makes of
        the run, one event, the message updated in place and the result in its thread. A failed one gets
        its follow-up unless the dead process posted it (`incident_posted(run_id)`): the kind's on_failed,
        else `after_failed_run(run_id, (channel, ts))`. Returns their ids."""
        closed = []
        for request, run in self.requests.left_after_run(self._kinds):
            spec = self._kinds[request.kind]
            outcome = (self._safely(spec.outcome_of_run, run, None) if spec.outcome_of_run is not None else None) \
                or Outcome(run.state == SUCCEEDED, run.summary or run.state, {"run_id": run.id, "outcome": run.state})
            summary = self.redactor(outcome.summary)
            if not self.requests.close_after_run(request, run, result=self.redactor.tree(outcome.details),
                                                 result_summary=summary):
                continue
            log.warning("%s request %s on %s: its run %s ended %s, but the process holding it (pid %s on %s) "
                        "died before closing it; closed now", request.kind, request.id, request.environment,
                        run.id, run.state, request.claimed_pid, request.claimed_host)
            self.sync_message(request.id)
            final = self.requests.get(request.id)
            self._announce(final)
            if final is not None and final.state == FAILED and not incident_posted(run.id):
                if spec.on_failed is not None:
                    self._after_failure(final)
                elif after_failed_run is not None:
                    thread = (final.channel, final.message_ts) if final.channel and final.message_ts else None
                    try:
                        after_failed_run(run.id, thread)
                    except Exception as exc:
                        log.error("after the failed %s %s, its follow-up failed: %s", request.kind, request.id,
                                  self.redactor(repr(exc)))
            closed.append(request.id)
        return closed

    def close_own_queued(self, why: str) -> list[str]:
        """This process stops (bot/shutdown.py): the approved requests still waiting in its queue are closed
        now, each message updated in place, with `why`."""
        return self._closed(self.requests.close_own_queued(why, self._kinds))

    def _closed(self, closed: list[ApprovalRequest]) -> list[str]:
        for request in closed:
            log.warning("%s request %s on %s never started: %s", request.kind, request.id, request.environment,
                        self.redactor(request.result_summary))
            self.sync_message(request.id)
        return [request.id for request in closed]

    def reconcile(self, *, settle_seconds: float = 30.0) -> list[str]:
        """Every request whose message is behind its row (an update lost to a Slack outage), re-rendered
        and updated by its stored ts; a request changed in the last `settle_seconds` is left to whoever
        changed it. Returns the ids brought up to date."""
        stale = self.requests.unrendered(self._kinds, settled_before=self._clock() - timedelta(seconds=settle_seconds))
        updated = []
        for request in stale:
            if self.sync_message(request.id):
                updated.append(request.id)
        return updated

    def ask_again(self, request: ApprovalRequest) -> str:
        """The `/migrate` command that asks for the same thing again."""
        spec = self._kinds.get(request.kind)
        if spec is not None and spec.ask_again is not None:
            try:
                return spec.ask_again(request)
            except Exception as exc:   # a renderer bug must not hide the request's state
                log.error("ask_again of %s failed: %s", request.id, self.redactor(repr(exc)))
        command = (spec.command if spec is not None else "") or request.kind
        return f"/migrate {command} {request.environment}"

    def _title(self, request: ApprovalRequest) -> str:
        spec = self._kinds.get(request.kind)
        return spec.title.lower() if spec is not None else request.kind

    def execute(self, request_id: str) -> ApprovalRequest | None:
        """Run an approved request's executor, once: approved -> executing is conditional too."""
        if not self.requests.transition(request_id, [APPROVED], EXECUTING, hold=True):
            return self.requests.get(request_id)
        self.sync_message(request_id)
        request = self.requests.get(request_id)
        assert request is not None
        try:
            outcome = self.kind(request.kind).execute(request)
        except self._user_errors as exc:
            outcome = Outcome(False, blocks.one_line(str(exc), 500))
        except Exception as exc:
            log.error("%s %s failed: %s", request.kind, request_id, self.redactor(repr(exc)))
            outcome = Outcome(False, f"{request.kind} failed unexpectedly ({type(exc).__name__}); "
                                     "the bot's log has the details")
        summary = self.redactor(outcome.summary)
        if not self.requests.transition(request_id, [EXECUTING], DONE if outcome.ok else FAILED,
                                        result=self.redactor.tree(outcome.details), result_summary=summary):
            # someone closed it first and said so (a replica that judged this process gone once its run
            # ended, close_left_after_run; its interruption's follow-up): audited, announced, followed up once
            log.warning("%s %s was closed by another process before this one finished it", request.kind,
                        request_id)
            self.sync_message(request_id)
            return self.requests.get(request_id)
        self._audit(request.requester, request.kind, request.environment, "ok" if outcome.ok else "error",
                    summary, request, {"approved_by": request.approvers})
        self.sync_message(request_id)
        final = self.requests.get(request_id)
        self._announce(final)
        self._after_failure(final)
        return final

    def _after_failure(self, request: ApprovalRequest | None) -> None:
        """The kind's on_failed (a failed restore escalates, runbook §7.2); its own failure is logged."""
        spec = self._kinds.get(request.kind) if request is not None else None
        if request is None or request.state != FAILED or spec is None or spec.on_failed is None:
            return
        try:
            spec.on_failed(request)
        except Exception as exc:
            log.error("after the failed %s %s, its follow-up failed: %s", request.kind, request.id,
                      self.redactor(repr(exc)))

    def interrupted(self, request_id: str, summary: str, details: dict[str, Any]) -> bool:
        """An executing request whose run was interrupted (its process died, or a shutdown stopped it):
        failed, with `summary` and `details` as its result, its message updated in place (no buttons).
        True only for the one caller that moved it (executing -> failed is conditional); the kind's
        on_failed is not called: the interruption has its own follow-up (bot/migrations.py)."""
        summary = self.redactor(summary)
        if not self.requests.transition(request_id, [EXECUTING], FAILED, result=self.redactor.tree(details),
                                        result_summary=summary):
            return False
        request = self.requests.get(request_id)
        if request is not None:
            self._audit("runbook-bot", request.kind, request.environment, "interrupted", summary, request,
                        {"run_id": details.get("run_id"), "step": details.get("step")})
        self.sync_message(request_id)
        return True

    def progress(self, request_id: str, text: str) -> None:
        """A running request's progress line, shown on its message (executors call it, throttled)."""
        if self.requests.note(request_id, self.redactor(blocks.one_line(text, 300))):
            self.sync_message(request_id)

    def run_confirmed(self, kind: str, environment: str, actor: str, params: dict[str, Any]) -> ApprovalRequest:
        """The CLI's `--yes`: `actor` (cli:<user>) stands for the approval. The request is stored
        approved with the actor's decision ("yes"), audited as such, and executed now, in this
        process; the returned request holds the result (state done or failed)."""
        self.kind(kind)  # registered, or ApprovalError
        self._environment(environment)
        now = self._clock()
        request = self.requests.create(kind=kind, environment=environment, requester=actor, params=params,
                                       required=1, expires_at=now, state=APPROVED)
        self.requests.add_cli_decision(request.id, actor)
        self._audit(actor, kind, environment, "approved", f"--yes: {self.summary(request)}", request,
                    {"via": "--yes"})
        final = self.execute(request.id)
        assert final is not None
        return final

    # -- messages ---------------------------------------------------------------------------

    def render(self, request: ApprovalRequest) -> blocks.Message:
        spec = self.kind(request.kind)
        env = self.settings.environments.get(request.environment)
        message = blocks.approval_message(
            request,
            title=spec.title,
            summary=self.summary(request),
            what=self._safely(spec.describe, request, []),
            result=self._safely(spec.result_blocks, request, []) if request.state in (DONE, FAILED) else [],
            approvers=list(env.approvals.approvers) if env else [],
            allow_self_approval=bool(env and env.approvals.allow_self_approval),
            production=bool(env and env.production),
            action_ids=(ACTION_APPROVE, ACTION_REJECT),
            ask_again=self.ask_again(request),
        )
        return blocks.validate(self.redactor.message(message))

    def summary(self, request: ApprovalRequest) -> str:
        """The kind's one line about the request; a generic one when the kind cannot say."""
        spec = self._kinds.get(request.kind)
        fallback = f"{request.kind} on {request.environment}"
        return self._safely(spec.summary, request, fallback) if spec is not None else fallback

    def _safely(self, render: Callable[[ApprovalRequest], Any], request: ApprovalRequest, fallback: Any) -> Any:
        try:
            return render(request)
        except Exception as exc:  # a renderer bug must not make the request unanswerable
            log.error("rendering %s %s failed: %s", request.kind, request.id, self.redactor(repr(exc)))
            return fallback

    def sync_message(self, request_id: str) -> bool:
        """Bring the request's message in line with the database (chat.update by stored ts); True when
        it was. Each update that went through is marked on the row (rendered_at), so a lost one (a
        Slack outage) is found and made again by `reconcile`.

        Two replicas may render at once and their updates arrive out of order; whoever
        updates checks afterwards that the request did not change meanwhile, and renders
        again if it did, so the last update shows the last state."""
        for _ in range(4):
            request = self.requests.get(request_id)
            if request is None or not request.channel or not request.message_ts or self.gateway is None:
                return False
            if request.kind not in self._kinds:
                return False    # a request-like row another part of the bot renders (a §6.5 recommendation)
            # a failure (Slack unreachable past the client's retries included) leaves the row unrendered:
            # the reconcile makes the update again
            failure = self.gateway.update(request.channel, request.message_ts, self.render(request))
            if failure is not None:
                log.error("could not update approval message %s: %s", request_id, self.redactor(str(failure)))
                return False
            self.requests.mark_rendered(request_id, request.updated_at)
            latest = self.requests.get(request_id)
            if latest is None or latest.version == request.version:
                return True
        return True

    def _announce(self, request: ApprovalRequest | None) -> None:
        """A reply in the request's thread, so the requester hears how it ended."""
        if request is None or not request.channel or not request.message_ts or self.gateway is None:
            return
        spec = self.kind(request.kind)
        message = blocks.approval_result_reply(request, title=spec.title,
                                               result=self._safely(spec.result_blocks, request, []))
        posted = self.gateway.post(request.channel, message, thread_ts=request.message_ts)
        if posted.failure is not None:
            log.error("could not post the result of %s: %s", request.id, self.redactor(str(posted.failure)))

    def _ephemeral(self, click: Click, text: str) -> None:
        if self.gateway is None or not click.channel_id or not click.user_id:
            return
        failure = self.gateway.ephemeral(click.channel_id, click.user_id, blocks.error_message(text))
        if failure is not None:
            log.warning("could not tell %s why their click was refused: %s", click.user_id, failure)

    # -- audit ------------------------------------------------------------------------------

    def _audit(self, actor: str, action: str, environment: str | None, outcome: str, summary: str,
               request: ApprovalRequest | None, details: dict[str, Any] | None) -> None:
        facts: dict[str, Any] = {"kind": request.kind} if request is not None else {}
        facts.update(details or {})
        try:
            self.store.record(actor=actor[:120], action=action[:40], environment=environment, outcome=outcome[:20],
                              summary=self.redactor(summary), details=self.redactor.tree(facts),
                              run_id=request.id if request is not None else None)
        except StateError as exc:
            log.error("could not record an approval event: %s", self.redactor(str(exc)))


__all__ = ["ACTION_APPROVE", "ACTION_REJECT", "ACTION_PATTERN", "ApprovalError", "ApprovalKind",
           "ApprovalService", "Click", "Outcome", "Refusal"]
