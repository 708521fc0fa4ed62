"""The risk review of pending revisions (issue 7): lint each revision's own SQL, weigh it live.

For every pending revision, oldest first:

1. Its own SQL, rendered offline by the app's Alembic (`upgrade <prev>:<rev> --sql`, through
   AlembicProject.sql_preview and its cache). A revision that cannot be rendered offline (it
   reads rows: `op.get_bind()`…) is marked "cannot be reviewed offline", never left out.
2. squawk (`--reporter json`, `--pg-version` = the server's major), run as an argv subprocess
   with a timeout. Each finding keeps its revision file and the line of that SQL.
3. A module-level allowlist in the revision file, read with `ast` (never imported):
   `squawk_allow = {"require-concurrent-index-creation": "table is tiny, reviewed by @x"}`
   silences exactly that rule for that revision; the reason is shown.
4. The live database, read once for all revisions: size (pg_total_relation_size) and row
   estimate (reltuples) of every table the SQL names, and pg_locks for those relations only —
   who holds (or queues for) a lock that the migration's statements would wait behind.

Each revision is rated low / medium / high with one line a reviewer can act on. A high
rating from the findings can be acknowledged (`acknowledge`: an audited event, bound to the
revision file's sha256); a conflicting lock held right now cannot: it is live, and goes away
when that session ends.

Everything here returns plain dataclasses; `review_to_json` is the --json form, and what an
approval request keeps.
"""
from __future__ import annotations

import ast
import bisect
import difflib
import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Sequence

import psycopg

from runbook.config import Environment
from runbook.revisions import AlembicProject, Revision, RevisionError, one_line, per_revision_sql
from runbook.sqlscan import Statement, conflicts, statements
from runbook.subprocess_env import subprocess_env
from runbook.units import human_size, short_duration

Rating = Literal["low", "medium", "high"]
RATINGS: tuple[Rating, ...] = ("low", "medium", "high")
ACK_ACTION = "risk.ack"
ALLOWLIST_NAME = "squawk_allow"
MAX_ACK_REASON = 300
ACK_READ_LIMIT = 500           # acknowledgements read per precheck, newest first

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

# Rules whose cost grows with the table: a build, scan or rewrite while a lock is held.
# rule -> what happens, phrased after "<what> on <table>, <size>: ".
SIZE_RULES = {
    "require-concurrent-index-creation": ("CREATE INDEX without CONCURRENTLY", "writes blocked for the build"),
    "adding-not-nullable-field": ("SET NOT NULL", "reads and writes blocked while every row is checked"),
    "constraint-missing-not-valid": ("constraint without NOT VALID", "writes blocked while every row is checked"),
    "adding-foreign-key-constraint": ("FOREIGN KEY without NOT VALID",
                                      "writes to both tables blocked while every row is checked"),
    "disallowed-unique-constraint": ("UNIQUE constraint", "reads and writes blocked while its index is built"),
    "changing-column-type": ("column type change", "reads and writes blocked while the table is rewritten"),
    "adding-field-with-default": ("column with a volatile default",
                                  "reads and writes blocked while the table is rewritten"),
    "adding-serial-primary-key-field": ("serial primary key", "reads and writes blocked while the table is rewritten"),
    "require-concurrent-reindex": ("REINDEX without CONCURRENTLY", "writes blocked for the rebuild"),
    "require-concurrent-index-deletion": ("DROP INDEX without CONCURRENTLY", "reads and writes wait for the lock"),
    "require-concurrent-partition-detach": ("DETACH PARTITION without CONCURRENTLY",
                                            "reads and writes blocked for the detach"),
    "prefer-repack": ("a table rewrite", "reads and writes blocked while it runs"),
}
# Rules that are serious whatever the size: rating and what to tell the reviewer.
FIXED_RULES: dict[str, tuple[Rating, str]] = {
    "ban-drop-table": ("high", "drops a table: its data is gone (only a restore brings it back)"),
    "ban-drop-database": ("high", "drops a database"),
    "ban-truncate-cascade": ("high", "TRUNCATE … CASCADE empties every table that references it"),
    "ban-concurrent-index-creation-in-transaction": (
        "high", "CREATE INDEX CONCURRENTLY inside a transaction fails: wrap it in op.get_context().autocommit_block()"),
    "ban-drop-column": ("medium", "drops a column: its data is gone, and the running app must no longer use it"),
    "renaming-column": ("medium", "renames a column: the running app's queries break until it is deployed"),
    "renaming-table": ("medium", "renames a table: the running app's queries break until it is deployed"),
    "ban-drop-not-null": ("medium", "drops NOT NULL: the running app may not expect NULLs"),
    "ban-duplicate-column-assignments": ("medium", "assigns one column twice in an UPDATE: PostgreSQL refuses it"),
    "ban-uncommitted-transaction": ("medium", "leaves a transaction open"),
    "transaction-nesting": ("medium", "nests transactions: BEGIN inside Alembic's own transaction"),
    "syntax-error": ("medium", "squawk could not parse the SQL: review it by hand"),
}
# Rules about a constraint: the constrained table is scanned, whatever it references.
_CONSTRAINED_TABLE_RULES = {"adding-foreign-key-constraint", "constraint-missing-not-valid"}
# Everything else squawk reports (prefer-*, identifier-too-long, ...) is low; an unknown rule medium.


