"""`backup`, `backups` (§2) and `restore` (§6.2–6.3; without --yes, its plan)."""
from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from runbook.config import Settings

from bot.cli.common import (EXIT_ERROR, EXIT_NO_GO, EXIT_OK, backup_progress_printer, cli_actor, emit, open_store,
                            store_or_report)
from bot.cli.incidents import after_failure


def cmd_backup(settings: Settings, args) -> int:
    from runbook import backup as backups

    name, env = settings.environment(args.env)
    store = store_or_report(settings)
    if store is None:
        return EXIT_ERROR
    kind = "schema" if args.schema_only else ("tables" if args.table else "full")
    actor = cli_actor()
    try:
        made = backups.backup(name, env, store, kind=kind, tables=tuple(args.table), verify=args.verify,
                              actor=actor, progress=backup_progress_printer())
    except backups.BackupFailed as exc:
        made = exc.backup
    except backups.BackupError as exc:
        store.record(actor=actor, action="backup", environment=name, outcome="error", summary=str(exc))
        print(f"runbook-bot: {exc}", file=sys.stderr)
        return EXIT_ERROR
    store.record(actor=actor, action="backup", environment=name, outcome=made.status,
                 summary=f"#{made.id} {made.name}: {made.status}" + (f" ({made.error})" if made.error else ""),
                 details={"backup_id": made.id, "level": made.level, "sha256": made.sha256,
                          "location": made.location})
    from bot import text

    emit(args, lambda: backups.backup_to_json(made), lambda: text.backup_text(made))
    return EXIT_OK if made.status == "verified" else EXIT_NO_GO


def cmd_backups(settings: Settings, args) -> int:
    from runbook import backup as backups

    name, _env = settings.environment(args.env)
    store = store_or_report(settings)
    if store is None:
        return EXIT_ERROR
    found = backups.list_backups(store, name)
    from bot import text

    emit(args, lambda: {"environment": name, "backups": [backups.backup_to_json(b) for b in found]},
          lambda: text.backups_text(name, found))
    return EXIT_OK


def _restore_plan_only(settings: Settings, args, name: str, env) -> int:
    """`restore ID` without --yes: the plan an approver would read in Slack (what is replaced, rows
    now and in the backup, what a full restore drops), then exit 2; nothing is changed or recorded
    as an approval. A plan that cannot be made (unknown backup, unknown table) is refused, exit 1."""
    from bot import text
    from runbook import backup as backups

    store = store_or_report(settings)
    if store is None:
        return EXIT_ERROR
    try:
        plan = backups.plan_restore(name, env, store, args.id, tables=tuple(args.table or ()))
    except backups.BackupError as exc:
        store.record(actor=cli_actor(), action="restore.plan", environment=name, outcome="refused", summary=str(exc))
        print(f"runbook-bot: restore refused: {exc}", file=sys.stderr)
        return EXIT_NO_GO
    store.record(actor=cli_actor(), action="restore.plan", environment=name,
                 outcome="blocked" if plan.blockers else "shown",
                 summary=f"backup #{plan.backup.id}, {plan.mode} restore: plan shown without --yes",
                 details={"backup_id": plan.backup.id, "mode": plan.mode, "tables": list(plan.tables)})
    emit(args, lambda: {"environment": name, "confirmed": False, "blockers": list(plan.blockers),
                         **backups.plan_to_params(plan)},
          lambda: text.restore_plan_text(plan))
    print("runbook-bot: nothing was restored: " + ("the restore would be refused (see above)" if plan.blockers else
          "add --yes to run it (recorded as your approval)"), file=sys.stderr)
    return EXIT_ERROR


def cmd_restore(settings: Settings, args) -> int:
    """`restore ID [--table T]... --yes`: the Slack path's plan and guards (revision check, safety
    backup, one transaction); --yes stands for the approval and is audited as yours."""
    from bot import approvals
    from bot.redaction import Redactor
    from bot.restores import restore_with_yes
    from runbook import backup as backups
    from runbook.state import StateError

    name, env = settings.environment(args.env)
    if not args.yes:
        return _restore_plan_only(settings, args, name, env)
    try:
        store = open_store(settings)
        request = restore_with_yes(settings, store, name, args.id, args.table, cli_actor(),
                                   redactor=Redactor(settings))
    except StateError as exc:
        print(f"runbook-bot: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except (backups.BackupError, approvals.ApprovalError) as exc:
        print(f"runbook-bot: restore refused: {exc}", file=sys.stderr)
        return EXIT_NO_GO
    result = request.result or {}
    done = request.state == "done"
    if not done:
        after_failure(settings, store, lambda escalator: escalator.after_restore(request))

    def as_text() -> str:
        out = [f"Restore {name} from backup #{request.params.get('backup_id')}: "
               f"{'DONE' if done else 'FAILED'}", f"  {request.result_summary}"]
        if result.get("run_id"):
            out.append(f"  run: {result['run_id']} (`runbook-bot incident {result['run_id']}` for §7.3)")
        if done:
            out.append(f"  revision: {', '.join(result.get('revision_before') or []) or 'none'} -> "
                       f"{', '.join(result.get('revision_after') or []) or 'none'}")
            out += [f"  {table}: {n} rows" for table, n in (result.get("row_counts_after") or {}).items()]
        return "\n".join(out)

    emit(args, lambda: {"environment": name, "request": request.id, "state": request.state,
                         "summary": request.result_summary, "backup_id": request.params.get("backup_id"),
                         "mode": request.params.get("mode"), "tables": request.params.get("tables"),
                         **result}, as_text)
    return EXIT_OK if done else EXIT_NO_GO


__all__ = ["cmd_backup", "cmd_backups", "cmd_restore"]
