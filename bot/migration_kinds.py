"""The approval kinds "migrate" and "rollback" (bot/approvals.py), which Slack and the CLI's --yes share,
and the facts a request keeps: what it asks (`proposal_params`, after `checked_proposal` let it through),
what its run ended with (`outcome_line`, `result_details`, `interrupted_outcome`, and `run_outcome` from the
run's row). Once approved, a
kind's executor calls runbook.ops.run with `expected_current` from the request: every guard (the
database unmoved, the no-go gate, the backup that protects the run) is decided there.

Split from bot/migrations.py (the desk that asks, follows up and takes clicks) and bot/live_run.py (the
live monitor a run reports to)."""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

from bot import approvals, blocks
from bot import migration_blocks as mblocks
from runbook import migrate, ops
from runbook.config import Environment, Settings
from runbook.gate import GateOverride
from runbook.ops import RunWatcher
from runbook.state.approvals import PENDING, ApprovalRequest
from runbook.state.runs import INTERRUPTED, SUCCEEDED, RunStore, interruption, new_run_id

KIND_OF_DIRECTION = {"upgrade": "migrate", "downgrade": "rollback"}
COMMAND_OF_DIRECTION = {"upgrade": "run", "downgrade": "rollback"}
# How often the supervisor hands progress over; the monitor renders at most every LiveRun.every.
PROGRESS_EVERY = 0.5


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
    return _outcome_text(result.environment, result.outcome, result.from_revisions, result.to_revisions,
                         result.duration_seconds, None if result.validation is None else result.validation.passed,
                         result.error, advice_where)


def _outcome_text(name: str, outcome: str, from_revisions: Sequence[str], to_revisions: Sequence[str],
                  duration_seconds: float, validation_passed: bool | None, error: str | None,
                  advice_where: str) -> str:
    """outcome_line's words, from the run's facts (a MigrationResult's, or what its row recorded)."""
    frm = ", ".join(from_revisions) or "base"
    to = ", ".join(to_revisions) or "base"
    if outcome == "succeeded":
        validation = "" if validation_passed is None else (
            "; validation passed" if validation_passed else "; validation FAILED")
        return f"{name} went from {frm} to {to} in {blocks.duration(duration_seconds)}{validation}"
    if outcome == "nothing to do":
        return f"nothing to do: {name} was already at {to}"
    if outcome == "refused":
        return f"stopped before changing anything: {error}"
    return f"{outcome}: {error or 'see the log'}; {name} is at {to}; what to do now is {advice_where}"


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

    return _details(result.run_id, result.outcome, list(result.from_revisions), list(result.to_revisions),
                    result.target, result.attempts, round(result.duration_seconds, 3), result.error,
                    None if result.validation is None else result.validation.passed, backup_id, result.log_path,
                    comparison_to_json(result.rehearsal))


def _details(run_id: str | None, outcome: str, frm: list[str] | None, to: list[str] | None, target: str | None,
             attempts: int, duration_seconds: float | None, error: str | None, validation: bool | None,
             backup_id: int | None, log_path: str | None, rehearsal: Any) -> dict[str, Any]:
    return {"run_id": run_id, "outcome": outcome, "from": frm, "to": to, "target": target, "attempts": attempts,
            "duration_seconds": duration_seconds, "error": error, "validation": validation,
            "backup_id": backup_id, "log_path": log_path, "rehearsal": rehearsal}


def run_outcome(run: Any, *, advice_where: str = "in this thread") -> approvals.Outcome:
    """What the request of a migrate or rollback run ends with, read from the run's row
    (runbook.state.runs.Run) because its executor could not say it: an interrupted run
    (interrupted_outcome), or one that finished while the process holding the request died before
    closing it (ApprovalService.close_left_after_run). The same line and facts as the executor's."""
    from runbook.protection import PROTECTED_BY

    if run.state == INTERRUPTED:
        return interrupted_outcome(run)
    recorded = run.outcome
    outcome = recorded.outcome or run.state
    duration = recorded.duration_seconds or 0.0
    summary = _outcome_text(run.environment, outcome, recorded.from_revisions or [], recorded.to_revisions or [],
                            duration, recorded.validation_passed, recorded.error, advice_where)
    backup_id = run.detail(PROTECTED_BY)
    return approvals.Outcome(run.state == SUCCEEDED, summary, _details(
        run.id, outcome, recorded.from_revisions, recorded.to_revisions, recorded.target, recorded.attempts,
        recorded.duration_seconds, recorded.error, recorded.validation_passed,
        int(backup_id) if backup_id is not None else None, run.log_path, (run.result or {}).get("rehearsal")))


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
        outcome_of_run=run_outcome,
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


__all__ = ["COMMAND_OF_DIRECTION", "KIND_OF_DIRECTION", "PROGRESS_EVERY", "checked_proposal", "gate_override_of",
           "interrupted_outcome", "migration_kind", "outcome_line", "proposal_params", "result_details", "run_outcome",
           "run_with_yes"]