class ReviewError(Exception):
    """The review could not run (squawk missing or broken); one line."""


class AllowlistError(Exception):
    """A malformed `squawk_allow` in a revision file; one line naming the file and line."""


# ---------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class LockHolder:
    """A session holding (or queued for) a lock the migration would wait behind."""

    relation: str
    mode: str                      # AccessShareLock, RowExclusiveLock, ...
    granted: bool
    pid: int | None                # None: a prepared transaction
    state: str | None              # active, idle in transaction, ...
    application: str | None
    user: str | None
    xact_seconds: float | None
    query: str
    prepared_gid: str | None = None

    @property
    def idle(self) -> bool:
        return self.pid is None or (self.state or "").startswith("idle in transaction")

    def describe(self) -> str:
        if self.pid is None:
            who = f"prepared transaction {self.prepared_gid or '?'}"
        else:
            age = f" for {short_duration(self.xact_seconds)}" if self.xact_seconds is not None else ""
            who = f"pid {self.pid} ({self.application or '?'}, {self.state or '?'}{age})"
        verb = "holds" if self.granted else "queues for"
        return f"{who} {verb} {self.mode} on {self.relation}"


@dataclass(frozen=True)
class TableFacts:
    name: str                      # as the SQL names it
    exists: bool
    size_bytes: int | None = None
    rows: int | None = None        # reltuples; None when never analyzed
    holders: tuple[LockHolder, ...] = ()
    exact_size: bool = True        # False: locked now, so the size is the catalog's (relpages) estimate

    def describe(self) -> str:
        if not self.exists:
            return "not there yet"
        rows = f", ~{self.rows:,} rows" if self.rows is not None else ""
        return f"{'' if self.exact_size else '~'}{human_size(self.size_bytes)}{rows}"


@dataclass(frozen=True)
class Finding:
    rule: str
    message: str
    help: str
    line: int                      # 1-based, in the revision's own rendered SQL
    column: int
    statement: str                 # the statement it is about, one line
    tables: tuple[str, ...]
    rating: Rating
    reason: str
    allowed: str | None = None     # the allowlist's reason when silenced


@dataclass(frozen=True)
class Acknowledgement:
    environment: str
    revision: str
    file_sha256: str
    actor: str
    reason: str
    at: datetime
    event_id: int | None = None


@dataclass
class RevisionReview:
    revision: str
    path: str                      # the revision file, relative to app_dir when inside it
    file_sha256: str
    status: Literal["reviewed", "not reviewable offline", "error"]
    rating: Rating
    reason: str                    # one line a reviewer can act on
    findings: list[Finding] = field(default_factory=list)     # reported (not silenced)
    silenced: list[Finding] = field(default_factory=list)     # silenced by the allowlist
    allowlist: dict[str, str] = field(default_factory=dict)
    unused_allows: list[str] = field(default_factory=list)    # allowed rules squawk did not report
    tables: list[TableFacts] = field(default_factory=list)
    live: list[str] = field(default_factory=list)             # conflicting locks held now
    findings_rating: Rating = "low"                           # without the live locks
    acknowledgement: Acknowledgement | None = None
    stale_acknowledgement: Acknowledgement | None = None      # for an earlier version of the file
    sql_lines: int = 0
    problem: str | None = None                                # why it is not reviewed / an error

    @property
    def live_high(self) -> bool:
        return self.rating == "high" and self.findings_rating != "high"

    @property
    def blocking(self) -> bool:
        """High and not cleared: unacknowledged findings, a live lock conflict, or an error."""
        if self.rating != "high":
            return False
        if self.status == "error" or self.live_high:
            return True
        return self.acknowledgement is None


