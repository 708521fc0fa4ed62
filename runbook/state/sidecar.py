"""The state store in a child process, for a one-shot command that must not wait for it.

`runbook-bot precheck` starts this sidecar early and asks it, up front, for the few reads it needs
(acknowledgements, the last backup, past rehearsals), then for its event. The child answers them
through sqlite3 or psycopg alone (runbook.state.lean) when the store is at head with no run to
reap, which is every precheck but the first after an upgrade or a crash; otherwise it loads the
SQLAlchemy Store, migrates and reaps as every start does. Either way that work runs on the other
core, beside the app's Alembic render, not in the precheck's own process.

The protocol is JSON lines: each request `{"op": ..., ...}` on the child's stdin gets exactly one
reply `{"ok": true, "value": ...}` or `{"ok": false, "error": "<one redacted line>"}` on its
stdout, in order, so a client can send everything it will need at once and read the replies when
it needs them. End of input ends the child; nothing is recorded unless asked.

    sidecar = StoreSidecar.start()                   # before anything slow
    opened = sidecar.open(state_url, actor)          # Pending: lines about interrupted runs
    acks = sidecar.events(environment="prod", action="risk.ack", limit=500)
    ... opened.result(); acks.result() ...           # StateError with one line on failure
    sidecar.record(actor=..., action=..., environment=..., outcome=...)
    sidecar.close()
"""
from __future__ import annotations

import collections
import gc
import json
import os
import subprocess
import sys
import threading
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Callable

from runbook.dsn import redact
from runbook.state.records import Event, StateError

_PACKAGE_ROOT = Path(__file__).resolve().parents[2]
_CLOSE_TIMEOUT_SECONDS = 10.0


class Pending:
    """One request's reply, read when first asked for."""

    def __init__(self, client: "StoreSidecar", index: int, convert: Callable[[Any], Any]):
        self._client, self._index, self._convert = client, index, convert

    def result(self) -> Any:
        """The value, or StateError with the child's one-line reason."""
        reply = self._client._reply(self._index)
        if not reply.get("ok"):
            raise StateError(str(reply.get("error") or "the state store failed"))
        return self._convert(reply.get("value"))


