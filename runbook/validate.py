"""§5 post-migration validation: automatic after every upgrade, and on demand.

Checks, each pass/fail with a detail (SQL from reference/postgres.md §6, next to its check):

* alembic version: the version table holds exactly the expected revision(s) (§5.1);
* row counts of `validation.tables`, against a Baseline taken before the run: fewer rows is
  flagged as data loss (§5.1);
* required columns (`validation.required_columns`) without NULLs (§5.2);
* foreign keys without orphans, for constraints that are NOT VALID or touched by the run (a
  validated FK cannot have orphans unless triggers were bypassed) (§5.2);
* invalid indexes (`indisvalid = false`, e.g. left by a failed CREATE INDEX CONCURRENTLY) (§5.3);
* the indexes the run created: present, valid, and how much they were used (§5.3);
* the smoke command (§5.4) and the health URL (§5.5), each with its timeout.

Table and column names from the configuration are checked against the catalog before use and
quoted with psycopg.sql. The validation connection has its own statement_timeout and
lock_timeout (`validation.statement_timeout`/`lock_timeout`): a count(*) never queues behind a
lock. Failures carry a `kind` (data_loss, corruption, schema, index, app) so the §6.5 decision
tree (runbook/rollback.py) can weigh them.
"""
from __future__ import annotations

import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable, Literal, Sequence

import psycopg
from psycopg import sql

from runbook.config import Environment
from runbook.precheck import project_of, target_of
from runbook.revisions import AlembicProject, RevisionError, one_line, run_argv
from runbook.sqlscan import touched
from runbook.subprocess_env import app_subprocess_env
from runbook.target import Target, TargetError, password_of, redact

Status = Literal["pass", "fail", "skip"]
# What a failed check means for the rollback decision tree.
Kind = Literal["version", "data_loss", "corruption", "schema", "index", "app", "config"]


@dataclass(frozen=True)
class ValidationCheck:
    name: str
    status: Status
    detail: str
    section: str
    kind: Kind = "schema"
    tables: tuple[str, ...] = ()       # the tables a finding concerns (for a table restore)


@dataclass
class ValidationReport:
    environment: str
    target: str                        # host/db label, never credentials
    started_at: datetime
    duration_seconds: float
    checks: list[ValidationCheck]
    expected: list[str]                # the revision(s) the version table should hold
    current: list[str]
    error: str | None = None           # validation could not run at all (no connection, ...)
    expected_basis: str = ""           # why `expected` (Expectation.basis): an explicit REV, a run, the heads

    @property
    def failed(self) -> list[ValidationCheck]:
        return [c for c in self.checks if c.status == "fail"]

    @property
    def passed(self) -> bool:
        return self.error is None and not self.failed

    @property
    def data_loss(self) -> bool:
        return any(c.kind == "data_loss" for c in self.failed)

    @property
    def corruption(self) -> bool:
        return any(c.kind == "corruption" for c in self.failed)

    @property
    def affected_tables(self) -> list[str]:
        return sorted({t for c in self.failed for t in c.tables})


@dataclass(frozen=True)
class Baseline:
    """What validation compares against, read just before a run changes anything."""

    taken_at: datetime
    row_counts: dict[str, int]                 # configured table (as configured) -> rows
    indexes: frozenset[str]                    # every user index, as regclass text
    foreign_keys: dict[str, str] = field(default_factory=dict)   # "table.constraint" -> definition


# ---------------------------------------------------------------------------
# Names from the configuration, checked against the catalog

RESOLVE_TABLE_SQL = """
SELECT c.oid, n.nspname, c.relname
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'p') AND c.relname = %(name)s
   AND CASE WHEN %(schema)s::text IS NULL THEN n.nspname = ANY(current_schemas(false))
            ELSE n.nspname = %(schema)s END
 ORDER BY array_position(current_schemas(false), n.nspname::text)
 LIMIT 1
"""

COLUMNS_SQL = "SELECT attname FROM pg_attribute WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped"


@dataclass(frozen=True)
class _Table:
    configured: str
    oid: int
    schema: str
    name: str

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)


def _resolve_table(conn: psycopg.Connection, configured: str) -> _Table | None:
    schema, _, name = configured.rpartition(".")
    row = conn.execute(RESOLVE_TABLE_SQL, {"name": name, "schema": schema or None}).fetchone()
    return _Table(configured, row[0], row[1], row[2]) if row else None