@dataclass
class RiskReview:
    environment: str
    revisions: list[RevisionReview]
    server_major: int | None = None
    squawk_version: str | None = None
    squawk_seconds: float = 0.0    # squawk's own run time, all revisions
    render_seconds: float = 0.0    # offline rendering (cached renderings cost nothing)
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)

    @property
    def highest(self) -> Rating:
        return max((r.rating for r in self.revisions), key=RATINGS.index, default="low")

    @property
    def blocking(self) -> list[RevisionReview]:
        return [r for r in self.revisions if r.blocking]

    @property
    def ok(self) -> bool:
        return not self.errors and not self.blocking


# ---------------------------------------------------------------------------
# The allowlist


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


# ---------------------------------------------------------------------------
# squawk


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


class _LintCache:
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


class _Locator:
    """squawk's (0-based line, column) -> the statement there; bisects, so 5,000 findings stay cheap."""

    def __init__(self, stmts: Sequence[Statement], sql: str):
        self.stmts = list(stmts)
        self.starts = [s.start for s in self.stmts]
        self.lines = sql.split("\n")
        self.line_offsets = [0]
        for text in self.lines:
            self.line_offsets.append(self.line_offsets[-1] + len(text.encode()) + 1)

    def at(self, line0: int, column: int) -> Statement | None:
        if not 0 <= line0 < len(self.lines):
            return None
        offset = self.line_offsets[line0] + len(self.lines[line0][:column].encode())
        index = bisect.bisect_right(self.starts, offset) - 1
        if index >= 0 and self.stmts[index].start <= offset <= self.stmts[index].end:
            return self.stmts[index]
        return None


# ---------------------------------------------------------------------------
# The live database: sizes, row estimates, and who holds locks on those relations (read once)

# Catalog only, so it never waits on a lock: which table each name is (a dropped index counts as its
# table), its row estimate, and a size from relpages (table, its indexes, its TOAST) for when the exact
# size cannot be read.
TABLE_FACTS_SQL = """
SELECT want.name, t.oid, t.oid::regclass::text, t.reltuples::bigint,
       (t.relpages::bigint
        + coalesce((SELECT sum(ic.relpages) FROM pg_index x JOIN pg_class ic ON ic.oid = x.indexrelid
                     WHERE x.indrelid = t.oid), 0)
        + coalesce((SELECT tc.relpages FROM pg_class tc WHERE tc.oid = t.reltoastrelid), 0))
       * current_setting('block_size')::bigint
  FROM unnest(%s::text[]) AS want(name)
  JOIN pg_class c ON c.oid = to_regclass(want.name)
  LEFT JOIN pg_index i ON i.indexrelid = c.oid
  JOIN pg_class t ON t.oid = coalesce(i.indrelid, c.oid)
"""

# pg_total_relation_size takes ACCESS SHARE: behind a lock held (or queued for) ACCESS EXCLUSIVE it
# fails after the monitor connection's lock_timeout, and the catalog's estimate stands in.
TABLE_SIZES_SQL = "SELECT oid, pg_total_relation_size(oid) FROM unnest(%s::oid[]) AS oid"

# pg_locks for the named relations only (design rule 10: never the whole lock table), with the
# session (or prepared transaction) behind each lock; our own connection left out.
LOCK_HOLDERS_SQL = """
SELECT l.relation, l.relation::regclass::text, l.mode, l.granted, l.pid, a.state, a.application_name, a.usename,
       extract(epoch FROM now() - coalesce(a.xact_start, p.prepared)), left(coalesce(a.query, ''), 300), p.gid
  FROM pg_locks l
  LEFT JOIN pg_stat_activity a ON a.pid = l.pid
  LEFT JOIN pg_prepared_xacts p ON l.pid IS NULL AND l.virtualtransaction = '-1/' || p.transaction::text
 WHERE l.locktype = 'relation'
   AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
   AND l.relation = ANY(%s::oid[])
   AND l.pid IS DISTINCT FROM pg_backend_pid()
 ORDER BY l.granted DESC, l.pid
"""


def _quoted(name: str) -> str:
    return ".".join('"' + part.replace('"', '""') + '"' for part in name.split("."))


