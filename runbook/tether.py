"""Run a command that dies with its parent: `python -m runbook.tether PARENT_PID -- argv...`.

The migration subprocess must not outlive the bot: if the bot is killed mid-run, an orphaned
`alembic upgrade` would go on and commit a migration nobody supervises (and the run is
already marked interrupted). On Linux, PR_SET_PDEATHSIG asks the kernel to SIGKILL this
process when its parent dies; it survives the exec below, so it applies to the command itself.
Done here, after fork and before exec, instead of in a Popen preexec_fn, which is unsafe in a
threaded program. Elsewhere the command simply runs.
"""
from __future__ import annotations

import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def tethered(argv: list[str]) -> list[str]:
    """`argv` run through this module: it dies with the calling process (Popen it from there)."""
    return [sys.executable, "-m", "runbook.tether", str(os.getpid()), "--", *argv]


def main(args: list[str]) -> int:
    if len(args) < 3 or args[1] != "--":
        print("usage: python -m runbook.tether PARENT_PID -- COMMAND [ARGS...]", file=sys.stderr)
        return 2
    parent, argv = int(args[0]), args[2:]
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:      # the parent died before prctl took effect
            return 137
    try:
        os.execvp(argv[0], argv)
    except FileNotFoundError:
        print(f"cannot run {argv[0]!r}: not found", file=sys.stderr)
        return 127
    except OSError as exc:
        print(f"cannot run {argv[0]!r}: {exc.strerror}", file=sys.stderr)
        return 126


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