def _count(conn: psycopg.Connection, table: _Table) -> int:
    return conn.execute(sql.SQL("SELECT count(*) FROM {}").format(table.ident)).fetchone()[0]


# ---------------------------------------------------------------------------
# Baseline

INDEXES_SQL = """
SELECT i.indexrelid::regclass::text
  FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%%'
"""

FOREIGN_KEYS_SQL = """
SELECT c.conrelid::regclass::text || '.' || c.conname, pg_get_constraintdef(c.oid)
  FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
 WHERE c.contype = 'f' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
"""


def take_baseline(conn: psycopg.Connection, env: Environment) -> Baseline:
    """Row counts of the configured tables that exist, and the user indexes and foreign keys."""
    counts: dict[str, int] = {}
    for configured in env.validation.tables:
        table = _resolve_table(conn, configured)
        if table is not None:
            counts[configured] = _count(conn, table)
    indexes = frozenset(r[0] for r in conn.execute(INDEXES_SQL).fetchall())
    fks = {r[0]: r[1] for r in conn.execute(FOREIGN_KEYS_SQL).fetchall()}
    return Baseline(taken_at=datetime.now(timezone.utc), row_counts=counts, indexes=indexes, foreign_keys=fks)


def baseline_of(env: Environment) -> Baseline:
    with _connect(target_of(env), env) as conn:
        return take_baseline(conn, env)


# ---------------------------------------------------------------------------
# What a run's SQL touches (from the offline preview)

def tables_in_sql(text: str) -> list[str]:
    """Tables a rendered migration creates, alters, fills or drops (alembic_version left out), from the one
    analyser (runbook.sqlscan); [] when it cannot be parsed."""
    return touched(text).tables


def indexes_in_sql(text: str) -> list[str]:
    """Indexes a rendered migration creates."""
    return touched(text).indexes


# ---------------------------------------------------------------------------
# The checks


def _check_version(project: AlembicProject, conn: psycopg.Connection, expected: list[str],
                   basis: str = "") -> tuple[ValidationCheck, list[str]]:
    current = project.current(conn)
    shown = ", ".join(current) or "(unversioned)"
    wanted = ", ".join(expected) or "(unversioned)"
    why = f" ({basis})" if basis else ""
    if sorted(current) == sorted(expected):
        return ValidationCheck("alembic version", "pass", f"alembic_version is {shown}, as expected{why}", "5.1",
                               "version"), current
    return ValidationCheck("alembic version", "fail", f"alembic_version is {shown}, expected {wanted}{why}", "5.1",
                           "version"), current


# ---------------------------------------------------------------------------
# What the version table should hold (issue 12 §2 e): decided here, for the CLI and Slack alike


@dataclass(frozen=True)
class Expectation:
    """The revision(s) an on-demand validation expects, and why. A database migrated step by step
    (`--to +1`, runbook §3.2) is where the bot's latest run left it, not at head."""

    revisions: list[str] | None        # None: the scripts' heads, read when validating
    basis: str                         # one line for the report: where `revisions` comes from
    run_id: str | None = None          # the run it follows, if any
    run_kind: str | None = None        # migrate | rollback | restore
    run_from: list[str] | None = None  # the revision(s) that run started from (§6.5's "before the run")


RUN_KINDS = ("migrate", "rollback", "restore")


def expected_revision(store: Any, name: str, project: AlembicProject, *,
                      explicit: str | None = None) -> Expectation:
    """What `validate` expects on environment `name`:

    * `explicit` (the CLI's `--expect REV`): that revision, resolved by the app's scripts (an id,
      a unique prefix, a branch label, head, heads or base); RevisionError when it is not one;
    * otherwise the revision(s) the latest completed (succeeded) migrate, rollback or restore of
      `name` left the database at (its result's `to`);
    * with no such run on record (a database the bot never changed): the scripts' heads (None, read
      by validate(), which reports scripts it cannot read).
    Only an explicit REV raises (RevisionError, one line).
    """
    if explicit is not None:
        resolved = project.resolve(explicit)
        revisions = [] if resolved == "base" else project.heads() if resolved == "heads" else [resolved]
        return Expectation(revisions, f"--expect {one_line(explicit, 60)}")
    if store is not None:
        from runbook.state.runs import RunStore

        for run in RunStore(store).list(environment=name, states=("succeeded",), limit=20):
            result = run.outcome
            if run.kind not in RUN_KINDS or result.to_revisions is None:
                continue
            finished = run.finished_at.strftime("%Y-%m-%d %H:%M UTC") if run.finished_at else "at an unknown time"
            return Expectation(result.to_revisions, f"where {run.kind} run {run.id} left it, {finished}", run.id,
                               run.kind, result.from_revisions)
    return Expectation(None, "the scripts' head: no completed run of the bot on record")


