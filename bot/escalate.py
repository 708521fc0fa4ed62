"""Escalations and incident summaries on Slack (issue 6): runbook/escalation.py and
runbook/incident/ decide what to say; this posts it, records it, and follows up.

`Escalator` is what every surface calls:

- `escalate(environment, level, reason=..., actor=...)`: `/migrate escalate`, `runbook-bot escalate`;
  posts the level's message (real mentions built by bot.blocks' helpers), records the "escalate"
  event, opens the GitHub issue when configured and posts its link, and on level 3 runs the pause
  hook and posts its outcome (a failure is posted, never swallowed);
- `post_incident(run=...)`: the §7.3 summary in the run's thread (the run's approval request
  message when it has one, else the channel), its Markdown uploaded as a file;
- `after_run(run_id, thread=None)`: what a finished run calls (the CLI's migrate and rollback, the
  Slack migrate flow, after_restore): a failed run gets its summary; a failed rollback or restore
  escalates to level 2, data loss found by validation to level 3 (once per run and level); an
  interrupted run (its process died, or a shutdown stopped it; restores included) gets its summary
  once, whoever calls first (bot/migrations.py calls it for every interrupted run it finds), and no
  automatic escalation;
- `after_restore(request)`: a failed restore escalates to level 2 (ApprovalKind.on_failed), through
  after_run with the restore's run (bot.restores.restore_kind records one), so it happens once and
  its summary is the restore's; an interrupted restore is left to its own follow-up.

With `client=None` (the CLI without SLACK_BOT_TOKEN) nothing is posted; everything else happens.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from bot import blocks
from runbook import escalation as levels
from runbook import incident as incidents
from runbook.config import Settings
from runbook.github import GitHubError
from runbook.state.runs import INTERRUPTED, Run, RunStore

log = logging.getLogger(__name__)

AUTOMATIC_ACTOR = "runbook-bot"
FAILED_RUN_STATES = ("failed", INTERRUPTED)
# The job_claims name of an interrupted run's automatic summary (RunStore.claim_follow_up).
INCIDENT_CLAIM = "incident"
ESCALATION_CLAIM = "escalation"
Thread = tuple[str, str]          # (channel, ts) of the message whose thread a reply goes in


@dataclass
class EscalationReport:
    escalation: levels.Escalation
    channel: str | None = None
    ts: str | None = None
    issue: Any = None                      # runbook.github.Issue
    github_error: str | None = None
    hook: levels.HookResult | None = None
    slack_error: str | None = None
    file_error: str | None = None          # the message was posted; its incident file was not

    @property
    def ok(self) -> bool:
        """Everything asked for happened: posted (when there was a Slack), hook and issue fine."""
        return self.slack_error is None and self.github_error is None and (self.hook is None or self.hook.ok)


@dataclass
class IncidentReport:
    incident: incidents.Incident
    markdown: str
    channel: str | None = None
    ts: str | None = None
    slack_error: str | None = None


class Escalator:
    def __init__(self, settings: Settings, store: Any, client: Any, *, redactor: Any):
        self.settings = settings
        self.store = store
        self.client = client
        self.redactor = redactor          # bot.redaction.Redactor
        self.runs = RunStore(store)

    @property
    def secrets(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(levels.secrets_of(self.settings) + tuple(self.redactor.secrets)))

    # -- where things go ------------------------------------------------------------------

    def thread_of_run(self, run: Run | None) -> Thread | None:
        """The run's message: its approval request's, where the run's result is announced."""
        from runbook.state.approvals import ApprovalStore

        if run is None or not run.approval_id:
            return None
        request = ApprovalStore(self.store).get(run.approval_id)
        if request is None or not request.channel or not request.message_ts:
            return None
        return request.channel, request.message_ts

    def _channel(self, fallback: str | None) -> str | None:
        return self.settings.slack.channel if self.settings.slack is not None else fallback

    def _post(self, channel: str | None, message: blocks.Message, *, thread_ts: str | None = None,
              broadcast: bool = False) -> tuple[str | None, str | None]:
        """(ts, error): nothing is posted without a client or a channel."""
        posted = self._posted(channel, message, thread_ts=thread_ts, broadcast=broadcast)
        return (posted.ts, str(posted.failure) if posted.failure else None) if posted else (None, None)

    def _posted(self, channel: str | None, message: blocks.Message, *, thread_ts: str | None = None,
                broadcast: bool = False) -> Any:
        """bot.gateway.Posted (the message and its file each as it went), None without a client or channel."""
        from bot.gateway import SlackGateway

        if self.client is None or channel is None:
            return None
        return SlackGateway(self.client, self.redactor).post(channel, message, thread_ts=thread_ts,
                                                             broadcast=broadcast)

    # -- escalation -----------------------------------------------------------------------

    def escalate(self, environment: str, level: int, *, reason: str = "", actor: str, run_id: str | None = None,
                 origin_channel: str | None = None, thread: Thread | None = None,
                 automatic: bool = False) -> EscalationReport:
        """Raise an escalation; ValueError (one line) for an unknown level or a reason too long."""
        escalation = levels.prepare(self.settings, self.store, environment, level, reason=reason, actor=actor,
                                    run_id=run_id, automatic=automatic, secrets=self.secrets)
        if thread is None and level >= 2:
            run = self.runs.get(escalation.run_id) if escalation.run_id else None
            thread = self.thread_of_run(run)
        if thread is not None:
            channel, thread_ts = thread
        else:
            channel = origin_channel if level == 1 and origin_channel else self._channel(origin_channel)
            thread_ts = None
        report = EscalationReport(escalation, channel=channel)
        message = self.message(escalation)
        posted = self._posted(channel, message, thread_ts=thread_ts, broadcast=thread_ts is not None)
        home = self._channel(None)
        if posted is not None and posted.failure is not None and posted.failure.unreachable and thread_ts is None \
                and home and home != channel:
            # the bot cannot post where level 1 was asked for: it goes where escalations go (a pointer follows)
            channel = report.channel = home
            posted = self._posted(channel, message)
        if posted is not None:
            report.ts = posted.ts
            report.slack_error = str(posted.failure) if posted.failure else None
            report.file_error = str(posted.file_failure) if posted.file_failure else None
        levels.record(self.store, escalation, channel=channel, ts=report.ts, posted=report.ts is not None)
        reply_to = thread_ts or report.ts
        try:
            report.issue = levels.open_github_issue(self.settings, self.store, escalation, secrets=self.secrets)
        except GitHubError as exc:
            report.github_error = self.redactor(str(exc))
            log.warning("escalation level %s on %s: %s", level, environment, report.github_error)
        if report.issue is not None or report.github_error is not None:
            self._post(channel, blocks.github_issue_reply(report.issue, report.github_error), thread_ts=reply_to)
        hook = self.settings.escalation.pause_hook
        if escalation.config.pause_hook and hook is not None:
            report.hook = levels.run_pause_hook(hook, environment=environment, level=level, reason=escalation.reason,
                                                run_id=escalation.run_id, secrets=self.secrets,
                                                withhold=levels.withheld_variables(self.settings))
            levels.record_hook(self.store, escalation, report.hook)
            if not report.hook.ok:
                log.error("escalation level %s on %s: %s", level, environment, self.redactor(report.hook.line()))
            self._post(channel, blocks.pause_hook_reply(report.hook), thread_ts=reply_to)
        return report

    def message(self, escalation: levels.Escalation) -> blocks.Message:
        settings = self.settings
        sections = [(levels.section_title(n), levels.section_url(settings, n)) for n in escalation.situation.sections]
        summary: list[str] = []
        upload = None
        if escalation.incident is not None:
            summary = incidents.render_mrkdwn(escalation.incident, secrets=self.secrets)
            upload = blocks.FileUpload(escalation.incident.title, incidents.filename(escalation.incident),
                                       levels.render_markdown(settings, escalation, secrets=self.secrets))
        return blocks.escalation_level_message(escalation, sections=sections, links=settings.escalation.links,
                                               dashboards=settings.escalation.dashboards, summary=summary,
                                               summary_file=upload, hook=settings.escalation.pause_hook)

    def markdown(self, escalation: levels.Escalation) -> str:
        return levels.render_markdown(self.settings, escalation, secrets=self.secrets)

    # -- incident summaries ---------------------------------------------------------------

    def incident(self, *, run: Run | None = None, run_id: str | None = None,
                 environment: str | None = None) -> incidents.Incident:
        """incidents.UnknownRun for an unknown run id."""
        return incidents.gather(self.store, environment=environment, run_id=run_id, run=run,
                                log_lines=self.settings.escalation.incident.log_lines, secrets=self.secrets)

    def post_incident(self, *, run: Run | None = None, run_id: str | None = None, environment: str | None = None,
                      thread: Thread | None = None, actor: str = AUTOMATIC_ACTOR) -> IncidentReport:
        """The §7.3 summary in the run's thread (else the channel), the Markdown as a file."""
        incident = self.incident(run=run, run_id=run_id, environment=environment)
        markdown = incidents.render_markdown(incident, secrets=self.secrets)
        report = IncidentReport(incident, markdown)
        thread = thread or self.thread_of_run(incident.run)
        report.channel, thread_ts = thread if thread is not None else (self._channel(None), None)
        message = blocks.incident_message(incident.title, incidents.render_mrkdwn(incident, secrets=self.secrets),
                                          blocks.FileUpload(incident.title, incidents.filename(incident), markdown))
        report.ts, report.slack_error = self._post(report.channel, message, thread_ts=thread_ts)
        self.store.record(actor=actor, action="incident", environment=incident.environment,
                          outcome="posted" if report.ts else "written", run_id=incident.run_id,
                          summary=self.redactor(incident.title),
                          details={"channel": report.channel, "ts": report.ts, "thread_ts": thread_ts})
        return report

    # -- automatic ------------------------------------------------------------------------

    def after_run(self, run_id: str, *, thread: Thread | None = None) -> EscalationReport | IncidentReport | None:
        """What a finished run calls. None when it did not fail. A failed rollback escalates to
        level 2 and data loss to level 3 (each once per run); any other failure gets its summary.
        An interrupted run is followed up once, whoever calls (the start or replica that found it,
        a shutdown, the run's own thread finishing late): None for every caller but the first."""
        run = self.runs.get(run_id)
        if run is None or run.state not in FAILED_RUN_STATES:
            return None
        claimant = f"{AUTOMATIC_ACTOR} on {self.runs.host} (pid {os.getpid()})"
        if run.state == INTERRUPTED and not self.runs.claim_follow_up(run.id, INCIDENT_CLAIM, claimant):
            return None
        thread = thread or self.thread_of_run(run)
        automatic = levels.automatic_level(run)
        # The event check sees an earlier escalation at this level or higher; the claim makes two
        # callers racing past it (replicas following up the same run) escalate once.
        if automatic is not None and not levels.already_escalated(self.store, run.id, automatic[0]) and \
                self.runs.claim_follow_up(run.id, f"{ESCALATION_CLAIM}-{automatic[0]}", claimant):
            level, reason = automatic
            report = self.escalate(run.environment, level, reason=levels.check_reason(reason[:levels.MAX_REASON]),
                                   actor=AUTOMATIC_ACTOR, run_id=run.id, thread=thread, automatic=True)
            if report.escalation.incident is not None:
                return report
        return self.post_incident(run=run, thread=thread)

    def after_restore(self, request: Any) -> EscalationReport | IncidentReport | None:
        """ApprovalKind.on_failed of restores: a failed restore escalates to level 2, once. Its run
        (bot.restores.restore_kind) goes through after_run (levels.automatic_level: restore -> 2, one claim
        per run and level); a restore whose run was interrupted is none of this: the interruption's
        follow-up posts its summary (Migrations.follow_up_interrupted)."""
        if getattr(request, "state", None) != "failed":
            return None
        result = request.result or {}
        if result.get("outcome") == INTERRUPTED:
            return None
        thread = (request.channel, request.message_ts) if request.channel and request.message_ts else None
        run_id = result.get("run_id")
        if run_id and self.runs.get(str(run_id)) is not None:
            return self.after_run(str(run_id), thread=thread)
        # a restore that failed before its run was recorded (the state database refused the row)
        reason = f"the restore of backup #{request.params.get('backup_id')} failed: {request.result_summary}"
        return self.escalate(request.environment, 2, reason=levels.check_reason(reason[:levels.MAX_REASON]),
                             actor=AUTOMATIC_ACTOR, thread=thread, automatic=True)


__all__ = ["AUTOMATIC_ACTOR", "EscalationReport", "Escalator", "IncidentReport"]
