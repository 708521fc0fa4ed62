"""Running the PostgreSQL client tools: pg_dump streamed through the bot (hashed, written, read in full
by pg_restore at the same time), any other tool with its output kept, and the line that says what
went wrong."""
from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runbook.storage import CHUNK


PLAIN_HEADER = b"-- PostgreSQL database dump"
PLAIN_TRAILER = b"-- PostgreSQL database dump complete"


def _first_error(text: str, tool: str) -> str:
    """The line that says what went wrong in a client tool's stderr."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for marker in (f"{tool}: error:", "ERROR:", "FATAL:", "error:"):
        for line in lines:
            if marker in line:
                return line
    return lines[-1] if lines else "no message"


@dataclass
class _StreamOutcome:
    returncode: int
    bytes_written: int
    sha256: str
    stderr: str
    verifier_rc: int | None
    verifier_stderr: str
    plain_ok: bool | None          # plain format: header and trailer seen
    disk_error: OSError | None


def _read_tmp(handle) -> str:
    handle.flush()
    handle.seek(0)
    return handle.read().decode("utf-8", "replace")


def _open_partial(path: Path):
    """A new, private, unbuffered file for the archive (never an existing one)."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb", buffering=0)


def _stream_dump(argv: list[str], env: dict[str, str], out_path: Path, *, verify_argv: list[str] | None,
                 plain: bool, state: dict[str, Any]) -> _StreamOutcome:
    """pg_dump -> (sha256, out_path, pg_restore -f /dev/null) in CHUNK pieces, never whole in memory.

    A write error on out_path (disk full) stops pg_dump at once; `state` carries the byte count
    and pid for the progress ticker."""
    digest = hashlib.sha256()
    written = 0
    head = b""
    tail = b""
    disk_error: OSError | None = None
    with tempfile.TemporaryFile() as dump_err, tempfile.TemporaryFile() as verify_err:
        dump = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=dump_err, stdin=subprocess.DEVNULL, env=env)
        state["pid"] = dump.pid
        verifier = None
        if verify_argv is not None:
            verifier = subprocess.Popen(verify_argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                        stderr=verify_err, env=env)
        try:
            with _open_partial(out_path) as out:
                while True:
                    chunk = dump.stdout.read1(CHUNK)
                    if not chunk:
                        break
                    digest.update(chunk)
                    try:
                        view = memoryview(chunk)
                        while view:
                            view = view[out.write(view):]
                    except OSError as exc:
                        disk_error = exc
                        dump.kill()
                        break
                    written += len(chunk)
                    state["bytes"] = written
                    if plain:
                        if len(head) < 256:
                            head += chunk[:256 - len(head)]
                        tail = (tail + chunk)[-4096:]
                    if verifier is not None and verifier.stdin is not None:
                        try:
                            verifier.stdin.write(chunk)
                        except BrokenPipeError:   # the reader gave up: its exit code says why
                            verifier.stdin = None
                if disk_error is None:
                    try:
                        os.fsync(out.fileno())   # "verified" must mean on disk, not in the page cache
                    except OSError as exc:
                        disk_error = exc
        finally:
            if dump.poll() is None and disk_error is not None:
                dump.kill()
            dump.stdout.close()
            rc = dump.wait()
            verifier_rc = None
            if verifier is not None:
                if verifier.stdin is not None:
                    try:
                        verifier.stdin.close()
                    except BrokenPipeError:
                        pass
                verifier_rc = verifier.wait()
        plain_ok = None
        if plain:
            plain_ok = PLAIN_HEADER in head and PLAIN_TRAILER in tail
        return _StreamOutcome(returncode=rc, bytes_written=written, sha256=digest.hexdigest(),
                              stderr=_read_tmp(dump_err), verifier_rc=verifier_rc,
                              verifier_stderr=_read_tmp(verify_err) if verifier is not None else "",
                              plain_ok=plain_ok, disk_error=disk_error)


def _run_tool(argv: list[str], env: dict[str, str], *, timeout: float | None = None,
              state: dict[str, Any] | None = None) -> tuple[int, str, str]:
    """(returncode, stdout, stderr) of a client tool; stdout is kept (it is small: a TOC)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env)
        if state is not None:
            state["pid"] = proc.pid
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
        return rc, _read_tmp(out), _read_tmp(err)