def live_facts(conn, names: Iterable[str]) -> dict[str, TableFacts]:
    """Facts of every relation named (a dropped index counts as its table); one query each."""
    names = sorted(set(names))
    if not names:
        return {}
    rows = conn.execute(TABLE_FACTS_SQL, [[_quoted(n) for n in names]]).fetchall()
    found = {row[0]: row for row in rows}
    oids = sorted({row[1] for row in rows})
    sizes = _exact_sizes(conn, oids)
    holders: dict[int, list[LockHolder]] = {}
    if oids:
        for (oid, relation, mode, granted, pid, state, app, user, xact, query, gid) in conn.execute(
                LOCK_HOLDERS_SQL, [oids]).fetchall():
            holders.setdefault(oid, []).append(LockHolder(relation, mode, granted, pid, state, app, user,
                                                          float(xact) if xact is not None else None,
                                                          " ".join((query or "").split()), gid))
    facts = {}
    for name in names:
        row = found.get(_quoted(name))
        if row is None:
            facts[name] = TableFacts(name, False)
            continue
        rows_estimate = int(row[3]) if row[3] is not None and row[3] >= 0 else None
        size = sizes.get(row[1])
        facts[name] = TableFacts(row[2], True, int(row[4] if size is None else size), rows_estimate,
                                 tuple(holders.get(row[1], ())), exact_size=size is not None)
    return facts


def _exact_sizes(conn, oids: Sequence[int]) -> dict[int, int]:
    """pg_total_relation_size of each table; a table that is locked now is left out (see above)."""
    if not oids:
        return {}
    try:
        return dict(conn.execute(TABLE_SIZES_SQL, [list(oids)]).fetchall())
    except psycopg.errors.LockNotAvailable:
        _recover(conn)
    out = {}
    for oid in oids:                                   # one at a time: only the locked ones are missing
        try:
            out.update(conn.execute(TABLE_SIZES_SQL, [[oid]]).fetchall())
        except psycopg.errors.LockNotAvailable:
            _recover(conn)
    return out


def _recover(conn) -> None:
    """After a failed statement: an explicit transaction must be rolled back to go on."""
    if not conn.autocommit:
        conn.rollback()


# ---------------------------------------------------------------------------
# Rating


def _size_rating(env: Environment, facts: TableFacts | None) -> Rating:
    if facts is None:
        return "medium"                       # the size could not be told
    if not facts.exists:
        return "low"                          # created by an earlier pending revision: empty
    size = facts.size_bytes or 0
    if size >= env.review.large_table_bytes:
        return "high"
    if size >= env.review.medium_table_bytes:
        return "medium"
    return "low"


def rate_finding(env: Environment, rule: str, table: str | None, facts: TableFacts | None,
                 message: str = "") -> tuple[Rating, str]:
    """(rating, one line) for one squawk finding on one table, weighed against the live table."""
    where = f" on {table}" if table else ""
    size = f", {facts.describe()}" if facts is not None else (", size unknown" if table else "")
    if rule in SIZE_RULES:
        what, effect = SIZE_RULES[rule]
        rating = _size_rating(env, facts) if table else "medium"
        return rating, f"{what}{where}{size}: {effect}"
    if rule == "adding-required-field":
        has_rows = facts is not None and facts.exists and (facts.rows or 0) > 0
        if facts is not None and facts.exists and facts.rows is None:
            has_rows = (facts.size_bytes or 0) > 16384      # never analyzed: a few pages may be empty
        return ("high" if has_rows else "low"), (
            f"NOT NULL column without a default{where}{size}: "
            + ("fails on the existing rows" if has_rows else "fine while the table is empty"))
    if rule in FIXED_RULES:
        rating, text = FIXED_RULES[rule]
        return rating, f"{text}{where}{size}" if table else text
    said = f": {one_line(message, 160)}" if message else ""
    if rule in SQUAWK_RULES:
        return "low", f"{rule}{where}{said}"
    return "medium", f"{rule}{where}{said} (a squawk rule runbook-bot does not know: review it)"


def _live_conflicts(stmts: Sequence[Statement], facts: dict[str, TableFacts],
                    index_tables: dict[str, str]) -> list[tuple[Rating, str]]:
    """Locks held (or queued for) now that a statement of the revision would wait behind."""
    out: list[tuple[Rating, str]] = []
    seen: set[tuple[str, int | None, str]] = set()
    for stmt in stmts:
        wanted = list(stmt.locks) + [(index_tables[i], "AccessExclusiveLock") for i in stmt.indexes
                                     if i in index_tables]
        for relation, mode in wanted:
            table = facts.get(relation)
            if table is None or not table.exists:
                continue
            for holder in table.holders:
                if not conflicts(mode, holder.mode):
                    continue
                key = (table.name, holder.pid, holder.mode)
                if key in seen:
                    continue
                seen.add(key)
                verb = stmt.text.split(" ")[0:2]
                what = " ".join(verb) if verb else "the statement"
                if holder.idle:
                    out.append(("high", f"{holder.describe()}: {what} ({mode}) would wait behind it and queue "
                                        f"every query on {table.name}; end that transaction first"))
                else:
                    out.append(("medium", f"{holder.describe()}: {what} ({mode}) would wait until it finishes"))
    return out