def _bare(table: str) -> str:
    return table.rpartition(".")[2].strip('"').lower()


def _check_row_counts(conn: psycopg.Connection, env: Environment, baseline: Baseline | None,
                      may_drop: Sequence[str] = ()) -> list[ValidationCheck]:
    """Rows now against the baseline, in both directions. `may_drop`: tables a rollback undoes the
    creation of (the tables its revisions touch): one of them gone after the run is reported, not
    failed; any other configured table gone, or any table with fewer rows, is data loss."""
    if not env.validation.tables:
        return [ValidationCheck("row counts", "skip", "no validation.tables configured", "5.1", "data_loss")]
    parts: list[str] = []
    lost: list[str] = []
    missing: list[str] = []
    droppable = {_bare(t) for t in may_drop}
    for configured in env.validation.tables:
        table = _resolve_table(conn, configured)
        before = baseline.row_counts.get(configured) if baseline else None
        if table is None and before is not None and _bare(configured) in droppable:
            parts.append(f"{configured} dropped by the rollback ({before} rows before)")
            continue
        if table is None:
            missing.append(configured)
            continue
        now = _count(conn, table)
        if before is None:
            parts.append(f"{configured} {now}")
        elif now < before:
            lost.append(configured)
            parts.append(f"{configured} {before} -> {now} (-{before - now})")
        else:
            parts.append(f"{configured} {before} -> {now}")
    checks = []
    if missing:
        had = [t for t in missing if baseline and t in baseline.row_counts]
        detail = "configured in validation.tables but not in the database: " + ", ".join(missing)
        checks.append(ValidationCheck("tables present", "fail", detail, "5.1",
                                      "data_loss" if had else "config", tuple(missing)))
    if lost:
        checks.append(ValidationCheck("row counts", "fail", "data loss: " + "; ".join(parts), "5.1", "data_loss",
                                      tuple(lost)))
    elif parts:
        note = "" if baseline else " (no count from before the run to compare with)"
        checks.append(ValidationCheck("row counts", "pass", "; ".join(parts) + note, "5.1", "data_loss"))
    return checks


def _check_required_columns(conn: psycopg.Connection, env: Environment) -> list[ValidationCheck]:
    required = env.validation.required_columns
    if not required:
        return [ValidationCheck("required columns", "skip", "no validation.required_columns configured", "5.2",
                                "corruption")]
    checks = []
    for configured, columns in required.items():
        name = f"required columns {configured}"
        table = _resolve_table(conn, configured)
        if table is None:
            checks.append(ValidationCheck(name, "fail", f"table {configured} does not exist", "5.2", "config",
                                          (configured,)))
            continue
        existing = {r[0] for r in conn.execute(COLUMNS_SQL, [table.oid]).fetchall()}
        unknown = [c for c in columns if c not in existing]
        if unknown:
            checks.append(ValidationCheck(name, "fail", f"{configured} has no column {', '.join(unknown)} "
                                          "(validation.required_columns)", "5.2", "config", (configured,)))
            continue
        if not columns:
            continue
        # §5.2: count(*) FILTER per column, one scan of the table.
        query = sql.SQL("SELECT {} FROM {}").format(
            sql.SQL(", ").join(sql.SQL("count(*) FILTER (WHERE {} IS NULL)").format(sql.Identifier(c))
                               for c in columns),
            table.ident)
        nulls = dict(zip(columns, conn.execute(query).fetchone()))
        bad = {c: n for c, n in nulls.items() if n}
        if bad:
            checks.append(ValidationCheck(name, "fail", "NULLs in required columns: " +
                                          ", ".join(f"{c} {n}" for c, n in bad.items()), "5.2", "corruption",
                                          (configured,)))
        else:
            checks.append(ValidationCheck(name, "pass", f"no NULLs in {', '.join(columns)}", "5.2", "corruption"))
    return checks


