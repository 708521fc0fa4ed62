"""Alembic state: current, heads, pending, SQL preview, reversibility (§1.2).

The app's code never runs inside the bot (design rule 11):

* `alembic.ini` is read with configparser (`script_location`, `version_locations`,
  `%(here)s`), then every revision file with `ast` — nothing is imported or executed.
  Parsed files are cached on (path, mtime, size), shared by every AlembicProject in the
  process, so a warm bot only stats the files.
* The SQL preview runs the app's own Alembic as a subprocess in `app_dir`, with the
  database URL in the environment variable its env.py reads, for the pending range only
  (`upgrade <current>:<target> --sql`, design rule 12).

`Revision`, `AlembicState` and `RevisionError` are a contract others build on.
"""
from __future__ import annotations

import ast
import configparser
import hashlib
import json
import os
import re
import signal
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from runbook.dsn import describe, password_of, redact
from runbook.subprocess_env import app_subprocess_env
from runbook.units import shorten


@dataclass(frozen=True)
class Revision:
    revision: str
    down_revisions: tuple[str, ...]
    message: str
    path: Path
    reversible: bool
    irreversible_reason: str | None = None   # e.g. "downgrade() raises NotImplementedError"
    branch_labels: tuple[str, ...] = ()
    depends_on: tuple[str, ...] = ()         # as written in the file (ids, prefixes or branch labels)


@dataclass(frozen=True)
class AlembicState:
    current: list[str]          # from the database's alembic_version; [] when unversioned
    heads: list[str]
    pending: list[Revision]     # oldest first, exactly the revisions `upgrade head` would apply
    # Why `pending` could not be computed exactly (several heads, a current revision the
    # scripts do not contain); None when everything is consistent.
    problem: str | None = None


class RevisionError(Exception):
    """Alembic could not be read or run; the text is one line and redacted."""


# ---------------------------------------------------------------------------
# Reading alembic.ini

_SEPARATORS = {"space": " ", "newline": "\n", "os": os.pathsep, ":": ":", ";": ";"}
_LEGACY_SPLIT = re.compile(r", *|(?: +)")
# Alembic's own filter (alembic/script/base.py): .py files, not editor locks, not __init__.
_REV_FILE = re.compile(r"^(?!\.\#|__init__)(.*\.py)$")
_LEGACY_REV_FILE = re.compile(r"^([a-f0-9]+)\.py$")
_RELATIVE = re.compile(r"^(?P<base>.*?)(?P<sign>[+-])(?P<n>\d+)$")


@dataclass(frozen=True)
class _Layout:
    config_path: Path
    script_location: Path
    version_locations: tuple[Path, ...]
    recursive: bool


def _config_args(argv: Sequence[str]) -> tuple[str | None, str]:
    """`-c/--config FILE` and `-n/--name SECTION` when the configured argv carries them after `alembic`."""
    config, name = None, "alembic"
    starts = [i for i, item in enumerate(argv) if Path(item).name in ("alembic", "alembic.exe")]
    items = list(argv)[starts[-1] + 1:] if starts else []
    for i, item in enumerate(items):
        for short, long_ in (("-c", "--config"), ("-n", "--name")):
            value = None
            if item in (short, long_) and i + 1 < len(items):
                value = items[i + 1]
            elif item.startswith(long_ + "="):
                value = item[len(long_) + 1:]
            if value is not None:
                if short == "-c":
                    config = value
                else:
                    name = value
    return config, name


