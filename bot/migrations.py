"""Issue 4, the Slack half: `/migrate run`, `/migrate rollback`, `/migrate validate`, and what
follows a run (runbook §3–§6.5). The engine (runbook/migrate/, validate.py, rollback.py) does
the work; this module asks, watches and reports.

* Asking. `request(...)` resolves the typed target against the app's scripts (migrate.propose),
  refuses up front in one line what must not be asked at all (unknown revision, nothing to do,
  an irreversible downgrade, which points to `/migrate restore`), and otherwise posts an approval
  request (kinds "migrate" and "rollback", bot/migration_kinds.py) pinned to the current revision;
  a long SQL preview goes up as a file in the request's thread.
* Running. The kinds' executor (bot/migration_kinds.py) calls runbook.ops.run on Flows' executor
  with `expected_current` from the request: every guard is decided there. The request message shows
  what protects the run (runbook.protection), or a "Back up first" button that takes a backup now,
  and its rehearsal (issue 16), or a "Rehearse first" button that runs `/migrate rehearse` for it.
* Watching (§4). bot/live_run.py's `LiveRun`, one message in the request's thread updated in place.
* Following up. A recommendation is stored as a request-like row (kind "recommendation" in the
  approvals table: its opaque id is all its one button carries) and its button opens the
  recommended request: a rollback, a table or full restore from the backup, or an escalation.
  Every click on a `migrate_*` button is re-loaded, matched to its message and authorised on
  the server; exactly one click follows a recommendation (a conditional UPDATE decides).
* Crash safety. Runs found interrupted at start (runbook.state.runs.RunStore.reap) are posted
  once in slack.channel, never resumed. Each interrupted run (found at start, by the reaper job,
  by a CLI command, or stopped by a shutdown) then fails its request, whose message says where it
  stopped and what to do next, has its live monitor message (whose channel and ts the run keeps in
  runs.details) turned into a final "interrupted" view, and gets the §7.3 incident summary in its
  thread: once each. Restores (bot.restores.restore_kind) are runs too, and followed up the same way.
  A monitor keeps the run state its last update showed (runs.details["monitor"]["rendered"]): a final
  view Slack never took (an outage) is written from the run's row by `reconcile_monitors`.
"""
from __future__ import annotations

import logging
import os
import re
import time
from datetime import datetime, timedelta
from typing import Any, Callable, Mapping, Sequence

from bot import approvals, blocks
from bot import migration_blocks as mblocks
from bot.live_run import LiveRun, run_facts
from bot.migration_kinds import (
    KIND_OF_DIRECTION,
    checked_proposal,
    gate_override_of,
    interrupted_outcome,
    migration_kind,
    outcome_line,
    proposal_params,
    result_details,
    run_with_yes,
)
from runbook import backup as backups
from runbook import authz, migrate, ops, rollback
from runbook.config import ConfigError, Settings
from runbook.gate import GateOverride
from runbook.ops import NothingToDo, Refused, RunWatcher
from runbook.revisions import RevisionError
from runbook.state import StateError
from runbook.state.approvals import DONE, EXECUTING, ID_PATTERN, PENDING, ApprovalRequest, ApprovalStore
from runbook.state.models import utcnow
from runbook.state.runs import INTERRUPTED, RunStore
from runbook.target import TargetError
from runbook.validate import ValidationReport

log = logging.getLogger(__name__)

RECOMMENDATION = "recommendation"
# A recommendation's button stays usable this long; what it opens is checked against the database
# as it is then (a new request, pinned to the revision of that moment).
RECOMMENDATION_TTL = timedelta(hours=24)
# The job_claims name of an interrupted run's monitor update (RunStore.claim_follow_up): once per run.
MONITOR_CLAIM = "monitor"
_REQUEST_ID = re.compile(ID_PATTERN)
_SLACK_ID = re.compile(r"^[A-Z0-9]{2,40}$")


