"""`migrate`, `rollback` (§3, §6.1: the Slack path's guards, --yes standing for the approval), `validate`
(§5) and `rehearse`."""
from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from runbook.config import Settings

from bot.cli.common import (EXIT_ERROR, EXIT_NO_GO, EXIT_OK, backup_progress_printer, cli_actor, emit, open_store,
                            store_or_report)
from bot.cli.incidents import after_failure


def _run_supervised(settings: Settings, args, direction: str) -> int:
    """`migrate` / `rollback`: the Slack path's checks and run (bot/migrations.py), with --yes standing for
    the approval: recorded by ApprovalService.run_confirmed, the same audit trail as a click in Slack.
    Like Slack's run it takes a verified full backup first, under the run's lock, unless one protects it
    (runbook.ops.run); --no-backup skips it, recorded. A failed backup stops the run
    before anything changes: one line, exit 2."""
    from bot import text
    from bot.logs import known_secrets
    from bot.migrations import NothingToDo, Refused, RunWatcher, checked_proposal, run_with_yes
    from bot.redaction import Redactor
    from runbook import migrate, ops
    from runbook.gate import GateOverride
    from runbook.revisions import RevisionError
    from runbook.state import StateError
    from runbook.target import TargetError
    from runbook.units import human_size

    action = "migrate" if direction == "upgrade" else "rollback"
    name, env = settings.environment(args.env)
    if not args.yes:        # the plan, as approvers see it in Slack, then exit 2
        try:
            store = open_store(settings)
            proposal = checked_proposal(name, env, direction, args.to, f"{action} --to {args.to}", store=store,
                                        cli=True)
            protected = ops.protection_now(store, name, env, proposal.current)
        except NothingToDo as exc:
            print(f"runbook-bot: {exc}", file=sys.stderr)
            return EXIT_OK
        except (Refused, StateError, TargetError, RevisionError) as exc:
            print(f"runbook-bot: {exc}", file=sys.stderr)
            return EXIT_ERROR
        print(text.proposal_text(proposal, protected))
        print(f"runbook-bot: {action} changes the {name} database ({action} --to {args.to}): add --yes to "
              "confirm (it is recorded as your approval)", file=sys.stderr)
        return EXIT_ERROR

    class Printed(RunWatcher):
        """Progress, backup and lock-timeout reports on stderr; the result and the backup kept for the report."""

        result = None
        backup_taken = backup_relied_on = backup_error = None
        backup_skipped = False

        def __init__(self) -> None:
            self.backup_progress = backup_progress_printer()

        def backup(self, phase, backup=None, error=None, reason="") -> None:
            if phase == "fresh":
                self.backup_relied_on = backup
                print(f"  backup: {reason}: relied on, no new one taken", file=sys.stderr)
            elif phase == "started":
                print(f"  backup: taking a verified full backup of {name} first (§2): {reason}…", file=sys.stderr)
            elif phase == "verified":
                self.backup_taken = backup
                print(f"  backup: #{backup.id} verified ({backup.level}), {human_size(backup.size_bytes)}: "
                      f"{backup.location}", file=sys.stderr)
            elif phase == "failed":
                self.backup_error = " ".join(str(error).split())
            elif phase == "skipped":
                self.backup_skipped = True
                latest = (f"the latest verified full backup is #{backup.id} of {_finished_at(backup)}"
                          if backup is not None else f"{name} has no verified full backup")
                print(f"runbook-bot: warning: --no-backup: {action} runs without a backup first (§2; recorded); "
                      f"{latest}", file=sys.stderr)

        def progress(self, p) -> None:
            if not args.json and p.phase == "migrating" and p.step_elapsed_seconds == 0:
                print(f"  {p.direction} {p.step} ({p.step_index}/{p.step_count}), attempt {p.attempt}",
                      file=sys.stderr)

        def blocker(self, b) -> None:
            print("  " + text.blocker_text(b), file=sys.stderr)

        def finished(self, result, backup) -> None:
            self.result = result

    watcher = Printed()
    try:
        store = open_store(settings)
        proposal = checked_proposal(name, env, direction, args.to, f"{action} --to {args.to}", store=store,
                                    cli=True)
        request = run_with_yes(settings, store, proposal, args.to, cli_actor(),
                               redactor=Redactor(settings, extra_secrets=known_secrets(settings)),
                               watcher=watcher, skip_backup="--no-backup" if args.no_backup else None,
                               gate_override=GateOverride(cli_actor(), args.override_gate)
                               if args.override_gate is not None else None)
    except NothingToDo as exc:
        print(f"runbook-bot: {exc}", file=sys.stderr)
        return EXIT_OK
    except Refused as exc:
        print(f"runbook-bot: {exc}", file=sys.stderr)
        return EXIT_NO_GO
    except (StateError, TargetError, RevisionError) as exc:
        print(f"runbook-bot: {exc}", file=sys.stderr)
        return EXIT_ERROR
    result = watcher.result
    if result is None:                 # the executor failed before the run could report
        print(f"runbook-bot: {action} failed: {request.result_summary}", file=sys.stderr)
        return EXIT_ERROR
    if watcher.backup_error is not None or result.log_path is None:   # stopped before changing anything
        why = (f"the backup before it failed: {watcher.backup_error} (fix that and run again, or add --no-backup)"
               if watcher.backup_error is not None else result.error)
        print(f"runbook-bot: {action} stopped, {name} was not changed: {why}", file=sys.stderr)
        return EXIT_ERROR
    backup = watcher.backup_taken or watcher.backup_relied_on

    def as_text() -> str:
        if backup is None:
            return text.migration_text(result)
        how = "taken before the run" if watcher.backup_taken is not None else "fresh, relied on"
        return (text.migration_text(result) + f"\nBackup: #{backup.id} ({how}, verified {backup.level}, "
                f"{human_size(backup.size_bytes)}): {backup.location}")

    emit(args, lambda: {**migrate.result_to_json(result), "backup_id": getattr(backup, "id", None),
                         "backup_taken": watcher.backup_taken is not None, "backup_skipped": watcher.backup_skipped},
          as_text)
    if result.ok:
        return EXIT_OK
    after_failure(settings, store, lambda escalator: escalator.after_run(result.run_id))
    return EXIT_ERROR if result.outcome == "error" else EXIT_NO_GO


