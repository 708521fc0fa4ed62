"""Wait for something with a deadline instead of sleeping a fixed time."""
from __future__ import annotations

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