def _read_layout(app_dir: Path, config_file: str, section: str) -> _Layout:
    ini = (app_dir / config_file) if not Path(config_file).is_absolute() else Path(config_file)
    if not ini.is_file():
        raise RevisionError(f"no {config_file} in {app_dir}: app_dir must be the directory that holds "
                            "the app's Alembic configuration")
    parser = configparser.ConfigParser(defaults={"here": str(ini.parent.absolute())})
    try:
        parser.read(ini, encoding="utf-8")
        options = dict(parser.items(section)) if parser.has_section(section) else {}
    except (configparser.Error, UnicodeDecodeError) as exc:
        raise RevisionError(f"cannot read {ini.name}: {one_line(str(exc))}") from None

    toml = _pyproject_alembic(app_dir)
    location = options.get("script_location") or toml.get("script_location")
    if not location:
        raise RevisionError(f"{ini.name} has no script_location in its [{section}] section")
    script_location = _location(app_dir, str(location))

    raw_versions = options.get("version_locations")
    if raw_versions:
        sep_name = options.get("path_separator") or options.get("version_path_separator")
        if sep_name:
            if sep_name not in _SEPARATORS:
                raise RevisionError(f"{ini.name}: path_separator {sep_name!r} is not one of "
                                    f"{', '.join(_SEPARATORS)}")
            parts = [p.strip() for p in raw_versions.split(_SEPARATORS[sep_name])]
        else:
            parts = _LEGACY_SPLIT.split(raw_versions.strip())
        versions = tuple(_location(app_dir, p) for p in parts if p)
    elif toml.get("version_locations"):
        versions = tuple(_location(app_dir, str(p)) for p in toml["version_locations"])
    else:
        versions = (script_location / "versions",)

    recursive = str(options.get("recursive_version_locations",
                                toml.get("recursive_version_locations", "false"))).strip().lower()
    return _Layout(ini, script_location, versions, recursive in ("true", "1", "yes", "on"))


def _pyproject_alembic(app_dir: Path) -> dict:
    """[tool.alembic] of pyproject.toml (Alembic >= 1.16 may keep its paths there)."""
    path = app_dir / "pyproject.toml"
    if not path.is_file():
        return {}
    try:
        import tomllib

        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except Exception:  # a broken pyproject is the app's concern; alembic.ini still rules
        return {}
    section = data.get("tool", {}).get("alembic", {})
    if not isinstance(section, dict):
        return {}
    here = str(app_dir.absolute())
    out = {}
    for key, value in section.items():
        if isinstance(value, str):
            value = value.replace("%(here)s", here)
        elif isinstance(value, list):
            value = [v.replace("%(here)s", here) if isinstance(v, str) else v for v in value]
        out[key] = value
    return out


def _location(app_dir: Path, value: str) -> Path:
    """A path as Alembic would resolve it when run with cwd = app_dir; `pkg.mod:dir` looked up in app_dir."""
    value = value.strip()
    if ":" in value and not re.match(r"^[A-Za-z]:[\\/]", value) and not Path(value).exists():
        package, _, sub = value.partition(":")
        candidate = app_dir.joinpath(*package.split(".")) / sub
        if candidate.exists():
            return candidate
        raise RevisionError(f"script location {value!r} names a package resource; runbook-bot does not "
                            "import app code: use a path relative to app_dir instead")
    path = Path(value).expanduser()
    return path if path.is_absolute() else app_dir / path


# ---------------------------------------------------------------------------
# Reading revision files with ast


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


# ---------------------------------------------------------------------------
# The revision graph


@dataclass
class _Graph:
    revisions: dict[str, Revision]                 # oldest first
    heads: list[str]
    parents: dict[str, tuple[str, ...]]            # down_revisions + resolved depends_on
    children: dict[str, list[str]]                 # through down_revision only (as Alembic's nextrev)
    labels: dict[str, str] = field(default_factory=dict)   # branch label -> revision declaring it

    def position(self, rev: str) -> int:
        return self._positions[rev]

    def __post_init__(self) -> None:
        self._positions = {rev: i for i, rev in enumerate(self.revisions)}

    def ancestors(self, revs: Iterable[str]) -> set[str]:
        """The given revisions and everything they need (down revisions and dependencies)."""
        seen: set[str] = set()
        stack = list(revs)
        while stack:
            rev = stack.pop()
            if rev in seen:
                continue
            seen.add(rev)
            stack.extend(self.parents[rev])
        return seen