def _raise(rating: Rating) -> Rating:
    return RATINGS[min(RATINGS.index(rating) + 1, len(RATINGS) - 1)]


# ---------------------------------------------------------------------------
# The review


@dataclass
class _Rendered:
    revision: Revision
    sql: str | None
    problem: str | None
    seconds: float


def _render(project: AlembicProject, dsn: str, rev: Revision, timeout: float) -> _Rendered:
    started = time.monotonic()
    if len(rev.down_revisions) > 1:
        return _Rendered(rev, None, "a merge revision: its parents are reviewed on their own", 0.0)
    start = list(rev.down_revisions)
    try:
        sql = project.sql_preview(dsn, start, rev.revision, timeout=timeout)
    except RevisionError as exc:
        hint = _reads_data(rev.path)
        return _Rendered(rev, None, f"cannot be reviewed offline: {exc}" + (f" ({hint})" if hint else ""),
                         time.monotonic() - started)
    return _Rendered(rev, sql, None, time.monotonic() - started)


def _start_range(project: AlembicProject, dsn: str, revisions: Sequence[Revision], timeout: float):
    """The render of a linear range of more than one revision (one parent each, the first may start
    from base, each the next one's): started, or shared with the caller who started it; None when
    the range is not linear or cannot be asked for."""
    linear = len(revisions) > 1 and len(revisions[0].down_revisions) <= 1 and all(
        len(r.down_revisions) == 1 for r in revisions[1:]) and all(
        later.down_revisions[0] == earlier.revision for earlier, later in zip(revisions, revisions[1:]))
    if not linear:
        return None
    try:
        return project.start_sql_preview(dsn, list(revisions[0].down_revisions), revisions[-1].revision,
                                         timeout=timeout)
    except RevisionError:
        return None


def _render_each(project: AlembicProject, dsn: str, revisions: Sequence[Revision], timeout: float,
                 whole_range=None) -> list[_Rendered]:
    """Each revision's own SQL, oldest first. A linear range is rendered once (`whole_range`, from
    _start_range) and cut at Alembic's step markers (the same render the precheck's SQL preview
    uses); when that render fails or does not cut cleanly, each revision is rendered on its own, so
    one revision that cannot be rendered offline does not hide the others."""
    if whole_range is not None:
        started = time.monotonic()
        try:
            whole = whole_range.result()
        except RevisionError:
            whole = ""
        steps = [(r.down_revisions[0] if r.down_revisions else "", r.revision) for r in revisions]
        parts = per_revision_sql(whole, steps) if whole else None
        if parts is not None:
            share = (time.monotonic() - started) / len(revisions)
            return [_Rendered(r, parts[r.revision], None, share) for r in revisions]
    with ThreadPoolExecutor(max_workers=min(4, len(revisions)), thread_name_prefix="review-render") as pool:
        return list(pool.map(lambda r: _render(project, dsn, r, timeout), revisions))


def _reads_data(path: Path) -> str | None:
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


def _entry(rev: Revision, app_dir: Path) -> RevisionReview:
    """A revision's review before its SQL is known: the file's hash and its allowlist."""
    entry = RevisionReview(rev.revision, _relative(rev.path, app_dir), file_sha256(rev.path), "reviewed", "low", "")
    try:
        entry.allowlist = read_allowlist(rev.path)
    except AllowlistError as exc:
        entry.status, entry.problem = "error", str(exc)
    return entry


def _load_parser() -> None:
    """Import pglast (the SQL parser) ahead of need: a fresh process pays for it while Alembic runs."""
    import pglast  # noqa: F401


def _relative(path: Path, app_dir: Path) -> str:
    try:
        return str(path.relative_to(app_dir))
    except ValueError:
        return path.name


