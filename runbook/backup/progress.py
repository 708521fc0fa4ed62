"""Progress while a client tool runs: a thread that calls the caller's callback about once a second and
never lets a failing callback stop the operation."""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from runbook.target import redact

log = logging.getLogger(__name__)
from runbook.backup.model import Progress, ProgressCallback


class _Ticker:
    """Calls the progress callback about every `every` seconds from its own thread until stopped.
    A failing callback is logged once and never stops the operation."""

    def __init__(self, callback: ProgressCallback | None, every: float, started: float,
                 measure: Callable[[], tuple[int, str, int | None, int | None]]):
        self.callback = callback
        self.every = every
        self.started = started
        self.measure = measure
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="backup-progress", daemon=True)
        self._warned = False

    def __enter__(self) -> "_Ticker":
        if self.callback is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                written, phase, backup_id, pid = self.measure()
                self.callback(Progress(elapsed=time.monotonic() - self.started, bytes_written=written,
                                       phase=phase, backup_id=backup_id, pid=pid))
            except Exception as exc:  # progress is a courtesy: never let it break a backup
                if not self._warned:
                    log.warning("progress callback failed: %s", redact(repr(exc)))
                    self._warned = True
