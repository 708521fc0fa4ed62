"""Revision files read with `ast` (never imported or executed), cached on (path, mtime, size) and
shared by every AlembicProject in the process, so a warm bot only stats the files."""
from __future__ import annotations

import ast
import re
import threading
from pathlib import Path

from runbook.revisions.model import Revision, RevisionError
from runbook.revisions.output import one_line
from runbook.units import shorten

_LEGACY_REV_FILE = re.compile(r"^([a-f0-9]+)\.py$")


def _literal(node: ast.AST):
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return _NOT_LITERAL


_NOT_LITERAL = object()


def _ids(value, what: str, path: Path) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, (tuple, list)) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise RevisionError(f"{path.name}: {what} must be a string, a tuple/list of strings or None")


def _is_docstring(stmt: ast.stmt) -> bool:
    return isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str)


def _is_noop(stmt: ast.stmt) -> bool:
    return isinstance(stmt, ast.Pass) or (
        isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and stmt.value.value is Ellipsis)


def _describe_raise(node: ast.Raise) -> str:
    exc = node.exc
    if exc is None:
        return "downgrade() re-raises"
    call = exc if isinstance(exc, ast.Call) else None
    target = call.func if call else exc
    try:
        name = ast.unparse(target)
    except Exception:  # pragma: no cover - unparse handles every expression node
        name = "an exception"
    text = f"downgrade() raises {name}"
    if call and call.args:
        arg = call.args[0]
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            message = arg.value
        else:
            try:
                message = ast.unparse(arg)
            except Exception:  # pragma: no cover
                message = ""
        message = one_line(message)
        if message:
            text += ": " + shorten(message, 200)
    return text


def reversibility(downgrade: ast.FunctionDef | ast.AsyncFunctionDef | None) -> tuple[bool, str | None]:
    """(reversible, reason): an empty downgrade(), one that only passes, or any `raise` in it is irreversible."""
    if downgrade is None:
        return False, "no downgrade() function"
    body = [stmt for stmt in downgrade.body if not _is_docstring(stmt)]
    if not body:
        return False, "downgrade() is empty (docstring only)"
    if all(_is_noop(stmt) for stmt in body):
        kinds = sorted({"pass" if isinstance(stmt, ast.Pass) else "..." for stmt in body})
        return False, f"downgrade() does nothing (only {' and '.join(kinds)})"
    raises = [node for node in ast.walk(downgrade) if isinstance(node, ast.Raise)]
    if raises:
        raises.sort(key=lambda node: (node.lineno, node.col_offset))
        return False, _describe_raise(raises[0])
    return True, None


def parse_revision_file(path: Path) -> Revision | None:
    """One revision file read with `ast` (never imported). None when Alembic would skip the file."""
    try:
        source = path.read_bytes()
        tree = ast.parse(source, filename=str(path))
    except SyntaxError as exc:
        raise RevisionError(f"cannot parse {path.name} line {exc.lineno}: {one_line(exc.msg or 'syntax error')}"
                            ) from None
    except (OSError, ValueError) as exc:
        raise RevisionError(f"cannot read {path.name}: {one_line(str(exc))}") from None

    values: dict[str, object] = {}
    downgrade = None
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign):
            names = [t.id for t in stmt.targets if isinstance(t, ast.Name)]
            value = stmt.value
        elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value is not None:
            names, value = [stmt.target.id], stmt.value
        elif isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)) and stmt.name == "downgrade":
            downgrade = stmt          # the last definition wins, as at import time
            continue
        else:
            continue
        for name in names:
            if name in ("revision", "down_revision", "branch_labels", "depends_on"):
                values[name] = _literal(value)

    if "revision" in values:
        revision = values["revision"]
        if not isinstance(revision, str) or not revision:
            raise RevisionError(f"{path.name}: `revision` must be a non-empty string literal")
    else:
        legacy = _LEGACY_REV_FILE.match(path.name)
        if not legacy:
            raise RevisionError(f"{path.name}: no `revision = \"...\"` in the file (Alembic fails on it too)")
        revision = legacy.group(1)
    for key in ("down_revision", "branch_labels", "depends_on"):
        if values.get(key) is _NOT_LITERAL:
            raise RevisionError(f"{path.name}: `{key}` must be a literal (runbook-bot reads revision files "
                                "without running them)")

    doc = ast.get_docstring(tree, clean=True) or ""
    first_paragraph = re.split(r"\n\s*\n", doc.strip(), maxsplit=1)[0] if doc.strip() else ""
    message = " ".join(line.strip() for line in first_paragraph.splitlines() if line.strip())
    reversible, reason = reversibility(downgrade)
    return Revision(
        revision=revision,
        down_revisions=_ids(values.get("down_revision"), "down_revision", path),
        message=message,
        path=path,
        reversible=reversible,
        irreversible_reason=reason,
        branch_labels=_ids(values.get("branch_labels"), "branch_labels", path),
        depends_on=_ids(values.get("depends_on"), "depends_on", path),
    )


# Shared by every AlembicProject: path -> ((mtime_ns, size), Revision | None).
_FILE_CACHE: dict[Path, tuple[tuple[int, int], Revision | None]] = {}
_FILE_CACHE_LOCK = threading.Lock()


def _cached_parse(path: Path, stamp: tuple[int, int]) -> Revision | None:
    with _FILE_CACHE_LOCK:
        hit = _FILE_CACHE.get(path)
    if hit is not None and hit[0] == stamp:
        return hit[1]
    parsed = parse_revision_file(path)
    with _FILE_CACHE_LOCK:
        _FILE_CACHE[path] = (stamp, parsed)
    return parsed

