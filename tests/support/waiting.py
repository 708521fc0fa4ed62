"""Wait for something with a deadline instead of sleeping a fixed time."""
from __future__ import annotations

import threading
import time
from typing import Callable, TypeVar

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float = 10.0, *, interval: float = 0.02,
             what: str | None = None) -> T:
    """Call `predicate` until it returns something truthy and return that; fail at the deadline.

    The short pause between calls only paces the polling; how long the wait lasts is decided by
    the predicate, bounded by `timeout` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what or getattr(predicate, '__name__', predicate)}")
        time.sleep(interval)


def all_at_once(action: Callable[[], object], count: int = 2, *, timeout: float = 120) -> list[BaseException]:
    """Run `action` in `count` threads released together (replicas starting at the same moment);
    returns what they raised: a thread's assertion would vanish otherwise."""
    barrier = threading.Barrier(count)
    failures: list[BaseException] = []

    def one() -> None:
        try:
            barrier.wait(timeout=30)
            action()
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=one, name=f"replica-{n}") for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=timeout)
    return failures
