"""What every `runbook-bot` command shares: exit codes, the actor, logging, the state store, output."""
from __future__ import annotations

import gc
import getpass
import json
import logging
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from runbook.config import Settings

EXIT_OK, EXIT_NO_GO, EXIT_ERROR = 0, 1, 2

log = logging.getLogger("runbook-bot")


def cli_actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli:unknown"


def setup_logging(settings: Settings | None, level: int = logging.WARNING) -> None:
    from bot.logs import install_redacting_handler

    install_redacting_handler(settings, level)


def collect_garbage_again() -> None:
    """The cyclic collector back on, after the imports: what they made stays out of its scans."""
    if not gc.isenabled():
        gc.freeze()
        gc.enable()


def open_store(settings: Settings):
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


def store_or_report(settings: Settings):
    """The state store, or None after printing its one-line error."""
    from runbook.state import StateError

    try:
        return open_store(settings)
    except StateError as exc:
        print(f"runbook-bot: {exc}", file=sys.stderr)
        return None


def emit(args, as_json, as_text) -> None:
    """--json prints the contract, otherwise the terminal rendering."""
    print(json.dumps(as_json(), indent=2) if args.json else as_text())


def backup_progress_printer():
    """A backup's progress callback: a long dump says it is alive, every few seconds, on stderr."""
    import time

    shown = {"at": 0.0}

    def progress(p) -> None:
        if p.elapsed >= 3 and time.monotonic() - shown["at"] >= 5:
            from runbook.units import human_size

            print(f"  {p.phase}: {human_size(p.bytes_written)} after {p.elapsed:.0f}s", file=sys.stderr)
            shown["at"] = time.monotonic()

    return progress


__all__ = ["EXIT_ERROR", "EXIT_NO_GO", "EXIT_OK", "backup_progress_printer", "cli_actor", "collect_garbage_again",
           "emit", "log", "open_store", "setup_logging", "store_or_report"]
