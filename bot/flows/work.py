"""The bot's own bounded executor: every command, click and approved action runs here, never on Bolt's
listener pool (design rule 1). Full means refused at once (`Busy`), not queued without end."""
from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

from bot.redaction import Redactor

log = logging.getLogger(__name__)


class Busy(Exception):
    """The executor's queue is full."""


class WorkQueue:
    def __init__(self, redactor: Redactor, *, max_workers: int = 4, max_queued: int = 64):
        self.redactor = redactor
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="runbook-flow")
        self._slots = threading.BoundedSemaphore(max_queued)
        self._in_flight = 0
        self._submitted = 0
        self._idle = threading.Condition()

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        """Any work (a command, a click, an approved action) on the bounded executor."""
        if not self._slots.acquire(blocking=False):
            raise Busy("the bot is busy with too many commands; try again in a minute")
        with self._idle:
            self._in_flight += 1
            self._submitted += 1
        future = self._executor.submit(self._logged, fn, *args)
        future.add_done_callback(self._finished)
        return future

    def _logged(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except Exception as exc:  # nobody waits on these futures: an escaped error would vanish
            log.error("%s failed: %s", getattr(fn, "__name__", "work"), self.redactor(repr(exc)),
                      exc_info=self.redactor.safe_exc_info(exc))
            return None

    def _finished(self, _future: Future) -> None:
        self._slots.release()
        with self._idle:
            self._in_flight -= 1
            self._idle.notify_all()

    @property
    def submitted(self) -> int:
        """How many pieces of work were ever handed to the executor."""
        with self._idle:
            return self._submitted

    def wait_idle(self, timeout: float, *, after: int | None = None) -> bool:
        """Until no work is queued or running (the console demo and tests use it). With `after`,
        first until more than `after` pieces of work were submitted: the ack of a command comes
        back before its listener has handed the work over."""
        with self._idle:
            return self._idle.wait_for(
                lambda: self._in_flight == 0 and (after is None or self._submitted > after), timeout)

    def shutdown(self, wait: bool = True) -> None:
        self._executor.shutdown(wait=wait, cancel_futures=not wait)