def _finished_at(backup) -> str:
    return (backup.finished_at or backup.started_at).strftime("%Y-%m-%d %H:%M UTC")


def cmd_migrate(settings: Settings, args) -> int:
    return _run_supervised(settings, args, "upgrade")


def cmd_rollback(settings: Settings, args) -> int:
    return _run_supervised(settings, args, "downgrade")


def cmd_validate(settings: Settings, args) -> int:
    """`validate [--expect REV]`: runbook.ops.validate, its report and, on failure, what to do (§6.5)."""
    from runbook import ops, rollback
    from runbook import validate
    from runbook.revisions import RevisionError
    from runbook.state import StateError

    name, env = settings.environment(args.env)
    try:
        store = open_store(settings)
        done = ops.validate(name, env, store, cli_actor(), expect=args.expect)
    except (StateError, RevisionError) as exc:
        print(f"runbook-bot: validate: {exc}", file=sys.stderr)
        return EXIT_ERROR
    from bot import text

    report = done.report
    emit(args, lambda: {**validate.report_to_json(report), "recommendation":
                         rollback.recommendation_to_json(done.recommendation) if done.recommendation else None},
          lambda: text.validation_text(report) + (
              "\n\n" + text.recommendation_text(done.recommendation) if done.recommendation else ""))
    if report.error:
        return EXIT_ERROR
    return EXIT_OK if report.passed else EXIT_NO_GO


def cmd_rehearse(settings: Settings, args) -> int:
    from runbook import ops, rehearse

    name, env = settings.environment(args.env)
    store = store_or_report(settings)
    if store is None:
        return EXIT_ERROR
    result = ops.rehearse(settings, store, name, target=args.to, backup_id=args.backup, actor=cli_actor(),
                          on_phase=None if args.json else lambda text: print(f"... {text}", file=sys.stderr))
    emit(args, lambda: rehearse.to_json(result), lambda: rehearse.render_text(result))
    if result.outcome in ("passed", "nothing to do"):
        return EXIT_OK
    return EXIT_NO_GO if result.outcome == "failed" else EXIT_ERROR


__all__ = ["cmd_migrate", "cmd_rehearse", "cmd_rollback", "cmd_validate"]