def review(name: str, env: Environment, conn, *, project: AlembicProject, revisions: Sequence[Revision],
           acknowledgements: Sequence[Acknowledgement] | Callable[[], Sequence[Acknowledgement]] = ()
           ) -> RiskReview:
    """Review `revisions` (oldest first, all pending on `conn`'s database); never raises for a
    revision's own problems: they are in its status. ReviewError when squawk cannot run at all.

    `acknowledgements` may be a callable: it is asked only once squawk has run, so a caller reading
    them from another process (the CLI's state sidecar) has the whole review's time to answer."""
    clock = time.monotonic()
    server_major = conn.info.server_version // 10000 if conn is not None else None
    out = RiskReview(name, [], server_major=server_major)
    if not revisions:
        return out
    argv = squawk_argv(env)
    timeout = env.review.squawk_timeout_seconds
    lints = _LintCache(argv, server_major, env.review.exclude_rules, project.preview_cache_dir)
    with ThreadPoolExecutor(max_workers=4, thread_name_prefix="review") as pool:
        # While the app's Alembic renders (the caller has usually started it already): squawk's
        # version, the SQL parser's import, the files' hashes and allowlists.
        version = pool.submit(lints.squawk_version, timeout)
        whole_range = _start_range(project, env.dsn, revisions, max(60.0, timeout))
        if whole_range is None or whole_range.started_process:
            pool.submit(_load_parser)        # not when the SQL is known already: it may all be linted
        entries = {rev.revision: _entry(rev, project.app_dir) for rev in revisions}
        rendered = _render_each(project, env.dsn, revisions, max(60.0, timeout), whole_range)
        out.render_seconds = sum(r.seconds for r in rendered)

        def lint(item: _Rendered) -> tuple[list[dict[str, Any]], float]:
            started = time.monotonic()
            return (run_squawk(item.sql or "", argv, pg_major=server_major, exclude=env.review.exclude_rules,
                               cwd=project.app_dir, timeout=timeout), time.monotonic() - started)

        # squawk for every revision not linted before, all at once (separate processes); the SQL is
        # parsed here meanwhile
        known = {item.revision.revision: lints.get(item.sql) for item in rendered if item.sql is not None}
        linting = {item.revision.revision: pool.submit(lint, item) for item in rendered
                   if item.sql is not None and known[item.revision.revision] is None}
        drafts: list[tuple[RevisionReview, list[dict[str, Any]], list[Statement], str]] = []
        for item in rendered:
            entry = entries[item.revision.revision]
            if item.sql is None:
                if entry.status != "error":
                    entry.status, entry.problem = "not reviewable offline", item.problem
                drafts.append((entry, [], [], ""))
                continue
            entry.sql_lines = item.sql.count("\n") + 1
            hit = known[entry.revision]
            drafts.append((entry, hit[0], hit[1], item.sql) if hit else (entry, [], statements(item.sql), item.sql))
        for index, (entry, _, stmts, sql) in enumerate(drafts):
            if entry.revision in linting:
                raw, seconds = linting[entry.revision].result()     # a ReviewError is raised here
                out.squawk_seconds += seconds
                drafts[index] = (entry, raw, stmts, sql)
                lints.put(sql, raw, stmts)
        out.squawk_version = version.result()

    # Every relation the SQL names, and the indexes it drops: read from the database once.
    names: set[str] = set()
    for entry, raw, stmts, _ in drafts:
        for stmt in stmts:
            names.update(rel for rel, _ in stmt.locks)
            names.update(stmt.indexes)
    names.discard(project.version_table)
    try:
        facts = live_facts(conn, names) if conn is not None else {}
    except psycopg.Error as exc:
        raise ReviewError(f"cannot read the sizes and locks of {', '.join(sorted(names))}: "
                          f"{one_line(str(exc), 200)}") from None
    index_tables = {n: f.name for n, f in facts.items() if f.exists}

    acks = acknowledgements() if callable(acknowledgements) else acknowledgements
    for entry, raw, stmts, sql in drafts:
        _weigh(env, entry, raw, stmts, sql, facts, index_tables, project.version_table)
        _acknowledged(entry, name, acks)
        out.revisions.append(entry)
    out.seconds = time.monotonic() - clock
    return out