# postgres.md §6: one orphan count per foreign key, generated by the server (format %I and
# regclass text quote every name). MATCH SIMPLE: rows with any NULL key column are exempt.
# Only NOT VALID constraints and the ones the run touched: a validated FK has no orphans
# unless triggers were bypassed.
FK_ORPHANS_SQL = """
SELECT c.conrelid::regclass::text || '.' || c.conname AS key, c.conname, c.convalidated,
       c.conrelid::regclass::text AS child, c.confrelid::regclass::text AS parent,
       format('SELECT count(*) FROM %%s c WHERE %%s AND NOT EXISTS (SELECT 1 FROM %%s p WHERE %%s)',
         c.conrelid::regclass,
         (SELECT string_agg(format('c.%%I IS NOT NULL', a.attname), ' AND ')
            FROM unnest(c.conkey) k JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k),
         c.confrelid::regclass,
         (SELECT string_agg(format('p.%%I = c.%%I', pa.attname, ca.attname), ' AND ')
            FROM unnest(c.conkey, c.confkey) AS u(ck, pk)
            JOIN pg_attribute ca ON ca.attrelid = c.conrelid AND ca.attnum = u.ck
            JOIN pg_attribute pa ON pa.attrelid = c.confrelid AND pa.attnum = u.pk)) AS orphan_sql
  FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
 WHERE c.contype = 'f' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
   AND (NOT c.convalidated
        OR c.conrelid::regclass::text || '.' || c.conname = ANY(%(keys)s::text[])
        OR c.conrelid = ANY(%(tables)s::oid[]) OR c.confrelid = ANY(%(tables)s::oid[]))
 ORDER BY 1
"""


def _touched_oids(conn: psycopg.Connection, tables: Iterable[str]) -> list[int]:
    oids = []
    for name in tables:
        table = _resolve_table(conn, name)
        if table is not None:
            oids.append(table.oid)
    return oids


def _check_foreign_keys(conn: psycopg.Connection, baseline: Baseline | None,
                        touched_tables: Sequence[str]) -> list[ValidationCheck]:
    current = {r[0]: r[1] for r in conn.execute(FOREIGN_KEYS_SQL).fetchall()}
    changed = [k for k, d in current.items() if baseline is not None and baseline.foreign_keys.get(k) != d]
    rows = conn.execute(FK_ORPHANS_SQL, {"keys": changed, "tables": _touched_oids(conn, touched_tables)}).fetchall()
    if not rows:
        return [ValidationCheck("foreign keys", "pass", "no NOT VALID foreign key, none touched by the run", "5.2",
                                "corruption")]
    checks = []
    for key, conname, validated, child, parent, orphan_sql in rows:
        orphans = conn.execute(orphan_sql).fetchone()[0]
        state = "validated" if validated else "NOT VALID"
        if orphans:
            checks.append(ValidationCheck(f"foreign key {conname}", "fail",
                                          f"{orphans} row(s) of {child} point to no row of {parent} ({state})",
                                          "5.2", "corruption", (child,)))
        else:
            hint = "; VALIDATE CONSTRAINT can now be run" if not validated else ""
            checks.append(ValidationCheck(f"foreign key {conname}", "pass",
                                          f"no orphans in {child} -> {parent} ({state}{hint})", "5.2", "corruption"))
    return checks


# §5.3, pgwatch-style; an index being built concurrently right now is not (yet) a failure.
INVALID_INDEXES_SQL = """
SELECT i.indexrelid::regclass::text, i.indrelid::regclass::text, i.indisvalid, i.indisready
  FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE (NOT i.indisvalid OR NOT i.indisready)
   AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%%'
   AND NOT EXISTS (SELECT 1 FROM pg_stat_progress_create_index p WHERE p.index_relid = i.indexrelid)
 ORDER BY 1
"""


def _check_invalid_indexes(conn: psycopg.Connection) -> ValidationCheck:
    rows = conn.execute(INVALID_INDEXES_SQL).fetchall()
    if not rows:
        return ValidationCheck("invalid indexes", "pass", "none (every index is valid and ready)", "5.3", "index")
    detail = "; ".join(f"{index} on {table} ({'INVALID' if not valid else 'valid'}{'' if ready else ', not ready'})"
                       for index, table, valid, ready in rows)
    return ValidationCheck("invalid indexes", "fail",
                           detail + ": drop it (DROP INDEX CONCURRENTLY) and build it again", "5.3", "index",
                           tuple(sorted({r[1] for r in rows})))


# PG 16 adds last_idx_scan.
INDEX_USAGE_SQL = """
SELECT i.indexrelid::regclass::text, i.indisvalid, coalesce(s.idx_scan, 0), {last_scan}
  FROM pg_index i LEFT JOIN pg_stat_user_indexes s ON s.indexrelid = i.indexrelid
 WHERE i.indexrelid::regclass::text = ANY(%(names)s::text[])
"""


