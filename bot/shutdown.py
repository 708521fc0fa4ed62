"""Graceful shutdown of `runbook-bot serve` (issue 8): stop taking work, let running work finish
within a grace period, interrupt what is left, release the locks, exit 0.

    first SIGTERM / SIGINT  draining: /health answers 503 (readiness fails, the load balancer stops
                            sending), new Slack requests get 503, Socket Mode disconnects (Slack
                            sends to the other connections); the scheduler stops, which closes the
                            leader's session: its advisory lock goes, another replica leads at its
                            next tick
    within the grace        running work on Flows' executor (an approved migration, a restore, a
                            backup) finishes as usual and releases its own locks
    after it                runs of this process still `running` are marked `interrupted`, with an
                            event each and a message in slack.channel, as the reaper would; the
                            child processes (alembic, pg_dump, pg_restore) are killed, so their
                            sessions end and PostgreSQL rolls back what they had not committed;
                            the bot's own sessions (the operation lock, the leader) end with the
                            process, and their advisory locks with them; exit 0
    a second signal         cuts the grace short

RUNBOOK_BOT_SHUTDOWN_GRACE_SECONDS (default 60) sets the grace; keep it below the platform's own
limit (Kubernetes terminationGracePeriodSeconds, Render maxShutdownDelaySeconds, compose
stop_grace_period).
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

from runbook.config import ConfigError

log = logging.getLogger("runbook_bot.shutdown")

GRACE_ENV = "RUNBOOK_BOT_SHUTDOWN_GRACE_SECONDS"
DEFAULT_GRACE_SECONDS = 60.0
MAX_GRACE_SECONDS = 24 * 3600.0


def grace_seconds(environ: Mapping[str, str] | None = None) -> float:
    """The grace period from the environment; a bad value is a one-line ConfigError."""
    raw = (os.environ if environ is None else environ).get(GRACE_ENV, "").strip()
    if not raw:
        return DEFAULT_GRACE_SECONDS
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value <= MAX_GRACE_SECONDS or value != value:
        shown = raw if len(raw) <= 20 else raw[:20] + "…"
        raise ConfigError(f"{GRACE_ENV} must be a number of seconds from 0 to {MAX_GRACE_SECONDS:.0f}, not "
                          f"'{shown}' (how long a running migration may take to finish after SIGTERM)")
    return value


class Signals:
    """SIGTERM and SIGINT: the first asks to stop, any later one to stop now."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.hurry = threading.Event()

    def install(self) -> "Signals":
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._received)
        return self

    def _received(self, signum: int, _frame: Any) -> None:
        if self.stop.is_set():
            self.hurry.set()
        else:
            self.stop.set()


@dataclass
class Drained:
    finished: bool                      # every piece of work ended within the grace
    waited_seconds: float
    interrupted: list[Any] = field(default_factory=list)   # runbook.state.runs.Run marked interrupted
    killed: list[int] = field(default_factory=list)        # child pids


def drain(runtime: Any, grace: float, hurry: threading.Event | None = None) -> Drained:
    """Stop taking work and wait up to `grace` seconds for what runs; then interrupt the rest."""
    from runbook.state.runs import RunStore

    started = time.monotonic()
    runtime.draining.set()
    runtime.stop_scheduler()
    deadline = started + grace
    hurry = hurry or threading.Event()
    while True:
        left = deadline - time.monotonic()
        if runtime.flows.wait_idle(timeout=max(0.0, min(0.25, left))):
            waited = time.monotonic() - started
            log.info("shutdown: all work finished after %.1f s", waited)
            return Drained(True, waited)
        if left <= 0 or hurry.is_set():
            break
    waited = time.monotonic() - started
    why = (f"the bot was stopped (SIGTERM) and its {grace:g} s grace period ran out" if not hurry.is_set()
           else "the bot was stopped (a second SIGTERM cut the grace period short)")
    interrupted: list[Any] = []
    try:
        interrupted = RunStore(runtime.store).interrupt_own(why)
    except Exception as exc:  # the state database may be what is failing: the reaper of the next start marks them
        log.error("shutdown: could not mark this process's runs interrupted (%s)", type(exc).__name__)
    for run in interrupted:
        log.warning("shutdown: %s run %s on %s marked interrupted during '%s'", run.kind, run.id, run.environment,
                    run.step)
    killed = kill_children()
    if killed:
        log.warning("shutdown: killed child process(es) %s", ", ".join(map(str, killed)))
    try:     # said in Slack now: no reaper will find these runs later
        runtime.flows.migrations.announce_interrupted(interrupted, when="at shutdown")
    except Exception as exc:
        log.error("shutdown: could not post the interrupted runs (%s)", type(exc).__name__)
    try:     # approved requests still queued here would wait for the next start (or 10 min on a replica)
        runtime.flows.approvals.close_own_queued(f"{why}, before it started")
    except Exception as exc:
        log.error("shutdown: could not close the approved requests waiting in its queue (%s)", type(exc).__name__)
    return Drained(False, waited, interrupted, killed)


def children(pid: int | None = None) -> list[int]:
    """Direct child processes of `pid` (default: this process), from /proc (Linux)."""
    pid = os.getpid() if pid is None else pid
    found = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                # "pid (comm) S ppid ...": the fields after the last ')'
                fields = stat.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 1 and int(fields[1]) == pid:
            found.append(int(entry))
    return sorted(found)


def kill_children() -> list[int]:
    """SIGKILL every child (its whole process group when it leads one, as alembic's and the dumps' do)."""
    killed = []
    for child in children():
        try:
            if os.getpgid(child) == child:
                os.killpg(child, signal.SIGKILL)
            else:
                os.kill(child, signal.SIGKILL)
            killed.append(child)
        except (ProcessLookupError, PermissionError):
            continue
    return killed


def exit_now(code: int = 0) -> None:
    """Exit without waiting for the executor's threads (still inside the interrupted work)."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


__all__ = ["DEFAULT_GRACE_SECONDS", "Drained", "GRACE_ENV", "Signals", "children", "drain", "exit_now",
           "grace_seconds", "kill_children"]
