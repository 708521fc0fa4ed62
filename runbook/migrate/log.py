"""The run's log (§3.3): every line timestamped and redacted to a file, the last lines kept for
messages, and where the logs go."""
from __future__ import annotations

import os
import tempfile
import threading
from collections import deque
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

from runbook.config import Environment
from runbook.target import redact

TAIL_LINES = 40


class RunLog:
    """Timestamped, redacted lines to a file, and the last lines kept for messages."""

    def __init__(self, path: Path, secrets: Sequence[str]):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._secrets = [s for s in secrets if s]
        self._tail: deque[str] = deque(maxlen=TAIL_LINES)
        self._lock = threading.Lock()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        self._file = os.fdopen(fd, "a", encoding="utf-8")

    def scrub(self, text: str) -> str:
        return redact(text, *self._secrets)

    def write(self, line: str, *, source: str = "bot") -> None:
        line = self.scrub(line.rstrip("\n"))
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
        with self._lock:
            self._file.write(f"{stamp} [{source}] {line}\n")
            self._file.flush()
            if source != "bot":
                self._tail.append(line)

    @property
    def tail(self) -> str:
        with self._lock:
            return "\n".join(self._tail)

    def close(self) -> None:
        with self._lock:
            self._file.close()


def default_log_dir(env: Environment) -> Path:
    """Next to the backups (§2.5 storage): <backups.dir>/migration-logs. Backups kept at a URL
    (s3://…) have no local directory: the logs then go where dumps are staged."""
    where = str(env.backups.dir)
    if "://" in where:
        staging = env.backups.staging_dir or Path(tempfile.gettempdir()) / "runbook-bot"
        return Path(staging) / "migration-logs"
    return Path(where) / "migration-logs"