def _weigh(env: Environment, entry: RevisionReview, raw: list[dict[str, Any]], stmts: list[Statement], sql: str,
           facts: dict[str, TableFacts], index_tables: dict[str, str], version_table: str) -> None:
    if entry.status == "not reviewable offline":
        entry.rating = entry.findings_rating = "medium"
        entry.reason = f"{entry.problem}; review its upgrade() by hand"
        return
    if entry.status == "error":
        entry.rating = entry.findings_rating = "high"
        entry.reason = f"{entry.problem}; fix the file"
        return
    reported_rules: set[str] = set()
    locate = _Locator(stmts, sql)
    for item in raw:
        rule = str(item.get("rule_name") or "unknown")
        line0 = int(item.get("line") or 0)
        column = int(item.get("column") or 0)
        stmt = locate.at(line0, column)
        tables = tuple(dict.fromkeys(
            [facts[r].name if r in facts and facts[r].exists else r for r, _ in (stmt.locks if stmt else ())
             if r != version_table]
            + [index_tables[i] for i in (stmt.indexes if stmt else ()) if i in index_tables]))
        worst: tuple[Rating, str] | None = None
        for table in tables or (None,):
            rated = rate_finding(env, rule, table, facts.get(table) if table else None, str(item.get("message") or ""))
            if rule in _CONSTRAINED_TABLE_RULES and worst is not None:
                break        # the constrained table (named first) is the one scanned
            if worst is None or RATINGS.index(rated[0]) > RATINGS.index(worst[0]):
                worst = rated
        assert worst is not None
        finding = Finding(rule, str(item.get("message") or ""), str(item.get("help") or ""), line0 + 1, column,
                          stmt.text[:300] if stmt else "", tables, worst[0], worst[1],
                          entry.allowlist.get(rule))
        reported_rules.add(rule)
        (entry.silenced if finding.allowed is not None else entry.findings).append(finding)
    entry.unused_allows = sorted(set(entry.allowlist) - reported_rules)
    touched = {r for stmt in stmts for r, _ in stmt.locks if r != version_table}
    entry.tables = [facts[r] for r in sorted(touched) if r in facts]

    # the worst finding speaks for the revision; among equals, one about locks and size over a style rule
    top = max(entry.findings, key=lambda f: (RATINGS.index(f.rating), f.rule in SIZE_RULES or f.rule in FIXED_RULES,
                                             f.rule != "constraint-missing-not-valid"), default=None)
    entry.findings_rating = top.rating if top else "low"
    if top is not None:
        more = len(entry.findings) - 1
        entry.reason = top.reason + (f" (+{more} more finding{'s' if more != 1 else ''})" if more else "")
    elif entry.silenced:
        entry.reason = f"no findings left after the allowlist ({len(entry.silenced)} silenced)"
    else:
        entry.reason = "squawk found nothing"
    entry.rating = entry.findings_rating

    live = _live_conflicts(stmts, facts, index_tables)
    if live:
        entry.live = [text for _, text in live]
        live_rating = max((r for r, _ in live), key=RATINGS.index)
        raised = max(live_rating, _raise(entry.findings_rating) if entry.findings else live_rating, key=RATINGS.index)
        if RATINGS.index(raised) > RATINGS.index(entry.rating):
            entry.rating = raised
            entry.reason = live[0][1] + f"; and {entry.reason}" if top is not None else live[0][1]


def _acknowledged(entry: RevisionReview, environment: str, acknowledgements: Sequence[Acknowledgement]) -> None:
    mine = [a for a in acknowledgements if a.revision == entry.revision and a.environment == environment]
    if not mine:
        return
    newest = max(mine, key=lambda a: a.at)
    if newest.file_sha256 == entry.file_sha256:
        entry.acknowledgement = newest
    else:
        entry.stale_acknowledgement = newest


# ---------------------------------------------------------------------------
# Acknowledgements: audited events in the bot's own database


def acknowledgements(store, environment: str, limit: int = ACK_READ_LIMIT) -> list[Acknowledgement]:
    """Every acknowledgement recorded for `environment`, newest first."""
    return acknowledgements_in(store.events(environment=environment, action=ACK_ACTION, limit=limit))


def acknowledgements_in(events: Iterable[Any]) -> list[Acknowledgement]:
    """The acknowledgements among `events` (store.events(action=ACK_ACTION, ...)), in their order."""
    out = []
    for event in events:
        details = event.details or {}
        if event.outcome != "ok" or not details.get("revision") or not details.get("file_sha256"):
            continue
        out.append(Acknowledgement(event.environment, str(details["revision"]), str(details["file_sha256"]),
                                   event.actor, str(details.get("reason") or ""), event.at, event.id))
    return out


class AcknowledgeError(Exception):
    """An acknowledgement that cannot be recorded; one line saying what to do."""


