"""The `runbook-bot` command.

Exit codes follow design §2: precheck 0 go, 1 no-go, 2 error. Every error is one
line on stderr; no traceback reaches the user. Slack and the scheduler are
imported only by the commands that need them, so a CLI precheck starts fast.
"""
from __future__ import annotations

import argparse
import gc
import getpass
import json
import logging
import os
import sys
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from runbook.config import Settings

EXIT_OK, EXIT_NO_GO, EXIT_ERROR = 0, 1, 2

log = logging.getLogger("runbook-bot")


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, no usage dump
        raise UsageError(f"{message} (see `runbook-bot --help`)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="runbook-bot", description="Slack chat-ops for a PostgreSQL + Alembic migration runbook.")
    parser.add_argument("--config", metavar="FILE",
                        help="configuration file (default: $RUNBOOK_BOT_CONFIG, then ./runbook-bot.yaml)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("precheck", help="§1 pre-migration checklist; exit 0 go, 1 no-go, 2 error")
    p.add_argument("--env", metavar="NAME")
    p.add_argument("--json", action="store_true", help="print the report as JSON")

    p = sub.add_parser("status", help="current and pending revisions, last event")
    p.add_argument("--env", metavar="NAME")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("activity", help="§4 live picture: long queries, idle in transaction, blocking tree")
    p.add_argument("--env", metavar="NAME")
    p.add_argument("--json", action="store_true", help="print the snapshot as JSON")

    for name, default, what in (("migrate", "head", "§3 upgrade under every guard (the no-go gate re-checked "
                                                    "before the first statement), after a verified full backup "
                                                    "(§2) unless one protects it already, validated after (§5)"),
                                ("rollback", "-1", "§6.1 downgrade under the same guards, backed up first the same way")):
        exits = "exit 0 done, 1 failed or refused, 2 error (a failed backup among them: nothing is changed)"
        p = sub.add_parser(name, help=f"{what}; {exits}", description=f"{what}. {exits[0].upper()}{exits[1:]}.")
        p.add_argument("--env", metavar="NAME")
        p.add_argument("--to", metavar="REV", default=default, help=f"target revision (default {default})")
        p.add_argument("--yes", action="store_true", help="stands for the approval; recorded as yours")
        p.add_argument("--no-backup", action="store_true",
                       help="do not take the §2 backup first (taken by default unless a verified full backup "
                            "taken at the current revision, after the last run, within "
                            "approvals.require_backup_within_minutes protects the run); recorded, with a warning")
        p.add_argument("--override-gate", metavar="REASON",
                       help="let the run through a closed no-go gate (lock waits, long queries or idle "
                            "transactions on its tables, an unacknowledged HIGH risk, promotion); recorded "
                            "with the reason as its own event")
        p.add_argument("--json", action="store_true", help="print the result as JSON (with backup_id, "
                                                           "backup_taken, backup_skipped)")

    p = sub.add_parser("backup", help="§2 verified backup; exit 0 verified, 1 failed, 2 error")
    p.add_argument("--env", metavar="NAME")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--schema-only", action="store_true", help="§2.2 schema only, plain SQL")
    what.add_argument("--table", metavar="T", action="append", default=[], help="§2.3 this table (repeatable)")
    p.add_argument("--verify", choices=("full", "restore"),
                   help="top rung of the verification ladder (default: backups.verify)")
    p.add_argument("--json", action="store_true", help="print the catalogue entry as JSON")

    p = sub.add_parser("backups", help="the backup catalogue, newest first")
    p.add_argument("--env", metavar="NAME")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("restore", help="§6.2–6.3 restore a verified backup; exit 0 done, 1 failed or refused, 2 error")
    p.add_argument("id", metavar="ID", help="backup id (see `backups`)")
    p.add_argument("--env", metavar="NAME")
    p.add_argument("--table", metavar="T", action="append", default=[], help="§6.3 only this table (repeatable)")
    p.add_argument("--yes", action="store_true", help="stands for the approval; recorded as yours")
    p.add_argument("--json", action="store_true", help="print the result as JSON")

    p = sub.add_parser("rehearse", help="the pending range on a restored copy: time, locks, rewrites per revision, "
                                        "up-down-up, §5; exit 0 passed, 1 a revision or downgrade failed, 2 error")
    p.add_argument("--env", metavar="NAME")
    p.add_argument("--to", metavar="REV", default="head", help="head (default), +1 or a revision")
    p.add_argument("--backup", metavar="ID", help="restore this verified full backup (default: the latest at the "
                                                  "current revision, else a new one)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")

    p = sub.add_parser("validate", help="§5 post-migration validation; exit 0 pass, 1 fail, 2 error")
    p.add_argument("--env", metavar="NAME")
    p.add_argument("--expect", metavar="REV",
                   help="the revision the database should be at (default: where the latest completed run left it)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")

    p = sub.add_parser("doctor", help="will this configuration work? every prerequisite, one line each (ok / warn / "
                                      "fail with what to do); exit 0 ok (warnings allowed), 1 a failure, 2 a bad "
                                      "configuration")
    p.add_argument("--env", metavar="NAME", help="only this environment (default: every configured one)")
    p.add_argument("--json", action="store_true", help="print the checks as JSON")

    p = sub.add_parser("incident", help="§7.3 incident summary as Markdown (default: the latest run); exit 0, 2")
    p.add_argument("run_id", metavar="RUN_ID", nargs="?",
                   help="a migrate, rollback or restore run id (see `migrate --json`, `restore --json`)")
    p.add_argument("--env", metavar="NAME", help="the latest run of this environment")

    p = sub.add_parser("escalate", help="§7.2 escalate: 1 self-service, 2 owner, 3 emergency; "
                                        "exit 0 done, 1 a part failed (Slack, GitHub, pause hook), 2 error")
    p.add_argument("--env", metavar="NAME")
    p.add_argument("--level", type=int, choices=(1, 2, 3), default=1, help="1 (default), 2 or 3")
    p.add_argument("reason", metavar="REASON", nargs="*", help="why, in a few words")

    p = sub.add_parser("ack-risk", help="acknowledge a reviewed HIGH risk rating of a pending revision (recorded "
                                        "as yours); exit 0 recorded, 1 refused, 2 error")
    p.add_argument("--env", metavar="NAME")
    p.add_argument("revision", metavar="REV", help="a pending revision (id or unique prefix)")
    p.add_argument("--reason", required=True, help="why its risk is acceptable (shown with the rating, audited)")

    p = sub.add_parser("serve", help="run the bot (Socket Mode or HTTP)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--socket", action="store_true", help="Socket Mode (default; needs SLACK_APP_TOKEN)")
    mode.add_argument("--http", action="store_true", help="HTTP mode under a WSGI server (needs SLACK_SIGNING_SECRET)")
    p.add_argument("--port", type=int, default=int(os.environ.get("PORT", "3000")))
    p.add_argument("--host", default=os.environ.get("HOST", "0.0.0.0"))

    p = sub.add_parser("demo", help="console demo on the embedded PostgreSQL; its state, backups and "
                                    "configuration go in .demo/ here (emptied at start, kept after exit)")
    p.add_argument("--scripted", action="store_true", help="play the product's story and exit")
    p.add_argument("--transcript", action="store_true",
                   help="with --scripted: print the README's excerpt of it, times and ids made steady "
                        "(make readme-transcript writes it into README.md)")

    p = sub.add_parser("manifest", help="print the Slack app manifest (YAML) generated from the registered listeners")
    p.add_argument("--socket", action="store_true", help="Socket Mode: no request URLs")
    p.add_argument("--url", metavar="URL", help="the bot's public https:// address (HTTP mode)")
    return parser


def cli_actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli:unknown"


def setup_logging(settings: Settings | None, level: int = logging.WARNING) -> None:
    from bot.logs import install_redacting_handler

    install_redacting_handler(settings, level)


def _collect_garbage_again() -> None:
    """The cyclic collector back on, after the imports: what they made stays out of its scans."""
    if not gc.isenabled():
        gc.freeze()
        gc.enable()


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; a reader that went away (`runbook-bot precheck | head -1`) ends it quietly,
    as it ends any Unix tool, with the status of a process killed by SIGPIPE."""
    try:
        code = _main(argv)
        sys.stdout.flush()          # buffered output meets a closed pipe here, not at exit
        return code
    except BrokenPipeError:
        # Python flushes stdout again at exit: point it at /dev/null so that flush cannot fail too.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 128 + 13             # SIGPIPE


def _main(argv: Sequence[str] | None = None) -> int:
    # Imports (pydantic, psycopg...) create many objects and few cycles: the collector scanning them
    # over and over costs a one-shot command a tenth of its CPU time. Off until they are done.
    gc.disable()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
    except UsageError as exc:
        print(f"runbook-bot: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if args.command == "demo":
        _collect_garbage_again()
        from bot.console import run_demo

        if args.transcript:
            from bot.console import main as transcript_main

            return transcript_main([])
        return run_demo(scripted=args.scripted)
    if args.command == "manifest":      # needs no configuration: it describes the app, not a deployment
        return cmd_manifest(args)
    sidecar = early = None
    if args.command == "precheck":
        # The app's Alembic first (the slowest part of a precheck, see runbook.prerender): it renders
        # while this process loads pydantic and reads the configuration. The state store's child
        # (runbook.state.sidecar) starts now when nothing renders; while Alembic does, cmd_precheck
        # starts it once its own imports are done: three processes loading modules on two cores
        # would slow the render, which is what the precheck waits for.
        from runbook.prerender import start_preview

        early = start_preview(args.config, args.env)
        if early is None:
            from runbook.state.sidecar import StoreSidecar

            sidecar = StoreSidecar.start()
    # Imported only now (pydantic is slow to load), once the render or the sidecar is on its way.
    from runbook.config import ConfigError, load_settings

    try:
        settings = load_settings(args.config)
        setup_logging(settings, logging.INFO if args.command == "serve" else logging.WARNING)
        if args.command == "precheck":
            return cmd_precheck(settings, args, sidecar=sidecar)
        _collect_garbage_again()            # the other commands may run long (serve, migrate...)
        return COMMANDS[args.command](settings, args)
    except ConfigError as exc:
        print(f"runbook-bot: config error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        raise                   # the reader went away: main ends quietly
    except Exception as exc:  # last resort: one line, secrets scrubbed
        from runbook.target import redact

        print(f"runbook-bot: {args.command} failed: {redact(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)}",
              file=sys.stderr)
        return EXIT_ERROR
    finally:
        _collect_garbage_again()
        if early is not None:
            early.cancel()          # stopped unless the precheck used it
        if sidecar is not None:
            sidecar.close()


def _open_store(settings: Settings):
    from runbook.state import Store
    from runbook.state.runs import RunStore

    store = Store(settings.state_url)
    store.migrate()
    # Every start looks for runs whose process died (issue 4): marked interrupted, never resumed.
    reaped = RunStore(store).reap(actor=cli_actor())
    for run in reaped:
        print(f"runbook-bot: {run.kind} run {run.id} on {run.environment} was interrupted: {run.summary}",
              file=sys.stderr)
    if any(run.kind == "rehearse" for run in reaped):       # its copy is dropped (issue 16)
        from runbook import rehearse

        for dropped in rehearse.drop_scratch_of(settings, reaped):
            print(f"runbook-bot: dropped {dropped}, the copy of an interrupted rehearsal", file=sys.stderr)
    from runbook.backup import sweep_interrupted

    for name, env in settings.environments.items():      # a backup whose process was killed mid-dump
        for backup_id in sweep_interrupted(name, env, store):
            print(f"runbook-bot: backup #{backup_id} of {name} was interrupted: marked failed, its partial archive "
                  "removed", file=sys.stderr)
    return store


def cmd_precheck(settings: Settings, args, *, sidecar=None) -> int:
    from runbook import precheck, review
    from runbook.state.records import StateError
    from runbook.state.sidecar import StoreSidecar

    _collect_garbage_again()

    name, env = settings.environment(args.env)
    if sidecar is None:
        with StoreSidecar.start() as own:
            return cmd_precheck(settings, args, sidecar=own)
    # The state store lives in a child process (see runbook.state.sidecar): SQLAlchemy loads there,
    # on the other core, while this one reads the target; the reads are asked for up front.
    opened = sidecar.open(settings.state_url, cli_actor())
    acks = sidecar.events(environment=name, action=review.ACK_ACTION, limit=review.ACK_READ_LIMIT)
    backup = sidecar.last_backup_at(name)
    rehearsals = sidecar.events(environment=name, action="rehearse", limit=20)

    def rehearsed(current, head):
        from runbook.precheck import project_of
        from runbook.rehearsal_record import match_in_events      # not runbook.rehearse: it loads backup, migrate

        return match_in_events(answered(rehearsals, []), project_of(env), current, head)

    def answered(pending, fallback):
        try:
            return pending.result()
        except StateError:             # the store's own error is reported just below
            return fallback

    report = precheck.run_precheck(name, env, last_backup_at=lambda: answered(backup, None),
                                   acknowledgements=lambda: review.acknowledgements_in(answered(acks, [])),
                                   rehearsal=rehearsed)
    try:
        for line in opened.result():
            print(f"runbook-bot: {line}", file=sys.stderr)
        sidecar.record(actor=cli_actor(), action="precheck", environment=name, outcome=report.verdict,
                       summary="; ".join(report.reasons)[:2000],
                       details={"checks": {c.name: c.status for c in report.checks}})
    except StateError as exc:
        print(f"runbook-bot: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if args.json:
        print(json.dumps(precheck.report_to_json(report), indent=2))
    else:
        from bot.text import precheck_text

        print(precheck_text(report))
    return EXIT_OK if report.verdict == "go" else EXIT_NO_GO


def cmd_status(settings: Settings, args) -> int:
    from runbook import precheck
    from runbook.revisions import RevisionError
    from runbook.state import StateError
    from runbook.target import TargetError

    name, env = settings.environment(args.env)
    try:
        store = _open_store(settings)
        state = precheck.alembic_status(env)
    except (StateError, TargetError, RevisionError) as exc:
        print(f"runbook-bot: {exc}", file=sys.stderr)
        return EXIT_ERROR
    last = store.last_event(name)
    from runbook.incident import latest_run

    run = latest_run(store, name)
    store.record(actor=cli_actor(), action="status", environment=name, outcome="ok")
    if args.json:
        print(json.dumps({
            "environment": name, "current": state.current, "heads": state.heads,
            "pending": [{"revision": r.revision, "message": r.message, "reversible": r.reversible}
                        for r in state.pending],
            "last_event": None if last is None else {
                "actor": last.actor, "action": last.action, "at": last.at.isoformat(), "outcome": last.outcome},
            "last_run": None if run is None else {
                "id": run.id, "kind": run.kind, "state": run.state, "step": run.step, "actor": run.actor,
                "started_at": run.started_at.isoformat(), "summary": run.summary},
        }, indent=2))
    else:
        from bot.text import status_text

        print(status_text(name, state, last, run))
    return EXIT_OK


def _emit(args, as_json, as_text) -> None:
    """--json prints the contract, otherwise the terminal rendering."""
    print(json.dumps(as_json(), indent=2) if args.json else as_text())


def _run_supervised(settings: Settings, args, direction: str) -> int:
    """`migrate` / `rollback`: the Slack path's checks and run (bot/migrations.py), with --yes standing for
    the approval: recorded by ApprovalService.run_confirmed, the same audit trail as a click in Slack.
    Like Slack's run it takes a verified full backup first, under the run's lock, unless one protects it
    (runbook.ops.run); --no-backup skips it, recorded. A failed backup stops the run
    before anything changes: one line, exit 2."""
    from bot import text
    from bot.flows import Redactor
    from bot.logs import known_secrets
    from bot.migrations import NothingToDo, Refused, RunWatcher, checked_proposal, run_with_yes
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
            store = _open_store(settings)
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
            self.backup_progress = _backup_progress_printer()

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
        store = _open_store(settings)
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

    _emit(args, lambda: {**migrate.result_to_json(result), "backup_id": getattr(backup, "id", None),
                         "backup_taken": watcher.backup_taken is not None, "backup_skipped": watcher.backup_skipped},
          as_text)
    if result.ok:
        return EXIT_OK
    _after_failure(settings, store, lambda escalator: escalator.after_run(result.run_id))
    return EXIT_ERROR if result.outcome == "error" else EXIT_NO_GO


def _finished_at(backup) -> str:
    return (backup.finished_at or backup.started_at).strftime("%Y-%m-%d %H:%M UTC")


def _backup_progress_printer():
    """A backup's progress callback: a long dump says it is alive, every few seconds, on stderr."""
    import time

    shown = {"at": 0.0}

    def progress(p) -> None:
        if p.elapsed >= 3 and time.monotonic() - shown["at"] >= 5:
            from runbook.units import human_size

            print(f"  {p.phase}: {human_size(p.bytes_written)} after {p.elapsed:.0f}s", file=sys.stderr)
            shown["at"] = time.monotonic()

    return progress


def cmd_ack_risk(settings: Settings, args) -> int:
    """`ack-risk [--env NAME] REV --reason TEXT` (issue 7): the CLI's acknowledgement, recorded as
    cli:<user> like --yes; bound to the revision file as it is now."""
    from runbook import precheck, review
    from runbook.revisions import RevisionError
    from runbook.state import StateError
    from runbook.target import TargetError

    name, env = settings.environment(args.env)
    try:
        store = _open_store(settings)
        project = precheck.project_of(env)
        with precheck.target_of(env).connect("ack-risk") as conn:
            current = project.current(conn)
        ack = review.acknowledge(store, name, env, args.revision, args.reason, cli_actor(), project=project,
                                 current=current)
    except review.AcknowledgeError as exc:
        print(f"runbook-bot: ack-risk refused: {exc}", file=sys.stderr)
        return EXIT_NO_GO
    except (StateError, TargetError, RevisionError) as exc:
        print(f"runbook-bot: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print(f"Risk of {ack.revision} on {name} acknowledged by {ack.actor}: {ack.reason} "
          f"(bound to {ack.file_sha256[:12]}…; an edit to the file needs a new acknowledgement)")
    return EXIT_OK


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
        store = _open_store(settings)
        done = ops.validate(name, env, store, cli_actor(), expect=args.expect)
    except (StateError, RevisionError) as exc:
        print(f"runbook-bot: validate: {exc}", file=sys.stderr)
        return EXIT_ERROR
    from bot import text

    report = done.report
    _emit(args, lambda: {**validate.report_to_json(report), "recommendation":
                         rollback.recommendation_to_json(done.recommendation) if done.recommendation else None},
          lambda: text.validation_text(report) + (
              "\n\n" + text.recommendation_text(done.recommendation) if done.recommendation else ""))
    if report.error:
        return EXIT_ERROR
    return EXIT_OK if report.passed else EXIT_NO_GO


def cmd_rehearse(settings: Settings, args) -> int:
    from runbook import ops, rehearse

    name, env = settings.environment(args.env)
    store = _store_or_report(settings)
    if store is None:
        return EXIT_ERROR
    result = ops.rehearse(settings, store, name, target=args.to, backup_id=args.backup, actor=cli_actor(),
                          on_phase=None if args.json else lambda text: print(f"... {text}", file=sys.stderr))
    _emit(args, lambda: rehearse.to_json(result), lambda: rehearse.render_text(result))
    if result.outcome in ("passed", "nothing to do"):
        return EXIT_OK
    return EXIT_NO_GO if result.outcome == "failed" else EXIT_ERROR


def _store_or_report(settings: Settings):
    """The state store, or None after printing its one-line error."""
    from runbook.state import StateError

    try:
        return _open_store(settings)
    except StateError as exc:
        print(f"runbook-bot: {exc}", file=sys.stderr)
        return None


def cmd_backup(settings: Settings, args) -> int:
    from runbook import backup as backups

    name, env = settings.environment(args.env)
    store = _store_or_report(settings)
    if store is None:
        return EXIT_ERROR
    kind = "schema" if args.schema_only else ("tables" if args.table else "full")
    actor = cli_actor()
    try:
        made = backups.backup(name, env, store, kind=kind, tables=tuple(args.table), verify=args.verify,
                              actor=actor, progress=_backup_progress_printer())
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

    _emit(args, lambda: backups.backup_to_json(made), lambda: text.backup_text(made))
    return EXIT_OK if made.status == "verified" else EXIT_NO_GO


def cmd_backups(settings: Settings, args) -> int:
    from runbook import backup as backups

    name, _env = settings.environment(args.env)
    store = _store_or_report(settings)
    if store is None:
        return EXIT_ERROR
    found = backups.list_backups(store, name)
    from bot import text

    _emit(args, lambda: {"environment": name, "backups": [backups.backup_to_json(b) for b in found]},
          lambda: text.backups_text(name, found))
    return EXIT_OK


def _restore_plan_only(settings: Settings, args, name: str, env) -> int:
    """`restore ID` without --yes: the plan an approver would read in Slack (what is replaced, rows
    now and in the backup, what a full restore drops), then exit 2; nothing is changed or recorded
    as an approval. A plan that cannot be made (unknown backup, unknown table) is refused, exit 1."""
    from bot import text
    from runbook import backup as backups

    store = _store_or_report(settings)
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
    _emit(args, lambda: {"environment": name, "confirmed": False, "blockers": list(plan.blockers),
                         **backups.plan_to_params(plan)},
          lambda: text.restore_plan_text(plan))
    print("runbook-bot: nothing was restored: " + ("the restore would be refused (see above)" if plan.blockers else
          "add --yes to run it (recorded as your approval)"), file=sys.stderr)
    return EXIT_ERROR


def cmd_restore(settings: Settings, args) -> int:
    """`restore ID [--table T]... --yes`: the Slack path's plan and guards (revision check, safety
    backup, one transaction); --yes stands for the approval and is audited as yours."""
    from bot import approvals
    from bot.flows import Redactor, restore_with_yes
    from runbook import backup as backups
    from runbook.state import StateError

    name, env = settings.environment(args.env)
    if not args.yes:
        return _restore_plan_only(settings, args, name, env)
    try:
        store = _open_store(settings)
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
        _after_failure(settings, store, lambda escalator: escalator.after_restore(request))

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

    _emit(args, lambda: {"environment": name, "request": request.id, "state": request.state,
                         "summary": request.result_summary, "backup_id": request.params.get("backup_id"),
                         "mode": request.params.get("mode"), "tables": request.params.get("tables"),
                         **result}, as_text)
    return EXIT_OK if done else EXIT_NO_GO


def cmd_doctor(settings: Settings, args) -> int:
    """`doctor [--env E] [--json]`: the engine's checks (runbook.doctor), then Slack's (bot.doctor).
    Reads only: it records no event and creates nothing, so it can run before anything else."""
    from bot.doctor import slack_checks
    from runbook import doctor

    environments = [settings.environment(args.env)[0]] if args.env else None
    report = doctor.diagnose(settings, environments)
    report.checks += slack_checks(settings)
    _emit(args, lambda: doctor.report_to_json(report), lambda: "\n".join(c.line() for c in report.checks))
    return report.exit_code


def cmd_manifest(args) -> int:
    from bot.manifest import ManifestError, generate

    try:
        print(generate(socket=args.socket, url=args.url), end="")
    except ManifestError as exc:
        print(f"runbook-bot: manifest: {exc}", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK


def cmd_serve(settings: Settings, args) -> int:
    from bot.server import serve

    return serve(settings, mode="http" if args.http else "socket", host=args.host, port=args.port)


def cmd_activity(settings: Settings, args) -> int:
    from runbook.activity import activity_to_json
    from runbook.state import StateError
    from runbook.target import TargetError
    from runbook.watch import live_activity

    name, env = settings.environment(args.env)
    try:
        snapshot, target = live_activity(env)
        store = _open_store(settings)
    except (StateError, TargetError) as exc:
        print(f"runbook-bot: {exc}", file=sys.stderr)
        return EXIT_ERROR
    store.record(actor=cli_actor(), action="activity", environment=name, outcome="ok",
                 summary=f"{len(snapshot.long_queries)} long, {len(snapshot.idle_in_transaction)} idle in transaction, "
                         f"{len(snapshot.lock_waits)} waiting on locks")
    if args.json:
        print(json.dumps({"environment": name, "target": target, **activity_to_json(snapshot)}, indent=2))
    else:
        from bot.text import activity_text

        print(activity_text(name, target, snapshot))
    return EXIT_OK


# -- issue 6: escalations and incident summaries ---------------------------------------------

def _escalator(settings: Settings, store):
    """bot.escalate.Escalator for the command line: it posts to Slack when SLACK_BOT_TOKEN is set and
    slack.channel is configured (SLACK_API_URL as for the bot); otherwise it records and prints."""
    from bot.escalate import Escalator
    from bot.flows import Redactor
    from bot.logs import known_secrets

    client = None
    token = os.environ.get("SLACK_BOT_TOKEN")
    if token and settings.slack is not None:
        from bot.app import make_client

        client = make_client(token, os.environ.get("SLACK_API_URL"))
    return Escalator(settings, store, client, redactor=Redactor(settings, extra_secrets=known_secrets(settings)))


def _report_lines(report) -> list[str]:
    """What an escalation or a summary post did, one line each (stderr)."""
    from bot.escalate import EscalationReport

    where = (f"posted in Slack ({report.channel}, ts {report.ts})" if report.ts else
             f"not posted to Slack ({report.slack_error})" if report.slack_error else
             "not posted to Slack (set SLACK_BOT_TOKEN and slack.channel for that)")
    if not isinstance(report, EscalationReport):
        return [f"incident summary of run {report.incident.run_id or '(none)'}: {where}"]
    e = report.escalation
    lines = [f"level {e.level} escalation ({e.config.name}){' (automatic)' if e.automatic else ''} on "
             f"{e.environment}" + (f" to {', '.join(e.notify)}" if e.notify else "") + f": {where}"]
    lines += [f"not configured: {m}" for m in e.missing]
    if report.issue is not None:
        lines.append(f"GitHub issue #{report.issue.number}: {report.issue.url}")
    elif report.github_error:
        lines.append(f"no GitHub issue: {report.github_error}")
    if report.hook is not None:
        lines.append(report.hook.line())
        lines += [f"  | {line}" for line in report.hook.output.splitlines()[-20:]]
    return lines


def _after_failure(settings: Settings, store, react) -> None:
    """A failed run or restore: its summary (a file next to the run's log, and Slack when it can)
    and its automatic escalation. Reported on stderr; never changes the exit code."""
    from pathlib import Path

    from runbook import incident as incidents

    escalator = _escalator(settings, store)
    try:
        report = react(escalator)
    except Exception as exc:  # the failure itself is already reported; this must not hide it
        print(f"runbook-bot: the incident summary or escalation failed: "
              f"{escalator.redactor(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)}", file=sys.stderr)
        return
    if report is None:
        return
    for line in _report_lines(report):
        print(f"runbook-bot: {escalator.redactor(line)}", file=sys.stderr)
    found = getattr(report, "incident", None) or getattr(report.escalation, "incident", None)
    run = found.run if found is not None else None
    if run is not None and run.log_path and Path(run.log_path).parent.is_dir():
        path = Path(run.log_path).parent / incidents.filename(found)
        path.write_text(incidents.render_markdown(found, secrets=escalator.secrets), encoding="utf-8")
        print(f"runbook-bot: incident summary written to {path}; `runbook-bot incident {run.id}` prints it",
              file=sys.stderr)


def cmd_incident(settings: Settings, args) -> int:
    """`incident [RUN_ID] [--env NAME]`: §7.3 as Markdown on stdout."""
    from runbook import incident as incidents

    environment = settings.environment(args.env)[0] if args.env or len(settings.environments) == 1 else None
    store = _store_or_report(settings)
    if store is None:
        return EXIT_ERROR
    escalator = _escalator(settings, store)
    try:
        if args.run_id is None and environment is None:
            latest = incidents.latest_run(store)
            if latest is None:
                raise incidents.UnknownRun("no run recorded yet: name an environment with --env")
            environment = latest.environment
        found = escalator.incident(run_id=args.run_id, environment=environment)
    except incidents.UnknownRun as exc:
        print(f"runbook-bot: {exc}", file=sys.stderr)
        return EXIT_ERROR
    store.record(actor=cli_actor(), action="incident", environment=found.environment, outcome="printed",
                 run_id=found.run_id)
    print(incidents.render_markdown(found, secrets=escalator.secrets), end="")
    return EXIT_OK


def cmd_escalate(settings: Settings, args) -> int:
    """`escalate [--env E] [--level N] [REASON]`: the escalation as Markdown on stdout, what was done on stderr."""
    name, _env = settings.environment(args.env)
    store = _store_or_report(settings)
    if store is None:
        return EXIT_ERROR
    escalator = _escalator(settings, store)
    try:
        report = escalator.escalate(name, args.level, reason=" ".join(args.reason), actor=cli_actor())
    except ValueError as exc:
        print(f"runbook-bot: escalate refused: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print(escalator.markdown(report.escalation), end="")
    for line in _report_lines(report):
        print(f"runbook-bot: {escalator.redactor(line)}", file=sys.stderr)
    return EXIT_OK if report.ok else EXIT_NO_GO


COMMANDS = {"precheck": cmd_precheck, "status": cmd_status, "serve": cmd_serve, "activity": cmd_activity}
COMMANDS.update(migrate=cmd_migrate, rollback=cmd_rollback, validate=cmd_validate)
COMMANDS.update(backup=cmd_backup, backups=cmd_backups, restore=cmd_restore)
COMMANDS.update(incident=cmd_incident, escalate=cmd_escalate, doctor=cmd_doctor)
COMMANDS["ack-risk"] = cmd_ack_risk
COMMANDS["rehearse"] = cmd_rehearse


if __name__ == "__main__":
    sys.exit(main())
