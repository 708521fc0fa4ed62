"""The scripted console demo, played once per test session: tests/test_readme.py compares the
README's excerpt with it, tests/test_end_to_end.py checks each step of the story."""
from __future__ import annotations

import tempfile
from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=1)
def scripted_demo() -> tuple[str, Path]:
    """The steady transcript of `runbook-bot demo --scripted` and its folder, kept after the demo
    ended as `make demo` keeps `.demo/` (the temporary parent goes with the test process)."""
    from bot.console import DEMO_FOLDER, transcript

    folder = Path(tempfile.mkdtemp(prefix="rb-demo-test-")) / DEMO_FOLDER
    return transcript(folder), folder