def acknowledge(store, name: str, env: Environment, revision: str, reason: str, actor: str, *,
                project: AlembicProject, current: Sequence[str]) -> Acknowledgement:
    """Record that `actor` reviewed the risk of pending `revision` on `name` (an event, append-only),
    bound to the revision file as it is now: an edit to the file needs a new acknowledgement."""
    reason = " ".join((reason or "").split())
    if not reason:
        raise AcknowledgeError("say why it is acceptable: the reason is shown with the rating and kept in the audit "
                               "trail")
    if len(reason) > MAX_ACK_REASON:
        raise AcknowledgeError(f"the reason is {len(reason)} characters long: keep it to {MAX_ACK_REASON}")
    try:
        rev = project.get(revision)
    except RevisionError as exc:
        raise AcknowledgeError(str(exc)) from None
    pending = [r.revision for r in project.pending(list(current))]
    if rev.revision not in pending:
        at = ", ".join(current) or "base"
        raise AcknowledgeError(f"{rev.revision} is not pending on {name} (at {at}"
                               + (f"; pending: {', '.join(pending)}" if pending else "; nothing pending") + ")")
    sha = file_sha256(rev.path)
    event = store.record(actor=actor, action=ACK_ACTION, environment=name, outcome="ok",
                         summary=f"risk of {rev.revision} acknowledged: {reason}",
                         details={"revision": rev.revision, "file_sha256": sha, "reason": reason,
                                  "path": _relative(rev.path, project.app_dir)})
    return Acknowledgement(name, rev.revision, sha, actor, reason, event.at, event.id)


# ---------------------------------------------------------------------------
# JSON


def _holder_json(h: LockHolder) -> dict[str, Any]:
    return {"relation": h.relation, "mode": h.mode, "granted": h.granted, "pid": h.pid, "state": h.state,
            "application": h.application, "user": h.user,
            "xact_seconds": None if h.xact_seconds is None else round(h.xact_seconds, 1), "query": h.query,
            "prepared_gid": h.prepared_gid}


def _finding_json(f: Finding) -> dict[str, Any]:
    return {"rule": f.rule, "message": f.message, "help": f.help, "line": f.line, "column": f.column,
            "statement": f.statement, "tables": list(f.tables), "rating": f.rating, "reason": f.reason,
            "allowed": f.allowed}


def _ack_json(a: Acknowledgement | None) -> dict[str, Any] | None:
    if a is None:
        return None
    return {"actor": a.actor, "reason": a.reason, "at": a.at.isoformat(), "file_sha256": a.file_sha256,
            "event_id": a.event_id}


def review_to_json(r: RiskReview | None) -> dict[str, Any] | None:
    """The `risk` key of `precheck --json`, and what a migration request keeps in its params."""
    if r is None:
        return None
    return {
        "environment": r.environment, "highest": r.highest, "ok": r.ok,
        "blocking": [x.revision for x in r.blocking], "server_major": r.server_major,
        "squawk_version": r.squawk_version, "squawk_seconds": round(r.squawk_seconds, 4),
        "render_seconds": round(r.render_seconds, 3), "seconds": round(r.seconds, 3), "errors": list(r.errors),
        "revisions": [{
            "revision": x.revision, "path": x.path, "file_sha256": x.file_sha256, "status": x.status,
            "rating": x.rating, "findings_rating": x.findings_rating, "reason": x.reason, "problem": x.problem,
            "blocking": x.blocking, "sql_lines": x.sql_lines,
            "findings": [_finding_json(f) for f in x.findings],
            "silenced": [_finding_json(f) for f in x.silenced],
            "unused_allows": list(x.unused_allows),
            "tables": [{"name": t.name, "exists": t.exists, "size_bytes": t.size_bytes, "rows": t.rows,
                        "exact_size": t.exact_size,
                        "holders": [_holder_json(h) for h in t.holders]} for t in x.tables],
            "live": list(x.live),
            "acknowledgement": _ack_json(x.acknowledgement),
            "stale_acknowledgement": _ack_json(x.stale_acknowledgement),
        } for x in r.revisions],
    }


def risk_params(proposal: Any) -> dict[str, Any]:
    """What a migrate approval request keeps of a runbook.migrate.Proposal's review (JSON)."""
    return {"risk": review_to_json(getattr(proposal, "risk", None)),
            "risk_error": getattr(proposal, "risk_error", None)}


def ack_hint(environment: str, revision: str) -> str:
    return f"/migrate ack-risk {environment} {revision} REASON"


__all__ = ["ACK_ACTION", "Acknowledgement", "AcknowledgeError", "AllowlistError", "Finding", "LockHolder",
           "RATINGS", "ReviewError", "RevisionReview", "RiskReview", "TableFacts", "ack_hint", "acknowledge",
           "acknowledgements", "acknowledgements_in", "conflicts", "live_facts", "rate_finding", "read_allowlist", "review",
           "review_to_json", "risk_params", "run_squawk", "squawk_argv", "statements"]