# ---------------------------------------------------------------------------
# The desk: asking, following up, clicks


class Migrations:
    """Issue 4's flows; Flows owns one and hands it commands and `migrate_*` clicks."""

    def __init__(self, flows: Any, *, escalate: Callable[..., Any] | None = None,
                 after_run: Callable[..., Any] | None = None):
        """Hooks into the escalation feature (bot/escalate.py), each optional:
        `escalate(environment, level, reason=, actor=, run_id=, thread=)`: what the escalate button
        calls; without it the button tags escalation.owner. `after_run(run_id, thread=)`: called once a
        run that failed has posted its log and recommendation (incident summary, automatic escalation)."""
        self.flows = flows
        self.settings: Settings = flows.settings
        self.store = flows.store
        self.client = flows.client
        self.redactor = flows.redactor
        self.approvals: approvals.ApprovalService = flows.approvals
        self.requests = ApprovalStore(flows.store)
        self.escalate = escalate
        self.after_run = after_run
        for direction in ("upgrade", "downgrade"):
            self.approvals.register(migration_kind(self.settings, self.store, direction, watch=self._watch,
                                                   project=flows.project, members_of=self.approvals.group_members))

    def _watch(self, request: ApprovalRequest, run_id: str) -> RunWatcher | None:
        return LiveRun(self, request, run_id) if request.channel and request.message_ts else None

    # -- posting ---------------------------------------------------------------------------

    def _origin(self, channel: str, user: str = ""):
        from bot.origin import Origin

        return Origin(user_id=user, channel_id=channel)

    def post_in_thread(self, request: ApprovalRequest, message: blocks.Message) -> str | None:
        if not request.channel or not request.message_ts:
            return None
        return self.flows.post(self._origin(request.channel), message, thread_ts=request.message_ts)

    def upload_in_thread(self, channel: str | None, thread_ts: str | None, upload: blocks.FileUpload) -> None:
        """A file in a thread, through the gateway (redacted; a failure logged as it is)."""
        if not channel or not thread_ts:
            return
        self.flows.gateway.upload(channel, thread_ts, upload)

    # -- /migrate run and /migrate rollback --------------------------------------------------

    def request(self, name: str, direction: str, typed: str, requester: str, command_text: str,
                channel: str | None, *, override: str | None = None) -> ApprovalRequest:
        """Resolve, refuse up front (Refused, one line) or post the approval request. `override`: the
        reason of a no-go gate override the requester asks with (runbook.ops decides who may)."""
        env = self.settings.environments[name]
        gate_override = GateOverride(requester, override) if override is not None else None
        try:
            ops.authorise_override(self.settings, name, gate_override, self.approvals.group_members)
            proposal = checked_proposal(name, env, direction, typed, command_text, store=self.store,
                                        project=self.flows.project(name))
        except NothingToDo as exc:
            raise Refused(f"`{command_text}` refused: {exc}") from None
        except approvals.Refusal as exc:       # Slack could not say who is in an approver group
            raise Refused(str(exc)) from None
        params = proposal_params(proposal, typed)
        if gate_override is not None:
            params["gate_override"] = {"actor": gate_override.actor, "reason": gate_override.reason}
        try:
            request = self.approvals.request(KIND_OF_DIRECTION[direction], name, requester, params, channel=channel)
        except approvals.ApprovalError as exc:
            raise Refused(f"`{command_text}` refused: {exc}") from None
        sql = proposal.sql_preview
        if sql.strip() and not mblocks.sql_inline(sql):
            self.upload_in_thread(request.channel, request.message_ts, mblocks.sql_file(sql, name, direction))
        return request

    # -- /migrate rehearse and the "Rehearse first" button (issue 16) -------------------------

    def rehearse(self, name: str, typed: str, origin: Any, *, start: Sequence[str] | None = None,
                 thread_ts: str | None = None) -> Any:
        """The range up to `typed` on a restored copy (runbook.ops.rehearse; `start`: from that revision, see
        there), on Flows' executor: one message (in the thread `thread_ts` when given), updated as it goes,
        then the report. Returns the runbook.rehearse.Rehearsal."""
        from runbook import rehearse as rehearsals

        # stateful: updated as it goes, so where the bot cannot post it goes to slack.channel (deliver)
        channel, ts = self.flows.deliver(origin, mblocks.rehearsal_progress_message(name, typed, "starting"),
                                         thread_ts=thread_ts, stateful=True)
        last = [0.0]

        def phase(text: str) -> None:
            if channel is not None and ts is not None and time.monotonic() - last[0] >= 1.0:
                last[0] = time.monotonic()
                self.flows.update(channel, ts, mblocks.rehearsal_progress_message(name, typed, text))

        result = ops.rehearse(self.settings, self.store, name, target=typed, actor=self.flows.actor(origin),
                              on_phase=phase, project=self.flows.project(name), start=start)
        message = mblocks.rehearsal_message(rehearsals.to_json(result), environment=name)
        if channel is None or ts is None or not self.flows.update(channel, ts, message, final=True):
            self.flows.post(origin, message, thread_ts=thread_ts)
        return result

    def _rehearse_first(self, click: approvals.Click, request: ApprovalRequest) -> str:
        """The "Rehearse first" button: the request's range rehearsed as `/migrate rehearse` would, by the
        clicker and under that command's rules (Flows.admits: a click is the clicker's request, not the
        requester's), its progress and report in the request's thread; then the request is drawn again, so
        approvers see the rehearsal on it."""
        from bot.commands import Command
        from bot.origin import Origin
        from runbook.rehearsal_record import KIND as REHEARSAL
        from runbook.rehearsal_record import range_to_rehearse
        from runbook.rehearse import summary_line
        from runbook.state.runs import RUNNING

        if request.state != PENDING or request.is_due(utcnow()):
            state = request.state if request.state != PENDING else "expired"
            raise approvals.Refusal(f"This request is already {state}; nothing was rehearsed.", "closed")
        name, params = request.environment, request.params
        span = range_to_rehearse(str(params.get("direction")), params.get("current") or [], str(params["target"]))
        if span is None:
            raise approvals.Refusal("A rollback from several heads has no single range to rehearse; nothing was "
                                    "rehearsed.", "refused")
        start, target = span
        origin = Origin(user_id=click.user_id, channel_id=click.channel_id, response_url=click.response_url)
        if not self.flows.admits(Command("rehearse", name, (target,)), origin):
            return "unauthorised"           # answered and recorded as a refused /migrate rehearse
        env = self.settings.environments[name]
        standing = ops.rehearsal_of_range(self.store, name, env, params.get("current") or [], str(params["target"]),
                                          self.flows.project(name))
        if standing is not None and standing.valid:
            self.approvals.sync_message(request.id)
            raise approvals.Refusal(f"This range is rehearsed already (run {standing.run_id[:8]}, "
                                    f"{standing.outcome}): the request shows it; nothing was rehearsed.", "duplicate")
        running = RunStore(self.store).list(environment=name, states=(RUNNING,), kinds=(REHEARSAL,), limit=1)
        if running:
            raise approvals.Refusal(f"A rehearsal of {name} is running already (run {running[0].id[:8]}, by "
                                    f"{running[0].actor}); wait for its report, then click again if this range "
                                    "is still not rehearsed. Nothing was started.", "duplicate")
        downgrade = params.get("direction") == "downgrade"
        result = self.rehearse(name, target, origin, start=start if downgrade else None,
                               thread_ts=request.message_ts)
        shown = self.approvals.sync_message(request.id)
        if not shown:    # the reconcile draws it later; meanwhile the thread says where the report is
            self.post_in_thread(request, blocks.Message(
                text="The rehearsal's report is in this thread; the request will show it.",
                blocks=[blocks.context("The rehearsal's report is above in this thread; the request above will "
                                       "show it once Slack takes the update.")]))
        outcome = "ok" if result.outcome in ("passed", "nothing to do") else result.outcome
        self._audit(click.user_id, "rehearse_first", request, outcome[:20], summary_line(result),
                    {"rehearsal_run_id": result.run_id})
        return outcome

    # -- /migrate validate -----------------------------------------------------------------

    def validate(self, name: str, origin: Any) -> "ValidationReport":
        """§5 on demand (runbook.ops.validate), posted; a failure gets its §6.5 recommendation in its thread."""
        env = self.settings.environments[name]
        done = ops.validate(name, env, self.store, self.flows.actor(origin), project=self.flows.project(name))
        report = done.report
        # stateful when it fails: the recommendation (with its button) goes in its thread
        channel, ts = self.flows.deliver(origin, mblocks.validation_message(report),
                                         stateful=done.recommendation is not None)
        if done.recommendation is not None:
            facts = {"environment": name, "what": "Validation", "from": list(report.current),
                     "to": list(report.current), "at": report.started_at.isoformat(),
                     "error": "; ".join(f"{c.name}: {c.detail}" for c in report.failed), "log_tail": "",
                     "run_id": None}
            self.recommend(name, rollback.recommendation_to_json(done.recommendation), facts, backup=done.backup,
                           requester=origin.user_id, thread=(channel, ts) if ts else None)
        return report

    # -- §6.5: the recommendation and its one button ----------------------------------------

    def recommend(self, name: str, rec: dict[str, Any], facts: dict[str, Any], *, backup: Any, requester: str,
                  thread: tuple[str | None, str | None] | None) -> str | None:
        """Post the recommendation (in `thread`), its button carrying the id of a stored
        recommendation row; returns that id (None when it has no button)."""
        channel, thread_ts = thread if thread is not None else (None, None)
        channel = channel or (self.settings.slack.channel if self.settings.slack is not None else None)
        if channel is None:
            return None
        has_button = mblocks.recommended_button_text(rec, backup) is not None
        row_id = None
        if has_button:
            params = {"recommendation": rec, "facts": facts, "backup_id": getattr(backup, "id", None),
                      "requester": requester, "thread_ts": thread_ts}
            row = self.requests.create(kind=RECOMMENDATION, environment=name, requester=requester,
                                       params=self.redactor.tree(params), required=1,
                                       expires_at=utcnow() + RECOMMENDATION_TTL)
            row_id = row.id
        message = self._recommendation_message(name, rec, facts, backup, row_id)
        ts = self.flows.post(self._origin(channel), message, thread_ts=thread_ts)
        if row_id is not None and ts is not None:
            self.requests.set_message(row_id, channel, ts)
        self.store.record(actor="runbook-bot", action="recommend", environment=name, outcome=rec.get("action", "?"),
                          summary=self.redactor(str(rec.get("headline", ""))), run_id=facts.get("run_id"),
                          details={"recommendation_id": row_id, "section": rec.get("section")})
        return row_id

    def _recommendation_message(self, name: str, rec: Mapping[str, Any], facts: Mapping[str, Any], backup: Any,
                                row_id: str | None, followed: str | None = None) -> blocks.Message:
        shown = dict(facts)
        if isinstance(shown.get("at"), str):
            shown["at"] = datetime.fromisoformat(shown["at"])
        owner = self.settings.escalation.owner.slack
        return mblocks.recommendation_message(rec, shown, recommendation_id=row_id, backup=backup, owner=owner,
                                              followed=followed)

    # -- clicks on migrate_* buttons ---------------------------------------------------------

    def handle_click(self, click: approvals.Click) -> str:
        """A "Back up first", "Rehearse first" or recommended-action click, on Flows' executor. Returns the audit
        outcome; a refused click gets a one-line ephemeral and changes nothing."""
        action = {mblocks.ACTION_BACKUP_FIRST: "backup_first", mblocks.ACTION_RECOMMENDED: "follow",
                  mblocks.ACTION_REHEARSE_FIRST: "rehearse_first"}.get(click.action_id, "click")
        row: ApprovalRequest | None = None
        try:
            row = self._row_of(click)
            if action == "backup_first":
                return self._backup_first(click, row)
            if action == "rehearse_first":
                return self._rehearse_first(click, row)
            return self._follow(click, row)
        except approvals.Refusal as refusal:
            self._audit(click.user_id or "unknown", action, row, refusal.outcome, str(refusal),
                        {"button_value": click.value[:40]} if row is None else None)
            self._tell(click, refusal.text)
            return refusal.outcome
        except Exception as exc:
            log.error("a %s click failed: %s", action, self.redactor(repr(exc)))
            self._audit(click.user_id or "unknown", action, row, "error", f"the click failed ({type(exc).__name__})",
                        None)
            self._tell(click, "Your click could not be handled (the bot's log has the details); try again in a "
                             "moment.")
            return "error"

    def _tell(self, click: approvals.Click, text: str) -> None:
        if click.channel_id and _SLACK_ID.match(click.user_id or ""):
            self.flows.reply_ephemeral(self._origin(click.channel_id, click.user_id), blocks.error_message(text))

    def _row_of(self, click: approvals.Click) -> ApprovalRequest:
        nothing = "nothing was changed"
        expected = {mblocks.ACTION_BACKUP_FIRST: ("migrate", "rollback"), mblocks.ACTION_RECOMMENDED: (RECOMMENDATION,),
                    mblocks.ACTION_REHEARSE_FIRST: ("migrate", "rollback")}
        if click.action_id not in expected:
            raise approvals.Refusal(f"That button is not one the bot knows; {nothing}.", "invalid")
        if not _SLACK_ID.match(click.user_id):
            raise approvals.Refusal(f"That click carries no Slack user; {nothing}.", "invalid")
        if not _REQUEST_ID.match(click.value):
            raise approvals.Refusal(f"That button does not carry an id the bot gave out; {nothing}.", "invalid")
        row = self.requests.get(click.value)
        if row is None or row.kind not in expected[click.action_id]:
            raise approvals.Refusal(f"That button's request does not exist; {nothing}.", "invalid")
        if (click.channel_id, click.message_ts) != (row.channel, row.message_ts):
            raise approvals.Refusal(f"That button does not belong to this message; {nothing}.", "invalid")
        if row.environment not in self.settings.environments:
            raise approvals.Refusal(f"This bot no longer knows {row.environment}; {nothing}.", "invalid")
        return row

    def _authorise(self, row: ApprovalRequest, user: str, what: str) -> None:
        """The requester, or anyone who may approve on the environment."""
        if user == row.requester or self.approvals.is_approver(row.environment, user):
            return
        approvers = self.settings.environments[row.environment].approvals.approvers
        raise approvals.Refusal(blocks.mrkdwn("Only the requester or an approver on {} (approvers: {}) may {}; "
                                              "nothing was changed.", row.environment, blocks.mentions(approvers),
                                              what), "unauthorised")

    def _backup_first(self, click: approvals.Click, request: ApprovalRequest) -> str:
        if request.state != PENDING or request.is_due(utcnow()):
            state = request.state if request.state != PENDING else "expired"
            raise approvals.Refusal(f"This request is already {state}; no backup was taken for it.", "closed")
        # taking a backup runs retention: the `backup` permission (runbook.authz), as for /migrate backup
        if not authz.allowed(self.settings, request.environment, "backup", click.user_id, self.approvals.group_members):
            raise approvals.Refusal(blocks.Mrkdwn(authz.refusal_line(
                self.settings, request.environment, "backup", mention=blocks.mention, escape=blocks.escape)),
                "unauthorised")
        name = request.environment
        env = self.settings.environments[name]
        protected = ops.protection_now(self.store, name, env, request.params.get("current") or [])
        if protected.relied_on:
            self.approvals.sync_message(request.id)
            raise approvals.Refusal(f"No second backup was taken: {protected.reason}.", "duplicate")
        self.post_in_thread(request, blocks.Message(
            text=f"{blocks.user(click.user_id)} takes a backup of {name} before the migration…",
            blocks=[blocks.section(f":floppy_disk: {blocks.user(click.user_id)} takes a full backup of "
                                   f"{blocks.escape(name)} before the migration (§2)…")]))
        try:
            made = backups.backup(name, env, self.store, actor=click.user_id, reason="migrate")
        except backups.BackupFailed as exc:
            made = exc.backup
        except backups.BackupError as exc:
            raise approvals.Refusal(f"No backup was taken: {exc}", "refused") from None
        self.post_in_thread(request, blocks.backup_message(name, made))
        self.approvals.sync_message(request.id)
        outcome = "ok" if made.status == "verified" else "error"
        self._audit(click.user_id, "backup_first", request, outcome,
                    f"#{made.id} {made.name}: {made.status}", {"backup_id": made.id})
        return outcome

    def _follow(self, click: approvals.Click, row: ApprovalRequest) -> str:
        if row.state != PENDING:
            done = f" ({row.result_summary})" if row.result_summary else ""
            raise approvals.Refusal(f"This recommendation was followed already{done}; nothing was changed.",
                                    "closed")
        if row.is_due(utcnow()):
            raise approvals.Refusal("This recommendation is older than a day: check `/migrate status` and ask "
                                    "again; nothing was changed.", "expired")
        self._authorise(row, click.user_id, "follow this recommendation")
        if not self.requests.transition(row.id, [PENDING], EXECUTING):
            raise approvals.Refusal("Someone is following this recommendation already; nothing was changed.",
                                    "closed")
        try:
            line = self._open_recommended(row, click.user_id)
        except (Refused, approvals.ApprovalError, backups.BackupError, RevisionError, TargetError, ConfigError,
                StateError, ValueError) as exc:
            self.requests.transition(row.id, [EXECUTING], PENDING)          # someone may try again
            raise approvals.Refusal(blocks.one_line(str(exc), 400), "refused") from None
        self.requests.transition(row.id, [EXECUTING], DONE, result_summary=line)
        params = row.params
        backup = self._backup(row.environment, params.get("backup_id"))
        self.flows.update(row.channel, row.message_ts, self._recommendation_message(
            row.environment, params["recommendation"], params["facts"], backup, None,
            followed=f"{blocks.user(click.user_id)}: {blocks.escape(line)}"))
        self._audit(click.user_id, "follow", row, "ok", line, {"action": params["recommendation"].get("action")})
        return "ok"

    def _backup(self, name: str, backup_id: Any) -> Any:
        if backup_id is None:
            return None
        try:
            return backups.get_backup(self.store, name, backup_id)
        except backups.BackupError:
            return None

    def _open_recommended(self, row: ApprovalRequest, user: str) -> str:
        """What the button does: ask for the recommended request (or escalate). One line of what it did."""
        name, params = row.environment, row.params
        rec = params["recommendation"]
        action = rec.get("action")
        if action == "downgrade":
            target = str(rec.get("target_revision") or "-1")
            request = self.request(name, "downgrade", target, user, f"/migrate rollback {name} {target}",
                                   row.channel)
            return f"asked to roll back to {target} (request {request.id[:8]} in {self._where(request)})"
        if action in ("table_restore", "full_restore"):
            backup_id = params.get("backup_id")
            if backup_id is None:
                raise Refused("there is no verified backup to restore from: escalate (§7)")
            tables = tuple(rec.get("tables") or ()) if action == "table_restore" else ()
            plan = backups.plan_restore(name, self.settings.environments[name], self.store, backup_id, tables=tables)
            if plan.blockers:
                raise Refused("; ".join(plan.blockers))
            request = self.approvals.request("restore", name, user, backups.plan_to_params(plan), channel=row.channel)
            what = f"{len(plan.tables)} table(s)" if action == "table_restore" else "a full restore"
            return f"asked for {what} from backup #{backup_id} (request {request.id[:8]} in {self._where(request)})"
        if action == "escalate":
            facts = params.get("facts") or {}
            what, error = facts.get("what", "a run"), facts.get("error") or rec.get("headline")
            reason = blocks.one_line(f"{what} failed: {error}", 280)
            thread = (row.channel, params.get("thread_ts") or row.message_ts)
            if self.escalate is not None:
                self.escalate(name, 2, reason=reason, actor=user, run_id=facts.get("run_id"), thread=thread)
            else:
                message = mblocks.escalation_contact_message(name, self.settings.escalation.owner.slack, reason, user)
                self.flows.post(self._origin(row.channel), message, thread_ts=thread[1])
                self.store.record(actor=user, action="escalate", environment=name, outcome="level 2",
                                  summary=self.redactor(reason), run_id=facts.get("run_id"),
                                  details={"level": 2, "owner": self.settings.escalation.owner.slack})
            return "escalated to the owner (§7.2 level 2)"
        raise Refused(f"the recommendation '{action}' has no action to take")

    def _where(self, request: ApprovalRequest) -> str:
        return f"<#{request.channel}>" if request.channel else "the approvals channel"

    def _audit(self, actor: str, action: str, row: ApprovalRequest | None, outcome: str, summary: str,
               details: dict[str, Any] | None) -> None:
        facts = {"kind": row.kind} if row is not None else {}
        facts.update(details or {})
        try:
            self.store.record(actor=actor[:120], action=action[:40], environment=row.environment if row else None,
                              outcome=outcome[:20], summary=self.redactor(summary), details=self.redactor.tree(facts),
                              run_id=row.id if row is not None else None)
        except StateError as exc:
            log.error("could not record a %s click: %s", action, self.redactor(str(exc)))

    # -- crash safety ----------------------------------------------------------------------

    def announce_interrupted(self, runs: Sequence[Any], *, when: str = "found at start") -> str | None:
        """Post runs found interrupted (whoever reaped them posts them: once) in slack.channel; a shutdown
        that interrupts its own runs posts them too (`when`: "at shutdown"). Then every interrupted run
        is followed up (follow_up_interrupted)."""
        posted = None
        if runs and self.settings.slack is not None:
            posted = self.flows.post(self._origin(self.settings.slack.channel),
                                     mblocks.interrupted_runs_message(runs, when=when))
        self.follow_up_interrupted(runs)
        return posted

    def follow_up_interrupted(self, runs: Sequence[Any] = ()) -> list[str]:
        """What an interrupted run (migrate, rollback or restore) gets, once each: its approval request,
        still "executing", is failed and its message updated in place (the step it was in, what to do
        next, no buttons); its live monitor message, when it had one, turned into the final interrupted
        view (close_monitor); then the §7.3 incident summary in the request's thread (else
        slack.channel), through `after_run` like a failed run's. Once: the request moves by a
        conditional UPDATE, the monitor and the summary by a claim each, so replicas starting together,
        or a shutdown racing its own run's thread, do each thing once.

        `runs`: the runs just reaped or interrupted, plus every interrupted run whose request still says
        executing (a CLI command reaped it, or the start that reaped it died first). Never raises: it
        runs at start and at shutdown. Returns the ids of the runs whose request this call closed."""
        found = {run.id: run for run in runs}
        try:
            for run in RunStore(self.store).interrupted_with_open_request():
                found.setdefault(run.id, run)
        except Exception as exc:  # the state database may be what failed; the reaper's next tick retries
            log.error("could not look for interrupted runs to follow up: %s", self.redactor(repr(exc)))
        closed = []
        for run in found.values():
            try:
                if run.approval_id and self._close_interrupted_request(run):
                    closed.append(run.id)
                self.close_monitor(run)
                if self.after_run is not None:
                    self.after_run(run.id)
            except Exception as exc:
                log.error("run %s: the follow-up of its interruption failed: %s", run.id, self.redactor(repr(exc)))
        return closed

    def follow_up_left_after_run(self) -> list[str]:
        """Requests whose run finished (succeeded, failed) while the bot process holding them died before
        closing them: closed as the run ended, once, each message updated in place
        (ApprovalService.close_left_after_run); a failed run gets its §7.3 summary (and automatic
        escalation) through `after_run` in the request's thread, unless the dead process posted it.
        Never raises: it runs at start and on the reaper's tick. Returns the ids of the requests closed."""
        def incident_posted(run_id: str) -> bool:
            return bool(self.store.events(action="incident", run_id=run_id, limit=1))

        def after_failed_run(run_id: str, thread: Any) -> Any:
            return self.after_run(run_id, thread=thread) if self.after_run is not None else None

        try:
            return self.approvals.close_left_after_run(after_failed_run, incident_posted=incident_posted)
        except Exception as exc:  # the state database may be what failed; the reaper's next tick retries
            log.error("could not close requests whose run finished: %s", self.redactor(repr(exc)))
            return []

    def close_monitor(self, run: Any, *, where: tuple[str | None, str | None] | None = None) -> bool:
        """The live monitor of an interrupted run, updated in place to its final view (no live numbers):
        once per run, whoever comes first (a claim). `where`: (channel, ts) when the caller knows them;
        otherwise what the run kept in runs.details. False when there is none, or another did it."""
        runs = RunStore(self.store)
        run = runs.get(run.id) or run
        kept = run.detail("monitor") or {}
        channel, ts = where if where is not None else (kept.get("channel"), kept.get("ts"))
        if not channel or not ts:
            return False
        if not runs.claim_follow_up(run.id, MONITOR_CLAIM, f"runbook-bot on {runs.host} (pid {os.getpid()})"):
            return False
        message = mblocks.monitor_interrupted_message(run, migrator_app=migrate.migrator_application_name(run.id))
        written = self.flows.update(channel, ts, message, final=True)
        if written:    # else the reconcile writes it when Slack answers again
            runs.mark_monitor(run.id, INTERRUPTED)
        return written

    def reconcile_monitors(self, *, settle_seconds: float = 30.0) -> list[str]:
        """Live monitors whose final update never reached Slack (an outage while the run ended): their
        final view, written from the run's row and updated by the ts kept on it. Returns the run ids."""
        runs = RunStore(self.store)
        updated = []
        for run in runs.monitors_behind(settled_before=utcnow() - timedelta(seconds=settle_seconds)):
            kept = run.detail("monitor") or {}
            app = migrate.migrator_application_name(run.id)
            message = (mblocks.monitor_interrupted_message(run, migrator_app=app) if run.state == INTERRUPTED
                       else mblocks.monitor_final_message(run, migrator_app=app))
            if kept.get("channel") and kept.get("ts") and self.flows.update(kept["channel"], kept["ts"], message):
                runs.mark_monitor(run.id, run.state)
                updated.append(run.id)
        return updated

    def _close_interrupted_request(self, run: Any) -> bool:
        outcome = interrupted_outcome(run)
        return self.approvals.interrupted(run.approval_id, outcome.summary, outcome.details)


# What other modules import from here, where it lived before bot/migration_kinds.py and bot/live_run.py
__all__ = ["LiveRun", "MONITOR_CLAIM", "Migrations", "NothingToDo", "RECOMMENDATION", "Refused", "RunWatcher",
           "checked_proposal", "gate_override_of", "interrupted_outcome", "migration_kind", "outcome_line",
           "proposal_params", "result_details", "run_facts", "run_with_yes"]