def _build_graph(scripts: list[Revision]) -> _Graph:
    by_id: dict[str, Revision] = {}
    for script in scripts:
        if script.revision in by_id:
            raise RevisionError(f"revision {script.revision} is defined twice: {by_id[script.revision].path.name} "
                                f"and {script.path.name}")
        by_id[script.revision] = script
    labels: dict[str, str] = {}
    for script in scripts:
        for label in script.branch_labels:
            labels[label] = script.revision

    def resolve_ref(ref: str, owner: Revision, what: str) -> str:
        if ref in by_id:
            return ref
        if what == "depends_on":
            if ref in labels:
                return labels[ref]
            matches = [rev for rev in by_id if rev.startswith(ref)]
            if len(matches) == 1:
                return matches[0]
        raise RevisionError(f"{owner.path.name}: {what} {ref!r} is not a revision of this app")

    parents: dict[str, tuple[str, ...]] = {}
    children: dict[str, list[str]] = {rev: [] for rev in by_id}
    for script in scripts:
        downs = tuple(resolve_ref(ref, script, "down_revision") for ref in script.down_revisions)
        deps = tuple(resolve_ref(ref, script, "depends_on") for ref in script.depends_on)
        parents[script.revision] = downs + tuple(d for d in deps if d not in downs)
        for down in downs:
            children[down].append(script.revision)

    # Kahn's topological sort, oldest first; ties keep file order (stable, deterministic).
    file_order = {script.revision: i for i, script in enumerate(scripts)}
    waiting = {rev: len(set(ps)) for rev, ps in parents.items()}
    dependents: dict[str, list[str]] = {rev: [] for rev in by_id}
    for rev, ps in parents.items():
        for parent in set(ps):
            dependents[parent].append(rev)
    ready = sorted((rev for rev, n in waiting.items() if n == 0), key=file_order.__getitem__)
    order: list[str] = []
    while ready:
        rev = ready.pop(0)
        order.append(rev)
        released = []
        for child in dependents[rev]:
            waiting[child] -= 1
            if waiting[child] == 0:
                released.append(child)
        ready = sorted(ready + released, key=file_order.__getitem__)
    if len(order) != len(by_id):
        stuck = sorted(set(by_id) - set(order))
        raise RevisionError(f"the revisions form a cycle: {', '.join(stuck[:5])}")

    heads = [rev for rev in order if not children[rev]]
    return _Graph(revisions={rev: by_id[rev] for rev in order}, heads=heads, parents=parents,
                  children=children, labels=labels)


# Shared by every AlembicProject: (config path, section) -> (signature, graph, layout).
_GRAPH_CACHE: dict[tuple[Path, str], tuple[tuple, _Graph, _Layout]] = {}
_GRAPH_CACHE_LOCK = threading.Lock()
_PREVIEW_CACHE: dict[str, str] = {}
_PREVIEW_CACHE_LOCK = threading.Lock()
_RENDERING: dict[str, "PreviewRender"] = {}       # previews whose alembic runs now, by cache key


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_mtime_ns, st.st_size


def _revision_files(layout: _Layout) -> list[tuple[Path, tuple[int, int]]]:
    """Every candidate revision file with its (mtime_ns, size), in Alembic's listing order."""
    files: list[tuple[Path, tuple[int, int]]] = []
    seen: set[Path] = set()
    for location in layout.version_locations:
        if not location.is_dir():
            continue
        for root, dirs, names in os.walk(location):
            if Path(root).name == "__pycache__":
                dirs[:] = []
                continue
            dirs.sort()
            for name in sorted(names):
                if not _REV_FILE.match(name):
                    continue
                path = Path(root, name)
                real = path.resolve()
                if real in seen:
                    continue
                seen.add(real)
                try:
                    files.append((path, _stamp(path)))
                except OSError:
                    continue      # vanished between listing and stat
            if not layout.recursive:
                break
    return files


# ---------------------------------------------------------------------------
# Subprocess output


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