def _check_new_indexes(conn: psycopg.Connection, baseline: Baseline | None,
                       expected_indexes: Sequence[str]) -> list[ValidationCheck]:
    if baseline is None and not expected_indexes:
        return []
    now = {r[0] for r in conn.execute(INDEXES_SQL).fetchall()}
    created = sorted(now - baseline.indexes) if baseline else []
    # Names as rendered in the SQL (maybe schema-qualified) against regclass text (search-path relative).
    bare = {n.rpartition(".")[2]: n for n in now}
    missing = [n for n in expected_indexes if n not in now and n.rpartition(".")[2] not in bare]
    wanted = sorted(set(created) | {bare.get(n.rpartition(".")[2], n) for n in expected_indexes} - set(missing))
    checks = []
    if missing:
        checks.append(ValidationCheck("new indexes present", "fail",
                                      "created by the migration's SQL but missing: " + ", ".join(missing), "5.3",
                                      "index"))
    if wanted:
        last_scan = "s.last_idx_scan" if conn.info.server_version >= 160000 else "NULL::timestamptz"
        rows = conn.execute(INDEX_USAGE_SQL.format(last_scan=last_scan), {"names": wanted}).fetchall()
        parts = []
        for name, valid, scans, last in rows:
            used = f"{scans} scan(s)" + (f", last {last:%Y-%m-%d %H:%M:%S}" if last else "")
            parts.append(f"{name} {'valid' if valid else 'INVALID'}, {used}")
        checks.append(ValidationCheck("new indexes", "pass" if all(r[1] for r in rows) else "fail",
                                      "; ".join(parts), "5.3", "index"))
    elif not missing:
        checks.append(ValidationCheck("new indexes", "pass", "the run created no index", "5.3", "index"))
    return checks


def _tail(text: str, lines: int = 15, limit: int = 2000) -> str:
    kept = "\n".join(text.strip().splitlines()[-lines:])
    return kept[-limit:]


def _check_smoke(env: Environment, dsn: str) -> ValidationCheck:
    argv = env.validation.smoke_command
    if not argv:
        return ValidationCheck("smoke command", "skip", "no validation.smoke_command configured", "5.4", "app")
    secret = password_of(dsn)
    shown = " ".join(argv)
    process_env = app_subprocess_env(env.url_env, dsn, env.app_env)
    timeout = env.validation.smoke_timeout_seconds
    started = time.monotonic()
    try:
        result = run_argv(list(argv), cwd=env.app_dir, env=process_env, timeout=timeout)
    except FileNotFoundError:
        return ValidationCheck("smoke command", "fail", f"cannot run {argv[0]!r}: not found", "5.4", "app")
    except subprocess.TimeoutExpired:
        return ValidationCheck("smoke command", "fail", f"`{shown}` did not finish within {timeout:g} s and was "
                               "stopped", "5.4", "app")
    except OSError as exc:
        return ValidationCheck("smoke command", "fail", redact(f"cannot run {argv[0]!r}: {one_line(str(exc))}",
                                                               secret, dsn), "5.4", "app")
    took = time.monotonic() - started
    output = redact(_tail((result.stdout or "") + "\n" + (result.stderr or "")), secret, dsn)
    if result.returncode == 0:
        return ValidationCheck("smoke command", "pass", f"`{shown}` passed in {took:.1f} s", "5.4", "app")
    return ValidationCheck("smoke command", "fail", f"`{shown}` failed (exit {result.returncode}) in {took:.1f} s"
                           + (f":\n{output}" if output else ""), "5.4", "app")


def _check_health(env: Environment) -> ValidationCheck:
    url = env.validation.health_url
    if not url:
        return ValidationCheck("health URL", "skip", "no validation.health_url configured", "5.5", "app")
    timeout = env.validation.health_timeout_seconds
    shown = redact(url)
    started = time.monotonic()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="GET"), timeout=timeout) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        return ValidationCheck("health URL", "fail", f"{shown} answered {exc.code}", "5.5", "app")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        text = "timed out" if isinstance(reason, TimeoutError) or "timed out" in str(reason) else str(reason)
        return ValidationCheck("health URL", "fail", f"{shown}: {one_line(redact(text))} (timeout {timeout:g} s)",
                               "5.5", "app")
    took_ms = (time.monotonic() - started) * 1000
    if 200 <= status < 300:
        return ValidationCheck("health URL", "pass", f"{shown} answered {status} in {took_ms:.0f} ms", "5.5", "app")
    return ValidationCheck("health URL", "fail", f"{shown} answered {status}", "5.5", "app")


