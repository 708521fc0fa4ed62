"""squawk, the SQL linter: which binary, its version, and its JSON findings for a revision's SQL
(an argv subprocess with a timeout and the allowlisted environment)."""
from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

from runbook.config import Environment
from runbook.review.model import ReviewError
from runbook.revisions import one_line
from runbook.subprocess_env import subprocess_env


# squawk 2.70's rules (crates/squawk_linter/src/lib.rs): an allowlist naming anything else is a typo.
SQUAWK_RULES = frozenset("""
adding-field-with-default adding-foreign-key-constraint adding-not-nullable-field adding-required-field
adding-serial-primary-key-field ban-alter-domain-with-add-constraint ban-char-field
ban-concurrent-index-creation-in-transaction ban-create-domain-with-constraint ban-drop-column
ban-drop-database ban-drop-not-null ban-drop-table ban-duplicate-column-assignments ban-truncate-cascade
ban-uncommitted-transaction changing-column-type constraint-missing-not-valid disallowed-unique-constraint
identifier-too-long prefer-bigint-over-int prefer-bigint-over-smallint prefer-identity prefer-repack
prefer-robust-stmts prefer-text-field prefer-timestamptz renaming-column renaming-table
require-concurrent-index-creation require-concurrent-index-deletion require-concurrent-partition-detach
require-concurrent-reindex require-enum-value-ordering require-lock-timeout require-statement-timeout
require-table-schema require-timeout-settings transaction-nesting syntax-error unused-ignore
""".split())


def squawk_argv(env: Environment) -> list[str]:
    """review.squawk, else the squawk installed next to this Python (squawk-cli), else PATH."""
    if env.review.squawk:
        return list(env.review.squawk)
    beside = Path(sys.executable).parent / "squawk"
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    found = shutil.which("squawk")
    if found:
        return [found]
    raise ReviewError("squawk not found: install it (pip install squawk-cli) or set review.squawk")


@functools.lru_cache(maxsize=8)
def _squawk_version(argv: tuple[str, ...], timeout: float) -> str | None:
    try:
        out = subprocess.run([*argv, "--version"], capture_output=True, text=True, timeout=timeout,
                             stdin=subprocess.DEVNULL, env=subprocess_env(libpq=False))
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (out.stdout or out.stderr).strip()
    return text.split()[-1] if text else None


def squawk_version(argv: Sequence[str], timeout: float = 10) -> str | None:
    """squawk's version, asked once per command per process."""
    return _squawk_version(tuple(argv), timeout)


def run_squawk(sql: str, argv: Sequence[str], *, pg_major: int | None, exclude: Sequence[str], cwd: Path,
               timeout: float) -> list[dict[str, Any]]:
    """squawk's JSON findings for `sql` (on stdin). Exit 0 = clean, 1 = findings, else an error."""
    command = [*argv, "--reporter", "json"]
    if pg_major:
        command += ["--pg-version", str(pg_major)]
    if exclude:
        command += ["--exclude", ",".join(exclude)]
    try:
        out = subprocess.run(command, input=sql, capture_output=True, text=True, timeout=timeout, cwd=cwd,
                             env=subprocess_env(libpq=False))
    except FileNotFoundError:
        raise ReviewError(f"cannot run {argv[0]!r}: not found (pip install squawk-cli, or set review.squawk)") \
            from None
    except subprocess.TimeoutExpired:
        raise ReviewError(f"squawk did not finish within {timeout:g} s (review.squawk_timeout_seconds)") from None
    except OSError as exc:
        raise ReviewError(f"cannot run {argv[0]!r}: {one_line(str(exc))}") from None
    if out.returncode not in (0, 1):
        raise ReviewError(f"squawk failed (exit {out.returncode}): {one_line(out.stderr or out.stdout, 300)}")
    text = out.stdout.strip()
    if not text:
        return []
    try:
        findings = json.loads(text)
    except json.JSONDecodeError:
        raise ReviewError(f"squawk's output is not JSON: {one_line(text, 200)}") from None
    if not isinstance(findings, list):
        raise ReviewError("squawk's JSON output is not a list of findings")
    return [f for f in findings if isinstance(f, dict)]