def run_argv(argv: list[str], *, cwd: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    """Run argv (no shell) in its own process group; on timeout the whole group is killed."""
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, errors="replace", start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def preview_cache_dir() -> Path:
    """Where rendered SQL previews are kept between runs ($RUNBOOK_BOT_CACHE_DIR, else the XDG cache)."""
    explicit = os.environ.get("RUNBOOK_BOT_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "runbook-bot" / "sql-previews"


# ---------------------------------------------------------------------------
# A SQL preview being rendered


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


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()


# ---------------------------------------------------------------------------
# The project


class AlembicProject:
    """One app's Alembic: scripts read with `ast`, previews through the app's own `alembic` subprocess.

    `alembic_argv` is the command prefix (`["poetry", "run", "alembic"]`); `-c FILE` / `-n SECTION`
    in it are honoured when reading the configuration. `url_env` is the variable the app's env.py
    reads the database URL from.
    """

    def __init__(self, app_dir: Path | str, alembic_argv: Sequence[str] = ("alembic",),
                 url_env: str = "DATABASE_URL", *, version_table: str = "alembic_version",
                 version_table_schema: str | None = None, preview_cache_dir: Path | None = None,
                 app_env: Sequence[str] = ()):
        self.app_dir = Path(app_dir).expanduser().absolute()
        self.preview_cache_dir = preview_cache_dir
        self.alembic_argv = list(alembic_argv) or ["alembic"]
        self.url_env = url_env
        # Variables of the bot's environment the app's alembic also gets (runbook.subprocess_env).
        self.app_env = tuple(app_env)
        self.version_table = version_table
        self.version_table_schema = version_table_schema
        config, self._section = _config_args(self.alembic_argv)
        self._config_file = config or "alembic.ini"

    def __repr__(self) -> str:
        return f"AlembicProject({str(self.app_dir)!r}, {self.alembic_argv!r}, {self.url_env!r})"

    # -- scripts ---------------------------------------------------------------------------

    @property
    def config_path(self) -> Path:
        path = Path(self._config_file)
        return path if path.is_absolute() else self.app_dir / path

    def _graph(self) -> _Graph:
        ini = self.config_path
        key = (ini, self._section)
        try:
            ini_stamp = _stamp(ini)
        except OSError:
            raise RevisionError(f"no {self._config_file} in {self.app_dir}: app_dir must be the directory "
                                "that holds the app's Alembic configuration") from None
        pyproject = self.app_dir / "pyproject.toml"
        try:
            toml_stamp = _stamp(pyproject)
        except OSError:
            toml_stamp = None
        with _GRAPH_CACHE_LOCK:
            cached = _GRAPH_CACHE.get(key)
        if cached is not None and cached[0][:2] == (ini_stamp, toml_stamp):
            layout = cached[2]
        else:
            layout = _read_layout(self.app_dir, self._config_file, self._section)
        files = _revision_files(layout)
        signature = (ini_stamp, toml_stamp, tuple((str(p), s) for p, s in files))
        if cached is not None and cached[0] == signature:
            return cached[1]
        scripts = [rev for rev in (_cached_parse(path, stamp) for path, stamp in files) if rev is not None]
        graph = _build_graph(scripts)
        with _GRAPH_CACHE_LOCK:
            _GRAPH_CACHE[key] = (signature, graph, layout)
        return graph

    def scripts(self) -> dict[str, Revision]:
        """Every revision of the app, keyed by id, oldest first."""
        return dict(self._graph().revisions)

    def revisions(self) -> list[Revision]:
        """Every revision of the app, oldest first."""
        return list(self._graph().revisions.values())

    def get(self, rev: str) -> Revision:
        """The Revision a user-supplied id (full, prefix, head, +N...) names."""
        resolved = self.resolve(rev)
        graph = self._graph()
        if resolved not in graph.revisions:
            raise RevisionError(f"{rev!r} does not name a single revision")
        return graph.revisions[resolved]

    def heads(self) -> list[str]:
        """All heads, oldest first; more than one means a merge revision is needed."""
        return list(self._graph().heads)

    def head(self) -> str:
        """The single head; RevisionError when there are several (or none)."""
        return self._single_head(self._graph())

    @staticmethod
    def _single_head(graph: _Graph) -> str:
        if not graph.heads:
            raise RevisionError("no revisions found in the migration scripts")
        if len(graph.heads) > 1:
            raise RevisionError(f"several heads: merge needed ({', '.join(graph.heads)}); "
                                "create one with `alembic merge heads`")
        return graph.heads[0]

    # -- resolving user input --------------------------------------------------------------

    def resolve(self, rev: str, current: Sequence[str] | None = None) -> str:
        """A validated revision id for user input.

        Accepts a full id, a unique prefix, a branch label, "head" (the single head),
        "heads" (the head, or "heads" when there are several), "base", and relative
        steps: "+N"/"-N" from `current` (from base when current is empty), "<rev>+N",
        "<rev>-N", "head-N". Returns a revision id, "base" or "heads".
        """
        graph = self._graph()
        text = (rev or "").strip()
        if not text:
            raise RevisionError("no revision given; " + self._known(graph))
        if text == "base":
            return "base"
        if text == "head":
            return self._single_head(graph)
        if text == "heads":
            return graph.heads[0] if len(graph.heads) == 1 else "heads"
        if text in graph.revisions:
            return text
        if text in graph.labels:
            return self._label_head(graph, text)
        relative = _RELATIVE.match(text)
        if relative:
            steps = int(relative.group("n")) * (1 if relative.group("sign") == "+" else -1)
            base = relative.group("base")
            if not base:
                if current is None:
                    raise RevisionError(f"{text!r} is relative to the current revision, which is not known here")
                start = self._validated_current(graph, current)
                if len(start) > 1:
                    raise RevisionError(f"{text!r} is ambiguous: the database has several current revisions "
                                        f"({', '.join(start)})")
                return self._step(graph, start[0] if start else None, steps, text)
            try:
                start_rev = self.resolve(base, current)
            except RevisionError:
                start_rev = None
            if start_rev is not None:
                if start_rev == "heads":
                    raise RevisionError(f"{text!r}: several heads, name one of {', '.join(graph.heads)}")
                return self._step(graph, None if start_rev == "base" else start_rev, steps, text)
        matches = [r for r in graph.revisions if r.startswith(text)]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise RevisionError(f"revision prefix {text!r} is ambiguous: it matches {', '.join(matches)}")
        raise RevisionError(f"unknown revision {text!r}; " + self._known(graph))

    @staticmethod
    def _known(graph: _Graph) -> str:
        if not graph.revisions:
            return "this app has no revisions"
        revs = list(graph.revisions)
        shown = [f"{r} (head)" if r in graph.heads else r for r in revs[-10:]]
        older = f" and {len(revs) - 10} older" if len(revs) > 10 else ""
        return (f"this app has {', '.join(shown)}{older}; also accepted: a unique prefix, head, base, "
                "+N, -N")

    @staticmethod
    def _label_head(graph: _Graph, label: str) -> str:
        start = graph.labels[label]
        heads = [h for h in graph.heads if start in graph.ancestors([h])]
        if len(heads) != 1:
            raise RevisionError(f"branch {label!r} has {len(heads)} heads")
        return heads[0]

    @staticmethod
    def _step(graph: _Graph, start: str | None, steps: int, text: str) -> str:
        position = start
        for _ in range(abs(steps)):
            if steps > 0:
                nexts = ([r for r in graph.revisions if not graph.revisions[r].down_revisions]
                         if position is None else graph.children[position])
                if not nexts:
                    where = position or "base"
                    raise RevisionError(f"{text!r} goes past the head: {where} has no later revision")
                if len(nexts) > 1:
                    raise RevisionError(f"{text!r} is ambiguous: {position or 'base'} is followed by "
                                        f"{', '.join(nexts)}; name the revision")
                position = nexts[0]
            else:
                if position is None:
                    raise RevisionError(f"{text!r} goes below base")
                downs = graph.revisions[position].down_revisions
                if len(downs) > 1:
                    raise RevisionError(f"{text!r} is ambiguous: {position} merges {', '.join(downs)}; "
                                        "name the revision")
                position = downs[0] if downs else None
        return position if position is not None else "base"

    def _validated_current(self, graph: _Graph, current: Sequence[str]) -> list[str]:
        unknown = [rev for rev in current if rev not in graph.revisions]
        if unknown:
            raise RevisionError(f"the database is at {', '.join(unknown)}, which the migration scripts in "
                                f"{self.app_dir.name} do not contain (is the app code older than the database?)")
        return sorted(set(current), key=graph.position)

    def _targets(self, graph: _Graph, target: str, current: Sequence[str]) -> list[str]:
        resolved = self.resolve(target, current)
        if resolved == "heads":
            return list(graph.heads)
        if resolved == "base":
            return []
        return [resolved]

    # -- pending ---------------------------------------------------------------------------

    def pending(self, current: Sequence[str], target: str = "head") -> list[Revision]:
        """Oldest first, exactly what `upgrade <target>` would apply from `current` ([] = unversioned).

        RevisionError when "head" is asked for and there are several heads (merge needed), or
        when the database is at a revision the scripts do not contain.
        """
        graph = self._graph()
        have = graph.ancestors(self._validated_current(graph, current))
        need = graph.ancestors(self._targets(graph, target, current)) - have
        return [graph.revisions[rev] for rev in graph.revisions if rev in need]

    def downgrades(self, current: Sequence[str], target: str = "-1") -> list[Revision]:
        """Newest first, the revisions `downgrade <target>` would undo from `current`."""
        graph = self._graph()
        have = graph.ancestors(self._validated_current(graph, current))
        keep = graph.ancestors(self._targets(graph, target, current))
        undo = have - keep
        return [graph.revisions[rev] for rev in reversed(graph.revisions) if rev in undo]

    # -- the database ----------------------------------------------------------------------

    def current(self, conn) -> list[str]:
        """Revisions in the target's version table ([] when it does not exist), oldest first.

        `conn` is an open psycopg connection. The table is looked up with to_regclass first,
        so a missing table never puts an error into the caller's transaction.
        """
        from psycopg import sql

        parts = ([self.version_table_schema] if self.version_table_schema else []) + [self.version_table]
        qualified = sql.Identifier(*parts)
        row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", [qualified.as_string(conn)]).fetchone()
        if not row or not row[0]:
            return []
        revs = [r[0] for r in conn.execute(sql.SQL("SELECT version_num FROM {}").format(qualified)).fetchall()]
        try:
            positions = self._graph().revisions
            order = {rev: i for i, rev in enumerate(positions)}
        except RevisionError:
            order = {}
        return sorted(revs, key=lambda r: (order.get(r, len(order)), r))

    def state(self, conn) -> AlembicState:
        """current, heads and pending together. Never raises for an inconsistent state: `problem` says it.

        With several heads, `pending` lists what `upgrade heads` would apply and `problem` says a merge
        is needed; with a current revision the scripts lack, `pending` is [].
        """
        current = self.current(conn)
        graph = self._graph()
        heads = list(graph.heads)
        problem = None
        try:
            self._validated_current(graph, current)
        except RevisionError as exc:
            return AlembicState(current=current, heads=heads, pending=[], problem=str(exc))
        if len(heads) > 1:
            problem = f"several heads: merge needed ({', '.join(heads)})"
            pending = self.pending(current, "heads")
        else:
            pending = self.pending(current) if heads else []
        return AlembicState(current=current, heads=heads, pending=pending, problem=problem)

    # -- SQL preview -----------------------------------------------------------------------

    def sql_preview(self, dsn: str, current: Sequence[str], target: str = "head", timeout: float = 60, *,
                    direction: str = "upgrade") -> str:
        """The SQL `upgrade <target>` (or `downgrade <target>`) would run from `current`, rendered offline
        by the app's own Alembic.

        Runs `<alembic_argv> upgrade <current>:<target> --sql` (from base, `upgrade <target> --sql`,
        when `current` is empty), or `downgrade <current>:<target> --sql` for a rollback, in app_dir
        with the URL in `url_env`. Only the range concerned is rendered: a rollback shows the
        downgrade() SQL of the revisions it undoes, never their upgrade SQL. "" when there is nothing
        to run. Errors are one redacted line.
        """
        return self.start_sql_preview(dsn, current, target, timeout, direction=direction).result()

    def start_sql_preview(self, dsn: str, current: Sequence[str], target: str = "head", timeout: float = 60, *,
                          direction: str = "upgrade") -> "PreviewRender":
        """sql_preview without waiting: the app's Alembic is started (unless the preview is cached) and
        the caller does other work meanwhile; `.result()` waits for it. A render of the same preview
        already running in this process is shared, never started twice. A bad range raises
        RevisionError here, before anything starts."""
        graph = self._graph()
        start = self._validated_current(graph, current)
        if len(start) > 1:
            raise RevisionError(f"the database has several current revisions ({', '.join(start)}); "
                                "a SQL preview needs a single starting point")
        goal = self.resolve(target, start)
        if goal == "heads":
            raise RevisionError(f"several heads: merge needed ({', '.join(graph.heads)})")
        if direction == "downgrade":
            if not start or not self.downgrades(start, goal):
                return PreviewRender.done("")
            destination = f"{start[0]}:{goal}"
        else:
            if not self.pending(start, goal):
                return PreviewRender.done("")
            destination = f"{start[0]}:{goal}" if start else goal
        key = self._preview_key(dsn, destination if direction == "upgrade" else f"downgrade {destination}")
        cached = self._cached_preview(key)
        if cached is not None:
            return PreviewRender.done(cached)
        with _PREVIEW_CACHE_LOCK:
            running = _RENDERING.get(key)
            if running is not None and running.serves(self, dsn) and running.join():
                return running
            render = PreviewRender(self, key, [*self.alembic_argv, direction, destination, "--sql"],
                                   f"alembic {direction} {destination} --sql", dsn, timeout)
            _RENDERING[key] = render
        try:
            render.start()
        except BaseException:
            with _PREVIEW_CACHE_LOCK:
                _RENDERING.pop(key, None)
            raise
        return render

    def alembic_heads(self, dsn: str, timeout: float = 120) -> list[str]:
        """The heads as the app's own Alembic reports them (`alembic heads`), run as every other
        alembic call is: `runbook-bot doctor` checks that it runs at all in this environment."""
        out = self.run_alembic(["heads"], dsn, timeout)
        return re.findall(r"^([0-9A-Za-z_]+) \(head\)", out, flags=re.MULTILINE)

    def subprocess_env(self, dsn: str) -> dict[str, str]:
        """The environment the app's Alembic runs with (runbook.subprocess_env's allowlist, the
        environment's app_env names, the URL in the variable its env.py reads)."""
        return app_subprocess_env(self.url_env, dsn, self.app_env)

    def run_alembic(self, args: Sequence[str], dsn: str, timeout: float) -> str:
        """`<alembic_argv> ARGS` in app_dir (no shell, its own process group); its stdout, or
        RevisionError with one redacted line: not found, timed out, or its last error line."""
        argv = [*self.alembic_argv, *args]
        shown = "alembic " + " ".join(args)
        try:
            result = run_argv(argv, cwd=self.app_dir, env=self.subprocess_env(dsn), timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RevisionError(self._timed_out(shown, timeout)) from None
        except OSError as exc:
            raise RevisionError(self._not_runnable(exc, dsn)) from None
        if result.returncode != 0:
            raise RevisionError(self._failed(shown, result.returncode, result.stdout, result.stderr, dsn))
        return result.stdout

    # One redacted line for each way the app's Alembic can fail (run_alembic and PreviewRender).

    def _not_runnable(self, exc: OSError, dsn: str) -> str:
        if isinstance(exc, FileNotFoundError):
            return (f"cannot run {self.alembic_argv[0]!r}: not found (set the environment's `alembic` command, "
                    "e.g. [poetry, run, alembic])")
        return redact(f"cannot run {self.alembic_argv[0]!r}: {one_line(str(exc))}", password_of(dsn), dsn)

    @staticmethod
    def _timed_out(shown: str, timeout: float) -> str:
        return f"{shown} did not finish within {timeout:g} s and was stopped"

    def _failed(self, shown: str, returncode: int, stdout: str, stderr: str, dsn: str) -> str:
        reason = last_error_line(stderr, self.app_dir) or last_error_line(stdout, self.app_dir)
        message = f"{shown} failed (exit {returncode})" + (f": {reason}" if reason else "")
        return one_line(redact(message, password_of(dsn), dsn))

    # -- the revision last seen on a database ----------------------------------------------
    # A fresh `runbook-bot precheck` starts the preview from it before it has even read its
    # configuration (runbook.prerender); the precheck then checks it against the database.

    def _current_file(self, dsn: str) -> Path | None:
        if self.preview_cache_dir is None:
            return None
        where = repr((str(self.config_path), self._section, describe(dsn)))      # host/db: no secret
        return Path(self.preview_cache_dir) / f"current-{hashlib.sha256(where.encode()).hexdigest()[:32]}.json"

    def remembered_current(self, dsn: str) -> list[str] | None:
        """The current revisions `remember_current` last kept for this app on `dsn`'s database, or None."""
        path = self._current_file(dsn)
        try:
            value = json.loads(path.read_text(encoding="utf-8")) if path is not None else None
        except (OSError, ValueError):
            return None
        return value if isinstance(value, list) and all(isinstance(v, str) for v in value) else None

    def remember_current(self, dsn: str, current: Sequence[str]) -> None:
        path = self._current_file(dsn)
        if path is None or self.remembered_current(dsn) == list(current):
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            partial.write_text(json.dumps(list(current)), encoding="utf-8")
            os.replace(partial, path)
        except OSError:
            pass  # only costs time

    # -- SQL preview cache -----------------------------------------------------------------
    # Offline SQL depends only on the app's Alembic files, the command, the dialect and the
    # range, so a preview is reused until one of those changes (file stamps, as make does).
    # Precheck stays live: the database is read every time; only the rendering is reused.

    def _preview_key(self, dsn: str, destination: str) -> str:
        graph = self._graph()
        with _GRAPH_CACHE_LOCK:
            signature = _GRAPH_CACHE[(self.config_path, self._section)][0]
            layout = _GRAPH_CACHE[(self.config_path, self._section)][2]
        support = []
        for name in ("env.py", "script.py.mako"):
            try:
                support.append((name, _stamp(layout.script_location / name)))
            except OSError:
                support.append((name, None))
        scheme = dsn.split("://", 1)[0]
        material = repr((self.alembic_argv, self.url_env, scheme, destination, signature, support,
                         sorted(graph.revisions)))
        return hashlib.sha256(material.encode()).hexdigest()

    def _cached_preview(self, key: str) -> str | None:
        with _PREVIEW_CACHE_LOCK:
            if key in _PREVIEW_CACHE:
                return _PREVIEW_CACHE[key]
        if self.preview_cache_dir is None:
            return None
        try:
            text = (Path(self.preview_cache_dir) / f"{key}.sql").read_text(encoding="utf-8")
        except OSError:
            return None
        with _PREVIEW_CACHE_LOCK:
            _PREVIEW_CACHE[key] = text
        return text

    def _store_preview(self, key: str, sql: str) -> None:
        with _PREVIEW_CACHE_LOCK:
            if len(_PREVIEW_CACHE) >= 64:
                _PREVIEW_CACHE.pop(next(iter(_PREVIEW_CACHE)))
            _PREVIEW_CACHE[key] = sql
        if self.preview_cache_dir is None:
            return
        directory = Path(self.preview_cache_dir)
        try:
            directory.mkdir(parents=True, exist_ok=True)
            partial = directory / f".{key}.{os.getpid()}.tmp"
            partial.write_text(sql, encoding="utf-8")
            os.replace(partial, directory / f"{key}.sql")
        except OSError:
            pass  # a cache that cannot be written only costs time

