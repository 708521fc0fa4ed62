"""Issue 4, the Slack half: `/migrate run`, `/migrate rollback`, `/migrate validate`, and what
follows a run (runbook §3–§6.5). The engine (runbook/migrate/, validate.py, rollback.py) does
the work; this module asks, watches and reports.

* Asking. `request(...)` resolves the typed target against the app's scripts (migrate.propose),
  refuses up front in one line what must not be asked at all (unknown revision, nothing to do,
  an irreversible downgrade, which points to `/migrate restore`), and otherwise posts an approval
  request (kinds "migrate" and "rollback" of bot/approvals.py) pinned to the current revision;
  a long SQL preview goes up as a file in the request's thread.
* Running. The kinds' executor (`migration_kind`) calls runbook.ops.run on Flows' executor with
  `expected_current` from the request: every guard (the database unmoved, the no-go gate, the
  backup that protects the run) is decided there. The request message shows what protects the run
  (runbook.protection), or a "Back up first" button that takes a backup now.
* Watching (§4). `LiveRun` posts ONE message in the request's thread and updates it in place
  (chat.update by its ts) at most every `LiveRun.every` seconds from its own thread: the step,
  elapsed time, active queries, idle transactions and lock waits with their roots, from
  runbook.activity.snapshot on a monitor connection of its own; the migration's session
  (application_name rbmigrate/<run id>) is marked, and called out when it waits on a lock. A lock
  timeout's root blocker is posted in the thread as it happens. At the end: the log file (§3.3),
  the validation report (§5), and, when something went wrong, the §6.5 recommendation.
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
import threading
import time
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence


from bot import approvals, blocks
from bot import migration_blocks as mblocks
from runbook import activity as activities
from runbook import backup as backups
from runbook import authz, migrate, ops, rollback
from runbook.validate import ValidationReport
from runbook.config import ConfigError, Environment, Settings
from runbook.gate import GateOverride
from runbook.ops import NothingToDo, Refused, RunWatcher
from runbook.revisions import RevisionError
from runbook.state import StateError
from runbook.state.approvals import DONE, EXECUTING, ID_PATTERN, PENDING, ApprovalRequest, ApprovalStore
from runbook.state.models import utcnow
from runbook.state.runs import INTERRUPTED, RunStore, interruption, new_run_id
from runbook.target import Target, TargetError

log = logging.getLogger(__name__)

KIND_OF_DIRECTION = {"upgrade": "migrate", "downgrade": "rollback"}
COMMAND_OF_DIRECTION = {"upgrade": "run", "downgrade": "rollback"}
RECOMMENDATION = "recommendation"
# A recommendation's button stays usable this long; what it opens is checked against the database
# as it is then (a new request, pinned to the revision of that moment).
RECOMMENDATION_TTL = timedelta(hours=24)
# How often the supervisor hands progress over; the monitor renders at most every LiveRun.every.
PROGRESS_EVERY = 0.5
# The job_claims name of an interrupted run's monitor update (RunStore.claim_follow_up): once per run.
MONITOR_CLAIM = "monitor"
_REQUEST_ID = re.compile(ID_PATTERN)
_SLACK_ID = re.compile(r"^[A-Z0-9]{2,40}$")


# ---------------------------------------------------------------------------
# Facts shared by the request, the executor and the buttons


def proposal_params(proposal: migrate.Proposal, typed: str) -> dict[str, Any]:
    """What a migrate / rollback request holds: the executor's inputs (direction, the resolved
    target, the revision approved at) and the facts the message shows, the risk review among them."""
    from runbook.review import review_to_json

    return {
        "direction": proposal.direction, "target": proposal.target, "typed": typed,
        "current": list(proposal.current), "steps": list(proposal.steps),
        "revisions": [{"revision": r.revision, "message": r.message, "reversible": r.reversible,
                       "irreversible_reason": r.irreversible_reason} for r in proposal.revisions],
        "sql_preview": proposal.sql_preview, "touched_tables": list(proposal.touched_tables),
        "risk": review_to_json(proposal.risk), "risk_error": proposal.risk_error,
    }


def checked_proposal(name: str, env: Environment, direction: str, typed: str, command_text: str, *, store,
                     project: Any = None, cli: bool = False) -> migrate.Proposal:
    """runbook.ops.propose with this surface's way to restore in an irreversible rollback's refusal."""
    how = ("`runbook-bot backups`, then `runbook-bot restore ID [--table T]... --yes`" if cli else
           f"`/migrate backups {name}`, then `/migrate restore {name} ID [tables=a,b]`")
    rehearse = (f"`runbook-bot rehearse --env {name} --to {{target}}`" if cli else
                f"`/migrate rehearse {name} {{target}}`")
    return ops.propose(name, env, direction, typed, command_text, store=store, project=project, restore_hint=how,
                       rehearse_hint=rehearse)


def gate_override_of(params: Mapping[str, Any]) -> GateOverride | None:
    """The no-go gate override a request was asked with (runbook.ops authorises it when the run starts)."""
    given = params.get("gate_override")
    return GateOverride(str(given["actor"]), str(given["reason"])) if given else None


def outcome_line(result: migrate.MigrationResult, *, advice_where: str = "in this thread") -> str:
    """One line for the request message and the audit trail; `advice_where`: where the §6.5
    recommendation is shown (Slack: the request's thread; the CLI prints it with the result)."""
    frm = ", ".join(result.from_revisions) or "base"
    to = ", ".join(result.to_revisions) or "base"
    name = result.environment
    if result.outcome == "succeeded":
        validation = "" if result.validation is None else (
            "; validation passed" if result.validation.passed else "; validation FAILED")
        return f"{name} went from {frm} to {to} in {blocks.duration(result.duration_seconds)}{validation}"
    if result.outcome == "nothing to do":
        return f"nothing to do: {name} was already at {to}"
    if result.outcome == "refused":
        return f"stopped before changing anything: {result.error}"
    return f"{result.outcome}: {result.error or 'see the log'}; {name} is at {to}; what to do now is {advice_where}"


def interrupted_outcome(run: Any) -> approvals.Outcome:
    """What the request of a run marked interrupted (runbook.state.runs.Run) ends with, whoever closes
    it (Migrations.follow_up_interrupted, or the run's own executor when it outlived the marking): the
    step it was in and why, and the facts migration_blocks.interrupted_result_blocks renders."""
    known = [r.strip() for r in run.from_revision.split(",") if r.strip()] if run.from_revision else None
    details = {"run_id": run.id, "kind": run.kind, "outcome": INTERRUPTED, "environment": run.environment,
               "step": run.step, "from": known, "target": run.target_revision,
               "started_at": run.started_at.isoformat(),
               "interrupted_at": run.finished_at.isoformat() if run.finished_at else None,
               "host": run.host, "pid": run.pid, "log_path": run.log_path}
    if run.kind == "restore":           # what it was restoring (bot.restores.restore_kind keeps it on the run)
        details.update({key: run.detail(key) for key in ("backup_id", "mode", "tables")})
    return approvals.Outcome(False, f"{interruption(run)}; not resumed", details)


def result_details(result: migrate.MigrationResult, backup_id: int | None) -> dict[str, Any]:
    """What the request keeps of the run (the runs table keeps all of it)."""
    from runbook.rehearsal_record import comparison_to_json

    return {"run_id": result.run_id, "outcome": result.outcome, "from": list(result.from_revisions),
            "to": list(result.to_revisions), "target": result.target, "attempts": result.attempts,
            "duration_seconds": round(result.duration_seconds, 3), "error": result.error,
            "validation": None if result.validation is None else result.validation.passed,
            "backup_id": backup_id, "log_path": result.log_path,
            "rehearsal": comparison_to_json(result.rehearsal)}


# ---------------------------------------------------------------------------
# The approval kinds (Slack and the CLI's --yes share them)


def migration_kind(settings: Settings, store, direction: str, *,
                   watch: Callable[[ApprovalRequest, str], RunWatcher | None] | None = None,
                   project: Callable[[str], Any] | None = None,
                   skip_backup: str | None = None, advice_where: str = "in this thread",
                   members_of: Callable[[str], Sequence[str]] | None = None) -> approvals.ApprovalKind:
    """The "migrate" (upgrade) or "rollback" (downgrade) kind: runbook.ops.run once approved. `watch(request,
    run_id)` gives the run's watcher; `project(name)` the environment's cached AlembicProject;
    `skip_backup` why no backup may be taken first (the CLI's --no-backup), which is recorded instead."""
    name_of_kind = KIND_OF_DIRECTION[direction]

    def execute(request: ApprovalRequest) -> approvals.Outcome:
        name, params = request.environment, request.params
        run_id = new_run_id()
        watcher = watch(request, run_id) if watch is not None else None
        try:
            result = ops.run(settings, store, name, direction, target=params["target"],
                             expected_current=params["current"], actor=request.requester, run_id=run_id,
                             approval_id=request.id, watcher=watcher, skip_backup=skip_backup,
                             gate_override=gate_override_of(params), members_of=members_of,
                             project=project(name) if project else None, progress_every=PROGRESS_EVERY)
        except (ops.Refused, approvals.Refusal) as exc:      # an override no longer allowed: nothing ran
            return approvals.Outcome(False, f"stopped before changing anything: {exc}",
                                     {"run_id": None, "outcome": "refused", "error": str(exc)})
        if watcher is not None:
            watcher.finished(result, result.backup)
        marked = RunStore(store).get(run_id) if store is not None else None
        if marked is not None and marked.state == INTERRUPTED:    # a shutdown (or a reaper) marked it meanwhile
            return interrupted_outcome(marked)
        return approvals.Outcome(result.ok, outcome_line(result, advice_where=advice_where),
                                 result_details(result, getattr(result.backup, "id", None)))

    def describe(request: ApprovalRequest) -> list[dict[str, Any]]:
        from bot.review_blocks import risk_blocks

        env = settings.environments[request.environment]
        finished = request.state in blocks.FINISHED_STATES
        protected = None if finished else ops.protection_now(store, request.environment, env,
                                                             request.params.get("current") or [])
        risk = risk_blocks(request.params.get("risk"), environment=request.environment,
                           error=request.params.get("risk_error"), low_as_count=True)
        rehearsed = ops.rehearsal_of_range(store, request.environment, env, request.params.get("current") or [],
                                           str(request.params.get("target"))) \
            if request.params.get("revisions") else None
        return mblocks.migration_request_blocks(request.params, request_id=request.id,
                                                pending=request.state == PENDING, protection=protected, risk=risk,
                                                rehearsal=rehearsed, environment=request.environment,
                                                finished=finished)

    return approvals.ApprovalKind(
        name_of_kind, "Migration" if direction == "upgrade" else "Rollback", execute,
        command=COMMAND_OF_DIRECTION[direction],
        summary=lambda r: mblocks.migration_summary(r.params, r.environment),
        describe=describe,
        result_blocks=lambda r: mblocks.migration_result_blocks(r.result),
        ask_again=lambda r: " ".join(part for part in ("/migrate", COMMAND_OF_DIRECTION[direction], r.environment,
                                                       str(r.params.get("typed") or "")) if part))


def run_with_yes(settings: Settings, store, proposal: migrate.Proposal, typed: str, actor: str, *,
                 redactor: Any, watcher: RunWatcher, skip_backup: str | None = None,
                 gate_override: GateOverride | None = None) -> ApprovalRequest:
    """The CLI's `migrate|rollback [--to REV] --yes` once `checked_proposal(..., cli=True)` let it through:
    `--yes` recorded as `actor`'s approval (ApprovalService.run_confirmed: the same audit trail as a
    click) and the run (runbook.ops.run, every guard included), in this process, reporting to `watcher`;
    `skip_backup`: the --no-backup that skips the backup, `gate_override` the --override-gate that lets
    it through a closed no-go gate. Returns the request (done or failed)."""
    direction = proposal.direction
    service = approvals.ApprovalService(settings, store, None, redactor=redactor)
    service.register(migration_kind(settings, store, direction, watch=lambda _request, _run_id: watcher,
                                    skip_backup=skip_backup,
                                    advice_where="printed with the result (`runbook-bot incident` for §7.3)"))
    params = proposal_params(proposal, typed)
    if gate_override is not None:
        params["gate_override"] = {"actor": gate_override.actor, "reason": gate_override.reason}
    return service.run_confirmed(KIND_OF_DIRECTION[direction], proposal.environment, actor, params)


# ---------------------------------------------------------------------------
# The live monitor (§4)


class LiveRun(RunWatcher):
    """One run's messages in its request's thread: the monitor (posted once, then chat.update by its
    ts at most every `every` seconds, from a thread of its own so Slack never slows the supervisor),
    lock-timeout reports as they happen, and at the end the log, validation and recommendation.

    Slack's chat.update budget is shared with the request's own updates and backup progress: after
    a 429 the monitor waits out its Retry-After and doubles its interval (up to `slowest`) rather than
    dropping updates into more 429s; the final view waits its turn and is always written (it retries
    past rate limits: Flows.update(final=True))."""

    every = 2.0
    slowest = 16.0

    def __init__(self, desk: "Migrations", request: ApprovalRequest, run_id: str):
        self.desk, self.request, self.run_id = desk, request, run_id
        self.env = desk.settings.environments[request.environment]
        self.migrator_app = migrate.migrator_application_name(run_id)
        self.ts: str | None = None
        self._latest: tuple[migrate.Progress, float] | None = None     # (progress, when it arrived)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._written_at = 0.0
        self._outcome: str | None = None
        self._thread: threading.Thread | None = None

    # -- what the supervisor calls (its thread) ----------------------------------------------

    def progress(self, progress: migrate.Progress) -> None:
        with self._lock:
            self._latest = (progress, time.monotonic())
            start = self._thread is None and progress.phase not in ("locking", "checking")
            if start:
                self._thread = threading.Thread(target=self._watch, name=f"monitor-{self.run_id}", daemon=True)
        if start:
            self._thread.start()

    def blocker(self, report: migrate.BlockerReport) -> None:
        self.desk.post_in_thread(self.request, mblocks.blocker_message(report, self.request.environment))

    def finished(self, result: migrate.MigrationResult, backup: Any) -> None:
        self._outcome = result.outcome
        self._stop.set()
        if self._thread is None:
            return                      # refused before it started: the request's result says why
        self._thread.join(timeout=60)
        self._upload_log(result)
        if result.validation is not None:
            self.desk.post_in_thread(self.request, mblocks.validation_message(result.validation))
        if result.recommendation is not None:
            self.desk.recommend(result.environment, rollback.recommendation_to_json(result.recommendation),
                                run_facts(result), backup=backup, requester=self.request.requester,
                                thread=(self.request.channel, self.request.message_ts))
        if not result.ok and result.outcome != "refused" and self.desk.after_run is not None:
            try:
                self.desk.after_run(result.run_id, thread=(self.request.channel, self.request.message_ts))
            except Exception as exc:   # the failure is reported already; a follow-up must not hide it
                log.error("run %s: after_run failed: %s", result.run_id, self.desk.redactor(repr(exc)))

    # -- the monitor's own thread ----------------------------------------------------------

    def _watch(self) -> None:
        target = Target(self.env.dsn, connect_timeout=self.env.connect_timeout_seconds)
        try:
            with target.connect("migrate-live", statement_timeout=self.env.watch.statement_timeout,
                                lock_timeout=self.env.watch.lock_timeout) as conn:
                self._render_until_stopped(conn)
        except TargetError as exc:
            log.warning("run %s: the live monitor has no connection (%s)", self.run_id, self.desk.redactor(str(exc)))
            self._render_until_stopped(None)

    def _wait_before_next(self) -> float:
        """Until the next write is due: `every` after the last one, and not before a rate limit Slack
        put on the thread's channel has passed."""
        cooling = self.desk.flows.gateway.cooling(self.request.channel) if self.ts is not None else 0.0
        return max(0.0, self._written_at + self.every - time.monotonic(), cooling)

    def _render_until_stopped(self, conn: Any) -> None:
        while not self._stop.wait(self._wait_before_next()):
            self._write(conn)
        # the last word waits for its turn too: never two writes within `every`
        remaining = self._wait_before_next()
        if remaining > 0:
            time.sleep(remaining)
        self._write(conn, final=True)

    def _write(self, conn: Any, final: bool = False) -> None:
        with self._lock:
            progress, arrived = self._latest if self._latest else (None, 0.0)
        if progress is None:
            return
        if not final:      # the elapsed time keeps counting between two reports of the supervisor
            late = time.monotonic() - arrived
            progress = replace(progress, elapsed_seconds=progress.elapsed_seconds + late,
                               step_elapsed_seconds=progress.step_elapsed_seconds + late
                               if progress.step_elapsed_seconds else 0.0)
        notes: list[str] = []
        snapshot = None
        if conn is not None:
            try:
                snapshot = activities.snapshot(conn, long_query_seconds=0.0, idle_in_transaction_seconds=0.0,
                                               query_chars=300)
            except Exception as exc:      # psycopg errors and a lost connection alike: say so, keep going
                notes.append(f"activity not read: {type(exc).__name__}")
        message = mblocks.monitor_message(progress, snapshot, run_id=self.run_id, migrator_app=self.migrator_app,
                                          outcome=self._outcome if final else None, notes=notes)
        try:
            interrupted = self._interrupted() if final and self.ts is not None else None
            if interrupted is not None:
                # marked interrupted while it ran (a shutdown): the same final word the follow-up writes, once
                self.desk.close_monitor(interrupted, where=(self.request.channel, self.ts))
            elif self.ts is None:
                self.ts = self.desk.post_in_thread(self.request, message)
                if self.ts is not None:
                    self._remember_monitor(final)
            elif self.desk.flows.update(self.request.channel, self.ts, message, final=final):
                if final:
                    self._mark_final()
            elif not final and self.desk.flows.gateway.cooling(self.request.channel):
                self.every = min(self.every * 2, self.slowest)      # rate limited: slow down, for this run
                log.warning("run %s: Slack rate-limited the monitor; updating every %.0f s now", self.run_id,
                            self.every)
        except Exception as exc:   # a Slack hiccup must never stop the monitor, let alone the run
            log.warning("run %s: monitor message not written (%s)", self.run_id, type(exc).__name__)
        self._written_at = time.monotonic()

    def _remember_monitor(self, final: bool = False) -> None:
        """Where the monitor is, kept on the run: after this process dies, whoever follows the run up
        closes it (Migrations.close_monitor); the ts in memory dies with the process. "rendered": the run
        state it shows, so a final update Slack never took is made again (Migrations.reconcile_monitors)."""
        try:
            runs = RunStore(self.desk.store)
            run = runs.get(self.run_id) if final else None
            runs.set_details(self.run_id, monitor={"channel": self.request.channel, "ts": self.ts,
                                                   "rendered": run.state if run is not None else "running"})
        except Exception as exc:   # the state database failing must not stop the monitor
            log.warning("run %s: the monitor's ts was not kept (%s)", self.run_id, self.desk.redactor(repr(exc)))

    def _mark_final(self) -> None:
        """Its final view reached Slack: the monitor shows the run as it ended."""
        try:
            runs = RunStore(self.desk.store)
            run = runs.get(self.run_id)
            if run is not None and run.state != "running":
                runs.mark_monitor(self.run_id, run.state)
        except Exception as exc:   # the reconcile writes it once more at worst
            log.warning("run %s: the monitor's final view was not marked (%s)", self.run_id,
                        self.desk.redactor(repr(exc)))

    def _interrupted(self) -> Any:
        try:
            run = RunStore(self.desk.store).get(self.run_id)
        except Exception:
            return None
        return run if run is not None and run.state == INTERRUPTED else None

    def _upload_log(self, result: migrate.MigrationResult) -> None:
        if not result.log_path:
            return
        try:
            text = Path(result.log_path).read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            self.desk.post_in_thread(self.request, blocks.error_message(f"The log could not be read ({exc.strerror})."))
            return
        upload = mblocks.log_file(text, result.environment, result.direction, result.run_id,
                                  Path(result.log_path).name)
        self.desk.upload_in_thread(self.request.channel, self.request.message_ts, upload)


def run_facts(result: migrate.MigrationResult) -> dict[str, Any]:
    return {"environment": result.environment, "what": mblocks.VERBS.get(result.direction, "The run"),
            "from": list(result.from_revisions), "to": list(result.to_revisions),
            "at": result.started_at.isoformat(), "error": result.error, "log_tail": result.log_tail,
            "run_id": result.run_id}


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
        from runbook.rehearse import summary_line
        from runbook.state.runs import RUNNING

        if request.state != PENDING or request.is_due(utcnow()):
            state = request.state if request.state != PENDING else "expired"
            raise approvals.Refusal(f"This request is already {state}; nothing was rehearsed.", "closed")
        name, params = request.environment, request.params
        span = mblocks.rehearsal_start(params)
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


__all__ = ["LiveRun", "MONITOR_CLAIM", "Migrations", "NothingToDo", "RECOMMENDATION", "Refused", "RunWatcher",
           "checked_proposal", "gate_override_of", "interrupted_outcome", "migration_kind", "outcome_line", "proposal_params", "result_details", "run_facts", "run_with_yes"]