# ---------------------------------------------------------------------------
# Assembly


def _connect(target: Target, env: Environment):
    v = env.validation
    return target.connect("validate", statement_timeout=v.statement_timeout.replace(" ", ""),
                          lock_timeout=v.lock_timeout.replace(" ", ""))


def _guarded(name: str, section: str, kind: Kind, run) -> list[ValidationCheck]:
    """One check group; a query that times out or errors fails that group, not the validation."""
    try:
        result = run()
    except psycopg.errors.QueryCanceled:
        return [ValidationCheck(name, "fail", "could not check: the query hit validation.statement_timeout or "
                                "lock_timeout", section, kind)]
    except psycopg.Error as exc:
        return [ValidationCheck(name, "fail", "could not check: " + one_line(str(exc).splitlines()[0] if str(exc)
                                                                              else type(exc).__name__), section, kind)]
    return result if isinstance(result, list) else [result]


def validate(name: str, env: Environment, *, expected: Sequence[str] | Expectation | None = None,
             baseline: Baseline | None = None, touched_tables: Sequence[str] = (),
             expected_indexes: Sequence[str] = (), app_checks: bool = True,
             project: AlembicProject | None = None, may_drop: Sequence[str] = ()) -> ValidationReport:
    """Run §5 against one environment. Never raises for the target's faults: `error` or failed checks say it.

    `expected`: the revision(s) the version table should hold, or an Expectation (from
    expected_revision(), for an on-demand validation: it names its basis); default: the scripts' heads.
    `baseline`: taken before the run (row counts, indexes, FKs); without it nothing is compared.
    `touched_tables` / `expected_indexes`: from the run's SQL preview (tables_in_sql, indexes_in_sql).
    `may_drop`: after a rollback, the tables its revisions touch: one of them gone is no data loss.
    """
    started = datetime.now(timezone.utc)
    clock = time.monotonic()
    target = target_of(env)
    project = project or project_of(env)
    checks: list[ValidationCheck] = []
    current: list[str] = []
    error = None
    basis = expected.basis if isinstance(expected, Expectation) else ""
    if isinstance(expected, Expectation):
        expected = expected.revisions
    try:
        wanted = list(expected) if expected is not None else project.heads()
    except RevisionError as exc:
        wanted, error = [], str(exc)
    if error is None:
        try:
            with _connect(target, env) as conn:
                def version_check() -> ValidationCheck:
                    check, current[:] = _check_version(project, conn, wanted, basis)
                    return check

                checks += _guarded("alembic version", "5.1", "version", version_check)
                checks += _guarded("row counts", "5.1", "data_loss", lambda: _check_row_counts(conn, env, baseline, may_drop))
                checks += _guarded("required columns", "5.2", "corruption", lambda: _check_required_columns(conn, env))
                checks += _guarded("foreign keys", "5.2", "corruption",
                                   lambda: _check_foreign_keys(conn, baseline, touched_tables))
                checks += _guarded("invalid indexes", "5.3", "index", lambda: _check_invalid_indexes(conn))
                checks += _guarded("new indexes", "5.3", "index",
                                   lambda: _check_new_indexes(conn, baseline, expected_indexes))
        except TargetError as exc:
            error = str(exc)
    if error is None and app_checks:
        checks.append(_check_smoke(env, env.dsn))
        checks.append(_check_health(env))
    return ValidationReport(environment=name, target=target.label, started_at=started,
                            duration_seconds=time.monotonic() - clock, checks=checks, expected=wanted,
                            current=current, error=error, expected_basis=basis)


def report_to_json(report: ValidationReport) -> dict[str, Any]:
    """The `validate --json` contract."""
    return {
        "environment": report.environment,
        "target": report.target,
        "started_at": report.started_at.isoformat(),
        "duration_seconds": round(report.duration_seconds, 3),
        "passed": report.passed,
        "expected": list(report.expected),
        "expected_basis": report.expected_basis,
        "current": list(report.current),
        "data_loss": report.data_loss,
        "corruption": report.corruption,
        "affected_tables": report.affected_tables,
        "checks": [{**asdict(c), "tables": list(c.tables)} for c in report.checks],
        "error": report.error,
    }


__all__ = ["Baseline", "Expectation", "ValidationCheck", "ValidationReport", "baseline_of", "expected_revision", "indexes_in_sql", "report_to_json",
           "tables_in_sql", "take_baseline", "validate"]
