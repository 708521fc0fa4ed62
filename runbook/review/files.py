"""A revision file, read without running it (ast): its hash, its `squawk_allow` allowlist, and where
its upgrade() reads the database."""
from __future__ import annotations

import ast
import difflib
import hashlib
from pathlib import Path

from runbook.review.model import AllowlistError
from runbook.review.squawk import SQUAWK_RULES


ALLOWLIST_NAME = "squawk_allow"


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_allowlist(path: Path) -> dict[str, str]:
    """`squawk_allow = {"rule": "reason", ...}` at module level, read with ast; {} when absent."""
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except SyntaxError as exc:
        raise AllowlistError(f"{path.name} line {exc.lineno}: cannot parse the file") from None
    found: dict[str, str] | None = None
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign):
            targets, value = stmt.targets, stmt.value
        elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
            targets, value = [stmt.target], stmt.value
        else:
            continue
        if not any(isinstance(t, ast.Name) and t.id == ALLOWLIST_NAME for t in targets):
            continue
        where = f"{path.name} line {stmt.lineno}: {ALLOWLIST_NAME}"
        try:
            literal = ast.literal_eval(value)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            raise AllowlistError(f"{where} must be a literal dict of squawk rule -> reason "
                                 "(runbook-bot reads it without running the file)") from None
        if not isinstance(literal, dict):
            raise AllowlistError(f"{where} must be a dict of squawk rule -> reason, "
                                 f"e.g. {{\"require-concurrent-index-creation\": \"table is tiny\"}}")
        for rule, reason in literal.items():
            if not isinstance(rule, str) or rule not in SQUAWK_RULES:
                near = difflib.get_close_matches(str(rule), sorted(SQUAWK_RULES), n=1)
                hint = f" (did you mean {near[0]}?)" if near else ""
                raise AllowlistError(f"{where}: {str(rule)[:60]!r} is not a squawk rule{hint}")
            if not isinstance(reason, str) or not reason.strip():
                raise AllowlistError(f"{where}: {rule} needs a reason (who reviewed it and why it is safe)")
        found = {rule: " ".join(reason.split()) for rule, reason in literal.items()}
    return found or {}


def reads_data(path: Path) -> str | None:
    """Where upgrade() reads the database (op.get_bind()), the usual reason offline rendering fails."""
    try:
        tree = ast.parse(path.read_bytes())
    except (OSError, SyntaxError, ValueError):
        return None
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == "upgrade":
            for call in ast.walk(node):
                if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and \
                        call.func.attr == "get_bind":
                    return f"it reads the database: op.get_bind() at line {call.lineno}"
    return None


def relative_path(path: Path, app_dir: Path) -> str:
    """The revision file as shown: relative to app_dir when inside it, else its name."""
    try:
        return str(path.relative_to(app_dir))
    except ValueError:
        return path.name
