"""squawk's findings and the parsed statements of a revision's SQL, kept by the SQL's text (issue 18)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Sequence

from runbook.review.squawk import squawk_version
from runbook.sqlscan import Statement


class LintCache:
    """squawk's findings and the parsed statements of a revision's SQL, kept by the SQL's text:
    the same SQL linted by the same squawk (its argv and binary's stamp), for the same server
    version and exclusions, and parsed by the same analyser (runbook/sqlscan.py and pglast's
    stamps), gives the same review. In memory and in the preview cache directory, so a fresh
    process lints only what changed (a touched revision file renders the same SQL again). Without
    a squawk binary to stamp (an argv that is not a file), nothing is cached."""

    _memory: dict[str, tuple[list[dict[str, Any]], list[Statement]]] = {}
    _versions: dict[str, str | None] = {}

    def __init__(self, argv: Sequence[str], pg_major: int | None, exclude: Sequence[str], directory: Path | None):
        self.argv, self.directory = list(argv), Path(directory) if directory is not None else None
        identity = _tool_stamps(self.argv)
        self.prefix = None if identity is None else repr((_LINT_CACHE_VERSION, identity, pg_major, sorted(exclude)))

    def _key(self, sql: str) -> str | None:
        if self.prefix is None:
            return None
        return hashlib.sha256((self.prefix + "\n" + sql).encode()).hexdigest()

    def get(self, sql: str) -> tuple[list[dict[str, Any]], list[Statement]] | None:
        key = self._key(sql)
        if key is None:
            return None
        if key in self._memory:
            return self._memory[key]
        try:
            data = json.loads((self.directory / f"lint-{key}.json").read_text(encoding="utf-8")) \
                if self.directory is not None else None
            if data is None:
                return None
            found = ([f for f in data["findings"] if isinstance(f, dict)],
                     [Statement(int(s["start"]), int(s["end"]), int(s["line"]), str(s["text"]),
                                tuple((str(r), str(m)) for r, m in s["locks"]), tuple(str(i) for i in s["indexes"]))
                      for s in data["statements"]])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        self._memory[key] = found
        return found

    def put(self, sql: str, findings: list[dict[str, Any]], stmts: list[Statement]) -> None:
        key = self._key(sql)
        if key is None:
            return
        self._memory[key] = (findings, stmts)
        if self.directory is None:
            return
        data = {"findings": findings, "statements": [
            {"start": s.start, "end": s.end, "line": s.line, "text": s.text, "locks": [list(lock) for lock in s.locks],
             "indexes": list(s.indexes)} for s in stmts]}
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            partial = self.directory / f".lint-{key}.{os.getpid()}.tmp"
            partial.write_text(json.dumps(data), encoding="utf-8")
            os.replace(partial, self.directory / f"lint-{key}.json")
        except OSError:
            pass  # only costs time

    def squawk_version(self, timeout: float) -> str | None:
        """squawk's version, asked once per binary (kept beside the lints)."""
        if self.prefix is None:
            return squawk_version(self.argv, timeout)
        key = hashlib.sha256(("version\n" + self.prefix).encode()).hexdigest()
        if key not in self._versions:
            path = self.directory / f"squawk-{key}.txt" if self.directory is not None else None
            try:
                self._versions[key] = path.read_text(encoding="utf-8").strip() or None if path else None
            except OSError:
                self._versions[key] = None
            if self._versions[key] is None:
                self._versions[key] = squawk_version(self.argv, timeout)
                if path is not None and self._versions[key]:
                    try:
                        path.parent.mkdir(parents=True, exist_ok=True)
                        path.write_text(self._versions[key], encoding="utf-8")
                    except OSError:
                        pass
        return self._versions[key]


_LINT_CACHE_VERSION = 1


def _tool_stamps(argv: Sequence[str]) -> tuple | None:
    """(argv, squawk's binary, sqlscan's and pglast's files, each with its stamp), or None."""
    import importlib.util

    import runbook.sqlscan

    executable = argv[0] if os.path.isabs(argv[0]) else shutil.which(argv[0])
    spec = importlib.util.find_spec("pglast")
    stamps = []
    for path in (executable, runbook.sqlscan.__file__, spec.origin if spec else None):
        try:
            stat = os.stat(path)          # type: ignore[arg-type]
        except (OSError, TypeError):
            return None
        stamps.append((str(path), stat.st_mtime_ns, stat.st_size))
    return (tuple(argv), tuple(stamps))
