"""What the app's Alembic prints, read: the offline SQL of a range cut into each step's SQL, and the
one line that says why it failed."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

from runbook.units import shorten


_STEP_MARKER = re.compile(r"^-- Running upgrade (?P<down>[^\s,]*) -> (?P<up>\S+)\s*$")
_TRANSACTION_LINES = {"BEGIN;", "COMMIT;"}


def per_revision_sql(whole: str, steps: Sequence[tuple[str, str]]) -> dict[str, str] | None:
    """Cut the offline SQL of a linear range (`upgrade A:B --sql`) into each step's own SQL, as
    `upgrade down:up --sql` would print it, at the `-- Running upgrade down -> up` lines Alembic
    writes before each step. `steps`: (down, up) in order; down "" for the first step of a range
    from base, whose own render also creates the version table (the header goes with it).

    None when the text is not the plain shape (one transaction around the whole range, markers
    exactly for `steps`, in order); the caller then renders each step on its own. This spares a
    subprocess per revision for the risk review."""
    lines = whole.splitlines(keepends=True)
    markers = [(i, m) for i, line in enumerate(lines) if (m := _STEP_MARKER.match(line.rstrip("\n")))]
    if not steps or [(m["down"], m["up"]) for _, m in markers] != [tuple(step) for step in steps]:
        return None
    end = len(lines)
    while end > markers[-1][0] + 1 and lines[end - 1].strip() in _TRANSACTION_LINES | {""}:
        end -= 1
    while end < len(lines) and not lines[end].strip():
        end += 1                 # blank lines before the closing COMMIT belong to the last step
    header, trailer = lines[:markers[0][0]], lines[end:]
    bounds = [index for index, _ in markers] + [end]
    sections = [lines[a:b] for a, b in zip(bounds, bounds[1:])]
    plain = _TRANSACTION_LINES | {""}
    # From base, the header creates the version table after BEGIN: the first step's own render has
    # it, the others (from a revision) only what comes before it.
    lead = header[:next((i for i, line in enumerate(header) if line.strip() not in plain), len(header))]
    # Anything else around the steps (a transaction per migration, or the version table's CREATE
    # when the range does not start from base) would not be the same in a one-step render.
    if (lead != header and steps[0][0] != "") or any(line.strip() not in plain for line in trailer) or \
            any(line.strip() in _TRANSACTION_LINES for section in sections for line in section):
        return None
    return {up: "".join((header if i == 0 else lead) + section + trailer)
            for i, ((_, up), section) in enumerate(zip(steps, sections))}


def one_line(text: str, limit: int = 400) -> str:
    return shorten(" ".join(text.split()), limit)


_LOG_LINE = re.compile(r"^(INFO|DEBUG|WARNI|WARNING|ERROR|CRITI)\s*\[")
_FILE_LINE = re.compile(r'^File "(?P<path>[^"]+)", line (?P<line>\d+)')


def last_error_line(stderr: str, app_dir: Path) -> str:
    """Alembic's last meaningful error line: `FAILED: ...`, else the exception line of a traceback."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("FAILED:"):
            return line
    for index in range(len(lines) - 1, -1, -1):
        line = lines[index]
        if _LOG_LINE.match(line) or set(line) <= set("^~ ") or line.startswith("Traceback "):
            continue
        # a traceback's last frame tells where: add it when it is the app's file
        for frame in reversed(lines[:index]):
            match = _FILE_LINE.match(frame)
            if match:
                where = Path(match.group("path"))
                try:
                    where_text = str(where.relative_to(app_dir))
                except ValueError:
                    where_text = where.name
                return f"{line} ({where_text} line {match.group('line')})"
        return line
    return ""
