"""The approval kinds "migrate" and "rollback" (bot/approvals.py), which Slack and the CLI's --yes share,
and the facts a request keeps: what it asks (`proposal_params`, after `checked_proposal` let it through),
what its run ended with (`outcome_line`, `result_details`, `interrupted_outcome`). Once approved, a
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
from runbook.state.runs import INTERRUPTED, RunStore, interruption, new_run_id

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


__all__ = ["COMMAND_OF_DIRECTION", "KIND_OF_DIRECTION", "PROGRESS_EVERY", "checked_proposal", "gate_override_of",
           "interrupted_outcome", "migration_kind", "outcome_line", "proposal_params", "result_details",
           "run_with_yes"]
