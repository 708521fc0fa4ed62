"""AlembicProject: one app's Alembic, its scripts read from files, its database's revision, its
SQL previews and commands run through the app's own `alembic` subprocess."""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import threading
from pathlib import Path
from typing import Sequence

from runbook.dsn import describe, password_of, redact
from runbook.revisions.graph import _build_graph, _Graph
from runbook.revisions.layout import _config_args, _Layout, _read_layout, _revision_files, _stamp
from runbook.revisions.model import AlembicState, Revision, RevisionError
from runbook.revisions.output import last_error_line, one_line
from runbook.revisions.preview import _PREVIEW_CACHE, _PREVIEW_CACHE_LOCK, _RENDERING, PreviewRender
from runbook.revisions.process import run_argv
from runbook.revisions.scripts import _cached_parse
from runbook.subprocess_env import app_subprocess_env

_RELATIVE = re.compile(r"^(?P<base>.*?)(?P<sign>[+-])(?P<n>\d+)$")

# Shared by every AlembicProject: (config path, section) -> (signature, graph, layout).
_GRAPH_CACHE: dict[tuple[Path, str], tuple[tuple, _Graph, _Layout]] = {}
_GRAPH_CACHE_LOCK = threading.Lock()


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

