"""bench/rehearse.py runs end to end at a tiny size (a smoke test: no timing is asserted; the figures at
500 MB are in docs/performance.md)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_rehearsal_bench_runs_at_a_tiny_size():
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "rehearse.py"), "--size-mb", "5", "--rounds", "1",
                           "--sample-ms", "20", "--duty-seconds", "1"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "MB (pg_database_size)" in out
    assert "ratio rehearsal / by hand:" in out
    assert "sampling off" in out and "sampling every 20 ms" in out
    assert "every 20 ms:" in out and "samples/s" in out        # d, the sampler's own CPU