class StoreSidecar:
    """Client of a `python -m runbook.state.sidecar` child. Not for use from several threads at once."""

    def __init__(self, process: subprocess.Popen):
        self._process = process
        self._sent = 0
        self._replies: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=20)
        self._drain = threading.Thread(target=self._drain_stderr, name="state-sidecar-stderr", daemon=True)
        self._drain.start()

    @classmethod
    def start(cls) -> "StoreSidecar":
        env = dict(os.environ)
        # The child must import this package even when the parent runs from a source checkout.
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_PACKAGE_ROOT), env.get("PYTHONPATH")) if p)
        process = subprocess.Popen([sys.executable, "-m", "runbook.state.sidecar"], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True,
                                   encoding="utf-8", bufsize=1)
        return cls(process)

    # -- requests -------------------------------------------------------------------------------

    def open(self, url: str, actor: str) -> Pending:
        """Open and migrate the store, then mark runs whose process died interrupted (as every start
        does): the value is one line per such run."""
        return self._send({"op": "open", "url": url, "actor": actor}, list)

    def events(self, *, environment: str | None = None, action: str | None = None, limit: int = 50) -> Pending:
        return self._send({"op": "events", "environment": environment, "action": action, "limit": limit},
                          lambda value: [Event.from_json(item) for item in value])

    def last_backup_at(self, environment: str) -> Pending:
        return self._send({"op": "last_backup_at", "environment": environment},
                          lambda value: None if value is None else datetime.fromisoformat(value))

    def record(self, *, actor: str, action: str, environment: str | None, outcome: str, summary: str = "",
               details: dict[str, Any] | None = None) -> Event:
        """Record an event and wait for it to be written."""
        return self._send({"op": "record", "actor": actor, "action": action, "environment": environment,
                           "outcome": outcome, "summary": summary, "details": details or {}},
                          Event.from_json).result()

    def close(self) -> int:
        """End the child (it finishes the request in hand first); its exit status."""
        if self._sent == 0 and self._process.poll() is None:
            self._process.kill()        # never asked for anything: nothing to finish
        try:
            if self._process.stdin and not self._process.stdin.closed:
                self._process.stdin.close()
        except OSError:
            pass
        try:
            return self._process.wait(_CLOSE_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            self._process.kill()
            return self._process.wait()
        finally:
            self._drain.join(1)
            if self._process.stdout:
                self._process.stdout.close()

    def __enter__(self) -> "StoreSidecar":
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    # -- plumbing -------------------------------------------------------------------------------

    def _send(self, request: dict[str, Any], convert: Callable[[Any], Any]) -> Pending:
        index = self._sent
        self._sent += 1
        try:
            self._process.stdin.write(json.dumps(request) + "\n")
            self._process.stdin.flush()
        except (OSError, ValueError):
            pass        # the child is gone: its reply will say so
        return Pending(self, index, convert)

    def _reply(self, index: int) -> dict[str, Any]:
        with self._lock:
            while len(self._replies) <= index:
                line = self._process.stdout.readline() if self._process.stdout else ""
                if not line:
                    self._replies.append({"ok": False, "error": self._death()})
                    continue
                try:
                    self._replies.append(json.loads(line))
                except ValueError:
                    self._replies.append({"ok": False, "error": "the state store process answered garbage"})
            return self._replies[index]

    def _death(self) -> str:
        status = self._process.wait()
        self._drain.join(1)
        last = next((line for line in reversed(self._stderr_tail) if line.strip()), "")
        why = f": {redact(last.strip())[:300]}" if last else ""
        return f"the state store process ended unexpectedly (exit status {status}){why}"

    def _drain_stderr(self) -> None:
        stream = self._process.stderr
        if stream is None:
            return
        for line in stream:
            self._stderr_tail.append(line)
        stream.close()


# ---------------------------------------------------------------------------
# The child


def serve(requests: IO[str], replies: IO[str], *, exiting: bool = False) -> int:
    """Answer requests until end of input. `exiting`: the process ends right after (main), so a
    SQLite store is not closed: closing the last connection checkpoints the write-ahead log, with
    its fsyncs, while the CLI waits; every commit is already synced in the log, and the next
    opener checkpoints it."""
    from runbook.state.lean import LeanStore

    store: Any = None       # a LeanStore, or the real Store when the lean one cannot serve
    failure: str | None = None

    def answer(request: dict[str, Any]) -> Any:
        nonlocal store
        op = request.get("op")
        if op == "open":
            url = str(request["url"])
            lean = LeanStore.open(url)      # sqlite3 or psycopg alone: at head, no run to reap
            if lean is not None:
                store = lean
                return []
            opened = _real_store(url)
            lines = [f"{run.kind} run {run.id} on {run.environment} was interrupted: {run.summary}"
                     for run in _reap(opened, str(request["actor"]))]
            store = opened
            return lines
        if failure is not None:
            raise StateError(failure)
        if store is None:
            raise StateError("the state store was not opened")
        if op == "events":
            return [event.to_json() for event in store.events(
                environment=request.get("environment"), action=request.get("action"),
                limit=int(request.get("limit") or 50))]
        if op == "last_backup_at":
            if isinstance(store, LeanStore):
                found = store.last_backup_at(str(request["environment"]))
            else:
                from runbook.state.backups import last_backup_at

                found = last_backup_at(store, str(request["environment"]))
            return None if found is None else found.isoformat()
        if op == "record":
            return store.record(actor=str(request["actor"]), action=str(request["action"]),
                                environment=request.get("environment"), outcome=str(request["outcome"]),
                                summary=str(request.get("summary") or ""),
                                details=dict(request.get("details") or {})).to_json()
        raise StateError(f"unknown request {op!r}")

    for line in requests:
        request: Any = None
        try:
            request = json.loads(line)
            reply = {"ok": True, "value": answer(request)}
        except Exception as exc:     # one line back to the parent, never a traceback
            if isinstance(exc, StateError):
                message = str(exc)
            else:
                text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                message = f"the state store failed: {redact(text)[:300]}"
            if isinstance(request, dict) and request.get("op") == "open" and store is None:
                failure = message       # every later request gets the reason the store is not there
            reply = {"ok": False, "error": message}
        replies.write(json.dumps(reply) + "\n")
        replies.flush()
    if store is not None and not (exiting and isinstance(store, LeanStore) and store.sqlite):
        store.close()
    return 0


def _real_store(url: str):
    """The SQLAlchemy Store, opened and migrated: a first start, a schema to migrate, a run to reap.
    The cyclic collector is off while SQLAlchemy loads (its imports make many objects, few cycles:
    a fifth of their CPU time went to scanning them)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        from runbook.state.store import Store
    finally:
        if enabled:
            gc.freeze()
            gc.enable()
    store = Store(url)
    store.migrate()
    return store


def _reap(store, actor: str) -> list:
    from runbook.state.runs import RunStore

    return RunStore(store).reap(actor=actor)


def main() -> int:
    replies = sys.stdout
    sys.stdout = sys.stderr      # nothing but replies may reach the parent's pipe
    try:
        return serve(sys.stdin, replies, exiting=True)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    status = main()
    sys.stderr.flush()
    # Every reply is flushed and the store closed: skip tearing down SQLAlchemy's modules, which
    # would keep the parent waiting for this process to end.
    os._exit(status)
