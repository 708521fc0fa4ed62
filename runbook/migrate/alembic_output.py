"""Reading what alembic said: the line that says what went wrong, and whether it was a lock timeout."""
from __future__ import annotations

import re
from pathlib import Path

from runbook.revisions import last_error_line

_EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Timeout)|FAILED)\b[^:]{0,80}:\s*\S")
_FRAME = re.compile(r'^\s*File "(?P<path>[^"]+)", line (?P<line>\d+)')


def error_line(output: str, app_dir: Path) -> str:
    """The line that says what went wrong in alembic's output: the last exception line (SQLAlchemy
    puts "[SQL: ...]" and a "Background on this error" link after it), with the app's own file
    and line where the traceback passed through it."""
    lines = output.splitlines()
    for index in range(len(lines) - 1, -1, -1):
        if _EXCEPTION_LINE.match(lines[index].strip()):
            where = ""
            for frame in lines[:index]:
                match = _FRAME.match(frame)
                if match and Path(match.group("path")).resolve().is_relative_to(Path(app_dir).resolve()):
                    where = f" ({Path(match.group('path')).resolve().relative_to(Path(app_dir).resolve())} " \
                            f"line {match.group('line')})"
            return lines[index].strip() + where
    return last_error_line(output, app_dir)


def is_lock_timeout(output: str) -> bool:
    return "LockNotAvailable" in output or "due to lock timeout" in output

