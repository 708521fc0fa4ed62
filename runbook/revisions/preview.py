"""The SQL preview being rendered: one `alembic ... --sql` subprocess, shared by every caller in the
process that wants the same preview (`_RENDERING`), and the previews already rendered (`_PREVIEW_CACHE`,
then the cache directory)."""
from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from runbook.dsn import password_of, redact
from runbook.revisions.model import RevisionError
from runbook.revisions.output import one_line
from runbook.revisions.process import _kill_group

if TYPE_CHECKING:
    from runbook.revisions.project import AlembicProject

_PREVIEW_CACHE: dict[str, str] = {}
_PREVIEW_CACHE_LOCK = threading.Lock()
_RENDERING: dict[str, "PreviewRender"] = {}       # previews whose alembic runs now, by cache key


def preview_cache_dir() -> Path:
    """Where rendered SQL previews are kept between runs ($RUNBOOK_BOT_CACHE_DIR, else the XDG cache)."""
    explicit = os.environ.get("RUNBOOK_BOT_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "runbook-bot" / "sql-previews"


class PreviewRender:
    """One `alembic ... --sql` subprocess, started and read on a thread of its own (a preview larger
    than a pipe's buffer must be read while it is written), or a preview already known.

    `result()` waits and returns the SQL or raises RevisionError (one redacted line); the result is
    cached by the project as sql_preview's are. `cancel()` says the caller no longer needs it: the
    process is killed once nobody else waits for it (a speculative render that guessed wrong)."""

    def __init__(self, project: "AlembicProject | None", key: str | None, argv: list[str], shown: str, dsn: str,
                 timeout: float):
        self._project, self._key, self.argv, self._shown = project, key, argv, shown
        self._dsn, self._timeout = dsn, timeout
        self._finished = threading.Event()
        self._text: str | None = None
        self._error: str | None = None
        self._process: subprocess.Popen | None = None
        self._users = 1                 # guarded by _PREVIEW_CACHE_LOCK
        self._cancelled = False

    @classmethod
    def done(cls, text: str) -> "PreviewRender":
        render = cls(None, None, [], "", "", 0)
        render._text = text
        render._finished.set()
        return render

    @property
    def started_process(self) -> bool:
        return self._process is not None

    def serves(self, project: "AlembicProject", dsn: str) -> bool:
        """Whether this render is what `project` would start for `dsn` (same app, URL and variables)."""
        mine = self._project
        return mine is not None and self._dsn == dsn and (mine.app_dir, mine.app_env) == (project.app_dir,
                                                                                       project.app_env)

    def join(self) -> bool:
        """Share this render with one more caller (under _PREVIEW_CACHE_LOCK); False when it is being
        cancelled."""
        if self._cancelled:
            return False
        self._users += 1
        return True

    def start(self) -> None:
        project = self._project
        assert project is not None
        try:
            self._process = subprocess.Popen(
                self.argv, cwd=project.app_dir, env=project.subprocess_env(self._dsn), stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace", start_new_session=True)
        except OSError as exc:
            self._fail(project._not_runnable(exc, self._dsn))
            return
        threading.Thread(target=self._collect, name="alembic-render", daemon=True).start()

    def _collect(self) -> None:
        proc, project = self._process, self._project
        assert proc is not None and project is not None
        try:
            out, err = proc.communicate(timeout=self._timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            proc.communicate()
            self._fail(project._timed_out(self._shown, self._timeout))
            return
        except Exception as exc:  # noqa: BLE001 - a reader thread must always finish the render
            _kill_group(proc)
            self._fail(f"{self._shown} could not be read: {one_line(str(exc))}")
            return
        if self._cancelled:
            self._fail(f"{self._shown} was cancelled")
        elif proc.returncode != 0:
            self._fail(project._failed(self._shown, proc.returncode, out, err, self._dsn))
        else:
            project._store_preview(self._key, out)
            self._finish(out, None)

    def _fail(self, message: str) -> None:
        self._finish(None, one_line(redact(message, password_of(self._dsn), self._dsn)))

    def _finish(self, text: str | None, error: str | None) -> None:
        self._text, self._error = text, error
        with _PREVIEW_CACHE_LOCK:
            if self._key is not None and _RENDERING.get(self._key) is self:
                del _RENDERING[self._key]
        self._finished.set()

    def result(self) -> str:
        self._finished.wait()
        if self._error is not None:
            raise RevisionError(self._error)
        return self._text or ""

    def cancel(self) -> None:
        with _PREVIEW_CACHE_LOCK:
            self._users -= 1
            if self._users > 0 or self._finished.is_set():
                return
            self._cancelled = True
            if self._key is not None and _RENDERING.get(self._key) is self:
                del _RENDERING[self._key]
        if self._process is not None:
            _kill_group(self._process)
