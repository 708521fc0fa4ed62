"""`runbook-bot`'s main: parse, start a precheck's slow parts first, load the configuration, dispatch.

Each command's module is imported only when that command runs, so `runbook-bot precheck` (issue 18's
cold path) compiles and loads none of the others.
"""
from __future__ import annotations

import atexit
import gc
import importlib
import logging
import os
import sys
import threading
from typing import Sequence

from bot.cli.common import EXIT_ERROR, collect_garbage_again, setup_logging
from bot.cli.parser import UsageError, build_parser

# command -> the module of bot/cli that holds its cmd_<command> function
COMMANDS = {"precheck": "precheck", "ack-risk": "precheck", "status": "status", "activity": "status",
            "migrate": "runs", "rollback": "runs", "validate": "runs", "rehearse": "runs",
            "backup": "backups", "backups": "backups", "restore": "backups",
            "incident": "incidents", "escalate": "incidents",
            "doctor": "service", "serve": "service", "manifest": "service"}


def command(name: str):
    """The function of a command (`ack-risk` -> bot.cli.precheck.cmd_ack_risk), its module imported now."""
    return getattr(importlib.import_module(f"bot.cli.{COMMANDS[name]}"), "cmd_" + name.replace("-", "_"))


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


def run() -> None:
    """The `runbook-bot` console script and `python -m bot.cli`: main(), then the process ends
    without tearing down every module it loaded (pydantic's, psycopg's, pglast's objects: 20-30 ms
    after a precheck has printed its report, see docs/performance.md). The exit handlers still run
    (logging's flush, temporary files); a thread still at work gets the ordinary exit, which waits
    for it."""
    code = main()
    if any(not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        sys.exit(code)
    atexit._run_exitfuncs()     # what the interpreter's exit would run first; no public spelling
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass                # a reader that went away: main has said so already
    os._exit(code)


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
        collect_garbage_again()
        from bot.console import run_demo

        if args.transcript:
            from bot.console import main as transcript_main

            return transcript_main([])
        return run_demo(scripted=args.scripted)
    if args.command == "manifest":      # needs no configuration: it describes the app, not a deployment
        return command("manifest")(args)
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
            return command("precheck")(settings, args, sidecar=sidecar)
        collect_garbage_again()             # the other commands may run long (serve, migrate...)
        return command(args.command)(settings, args)
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
        collect_garbage_again()
        if early is not None:
            early.cancel()          # stopped unless the precheck used it
        if sidecar is not None:
            sidecar.close()


__all__ = ["COMMANDS", "command", "main"]
