"""Restore as an approval kind: Slack's `/migrate restore` and the CLI's `restore --yes` share it."""
from __future__ import annotations

import logging
from typing import Any, Callable

from bot import approvals, blocks
from bot.redaction import Redactor
from runbook.config import Settings
from runbook.state import Store

log = logging.getLogger(__name__)

# How often a running restore's progress note on its request is refreshed.
RESTORE_NOTE_EVERY = 3.0


def restore_kind(settings: Settings, store: Store, *,
                 on_progress: Callable[[str, str], None] | None = None,
                 on_failed: Callable[[Any], Any] | None = None) -> "approvals.ApprovalKind":
    """The restore kind: runbook.backup.restore once approved (it takes the operation lock and the
    safety backup, stops if the revision is no longer the one approved, and records itself as a run
    of kind "restore", so a restore whose process dies is reaped and followed up like a migration:
    bot.migrations.follow_up_interrupted). `on_failed(request)`: what a failed restore triggers (the
    level-2 escalation, runbook §7.2)."""
    def execute(request: Any) -> approvals.Outcome:
        from runbook import backup as backups
        from runbook.state.runs import FAILED, INTERRUPTED, RunStore, new_run_id
        from runbook.target import password_of, redact

        params = request.params
        secret = password_of(settings.environments[request.environment].dsn)
        run_id = new_run_id()
        progress = None
        if on_progress is not None:
            def progress(p: Any) -> None:
                on_progress(request.id, f"{p.phase}: {blocks.size(p.bytes_written)} after {blocks.duration(p.elapsed)}")
        try:
            backups.restore(request.environment, settings.environments[request.environment], store,
                            params["backup_id"], expected_revision=list(params["expected_revision"]),
                            tables=params["tables"] if params["mode"] == "tables" else (),
                            actor=request.requester, progress=progress, progress_every=RESTORE_NOTE_EVERY,
                            approval_id=request.id, run_id=run_id)
        except backups.BackupError as exc:
            outcome = approvals.Outcome(False, redact(str(exc), secret), {"run_id": run_id, "outcome": FAILED})
        except Exception as exc:      # the engine recorded the run failed; its failure is followed up like any other
            log.error("restore run %s failed: %s", run_id, redact(repr(exc), secret))
            outcome = approvals.Outcome(False, f"the restore failed unexpectedly ({type(exc).__name__}); the bot's "
                                               "log has the details", {"run_id": run_id, "outcome": FAILED})
        else:
            outcome = None
        marked = RunStore(store).get(run_id)
        if marked is not None and (marked.state == INTERRUPTED or outcome is None):
            # interrupted meanwhile (a shutdown, or a reaper), or restored: what its row says
            return restore_outcome(marked)
        return outcome or approvals.Outcome(True, f"restored into {request.environment}", {"run_id": run_id})

    from bot.migration_blocks import restore_again_command

    def result_blocks(request: Any) -> list[dict[str, Any]]:
        from bot.migration_blocks import restore_run_blocks

        return restore_run_blocks(request.result, request.params, request.environment)

    return approvals.ApprovalKind(
        "restore", "Restore", execute,
        summary=lambda r: blocks.restore_summary(r.params, r.environment),
        describe=lambda r: blocks.restore_request_blocks(r.params, r.state),
        result_blocks=result_blocks,
        on_failed=on_failed,
        outcome_of_run=restore_outcome,
        ask_again=lambda r: restore_again_command(r.environment, r.params))


def restore_outcome(run: Any) -> "approvals.Outcome":
    """What a restore's request ends with, read from its run's row (runbook.backup.restore records the
    facts there): the executor's own result once restored, an interrupted run's (interrupted_outcome), or
    one that finished while the process holding the request died before closing it
    (ApprovalService.close_left_after_run)."""
    from runbook.state.runs import INTERRUPTED, SUCCEEDED

    if run.state == INTERRUPTED:
        from bot.migration_kinds import interrupted_outcome

        return interrupted_outcome(run)
    raw = run.result or {}
    if run.state != SUCCEEDED:
        return approvals.Outcome(False, run.outcome.error or run.summary or "the restore failed",
                                 {"run_id": run.id, "outcome": run.state})
    summary = run.summary          # "backup #N restored into ENV, now at revision R; safety backup #M"
    mismatches = raw.get("mismatches") or {}
    if mismatches:
        summary += f"; {len(mismatches)} table(s) differ from the backup's row counts"
    return approvals.Outcome(True, summary, {
        key: raw.get(key) for key in ("revision_before", "revision_after", "row_counts_after", "mismatches",
                                      "safety_backup_id", "duration_seconds")} | {"run_id": run.id})


def restore_with_yes(settings: Settings, store: Store, environment: str, backup_id: str, tables: Any, actor: str,
                     *, redactor: "Redactor") -> Any:
    """The CLI's `restore ID [--table T]... --yes`: the Slack path's plan and guards, `--yes` recorded
    as `actor`'s approval (decision "yes" + an "approved" event), run in this process. Returns the
    runbook.state.approvals.ApprovalRequest (state done or failed, `result`, `result_summary`).
    Raises runbook.backup.BackupError or bot.approvals.ApprovalError when refused up front."""
    from runbook import backup as backups

    env = settings.environments[environment]
    plan = backups.plan_restore(environment, env, store, backup_id, tables=tuple(tables or ()))
    if plan.blockers:
        raise approvals.ApprovalError("; ".join(plan.blockers))
    service = approvals.ApprovalService(settings, store, None, redactor=redactor)
    service.register(restore_kind(settings, store))
    return service.run_confirmed("restore", environment, actor, backups.plan_to_params(plan))


__all__ = ["RESTORE_NOTE_EVERY", "restore_kind", "restore_outcome", "restore_with_yes"]
