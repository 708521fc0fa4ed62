"""Issue 16: the pending range rehearsed on a restored copy before anyone approves it.

    rehearse(name, env, store, *, target="head", backup_id=None, actor=...) -> Rehearsal

1. The copy: the latest verified full backup taken at the revision the environment is at now (any age:
   the rule of runbook/protection.py without its window), or the one named, or a new one; restored
   (runbook/backup/scratch.py `restored_copy`, the scratch restore of `verify: restore`) into a database named
   `rbrehearse_<run id>` on `rehearsal.server_url` (default: the target's own server). There it is kept
   gentle: one pg_restore job, `rehearsal.statement_timeout`, and refused when the server's free disk
   (measurable when its data directory is on this host) is below the copy's size plus
   `rehearsal.disk_margin`. The target is only read (its revision and size): no operation lock, no write.
2. The app's own Alembic against the copy, one revision at a time, through the supervisor of a real run
   (runbook/migrate/: tethered subprocess, the same environment and PGOPTIONS, only the URL is the
   copy's), then down revision by revision to where it started, then up again (up-down-up); a revision
   whose downgrade is irreversible stops the way down there, reported.
3. Per revision: wall time of its alembic call; the relation locks the migrator's session held, sampled
   from pg_locks every `rehearsal.lock_sample_ms` by a monitor connection filtered to its pid (found by
   its application_name `rbmigrate/<run id>`), ACCESS EXCLUSIVE first with how long it was seen held;
   tables rewritten (relfilenode changed); size change per table; rows changed per table; WAL written (an
   upper bound on a shared server); whether its downgrade worked. Then §5 (runbook/validate.py) on the copy.
4. The copy is always dropped: on success and failure here, and after a crash by `drop_leftovers` (every
   rehearsal's start, the bot's start) and `drop_scratch_of` (whoever reaps the dead run: a CLI start, the
   bot's reaper). A rehearsal is a run of kind "rehearse" (runbook/state/runs.py), with a heartbeat, its
   scratch database in its details and its report as its result.

A rehearsal is bound to its range (the revision it started at, the revision it went to) and to the sha256
of every revision file in it: `latest_for` finds the latest one of a range, voided when a file changed.
"""
from __future__ import annotations

import contextlib
import hashlib
import shutil
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg
from pydantic import SecretStr

from runbook import backup as backups
from runbook import migrate
from runbook.config import Environment
from runbook.dsn import describe, password_of
from runbook.precheck import project_of, target_of
from runbook.revisions import AlembicProject, RevisionError, one_line
from runbook.target import Target, TargetError
from runbook.units import human_size
# What a precheck reads of past rehearsals lives apart, light to import (no psycopg, no backup).
from runbook.rehearsal_record import (KIND, Match, _seconds, _signed_size, check_line, file_hashes,  # noqa: F401
                                      held_for, latest_for, match_in_events, match_line, revision_line_json,
                                      summary_of)

SCRATCH_PREFIX = "rbrehearse_"
# Outcomes: passed (every revision up, down and up again, validation passed), failed (a revision, a
# downgrade or the validation failed: the CLI exits 1), nothing to do, refused / error (exit 2).
Outcome = str


# ---------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class LockHeld:
    relation: str
    mode: str                        # SQL words: ACCESS EXCLUSIVE, SHARE ROW EXCLUSIVE, ...
    held_seconds: float              # first to last sample that saw it granted


@dataclass(frozen=True)
class RiskCheck:
    """One finding of the risk review (runbook/review.py) on a rehearsed revision, against what the
    rehearsal measured on the tables it names. `verdict`, for a finding about locks and size
    (runbook.review.SIZE_RULES): "confirmed" (rated medium or high, and a lock that blocks writes was seen
    held for at least LONG_LOCK_SECONDS; or rated low, and none was), "refuted" (rated medium or high,
    and none was), "understated" (rated low, yet one was). A rewrite is shown but decides nothing: on a
    copy of the real size, its cost is the time its lock was held. None for a finding that is not about
    locks (a dropped column's data, a renamed table)."""

    rule: str
    finding: str                     # what it is about, e.g. "CREATE INDEX without CONCURRENTLY on expenses"
    rated: str                       # low, medium, high
    measured: str                    # e.g. "SHARE lock on expenses for at least 4.2 s"
    verdict: str | None


@dataclass
class RevisionReport:
    revision: str
    message: str
    seconds: float = 0.0
    ok: bool = False
    error: str | None = None
    locks: list[LockHeld] = field(default_factory=list)
    rewrites: list[str] = field(default_factory=list)
    size_change_bytes: int = 0
    size_by_table: dict[str, int] = field(default_factory=dict)
    rows_changed: dict[str, int] = field(default_factory=dict)
    wal_bytes: int | None = None
    reversible: bool = True
    irreversible_reason: str | None = None
    downgrade_ok: bool | None = None       # None: not tried (irreversible, or the way down stopped before it)
    downgrade_seconds: float | None = None
    downgrade_error: str | None = None
    risk_checks: list[RiskCheck] = field(default_factory=list)


@dataclass
class Rehearsal:
    run_id: str
    environment: str
    outcome: Outcome = "error"
    error: str | None = None
    backup_id: int | None = None
    backup_taken: bool = False
    server: str = ""
    scratch: str = ""
    from_revisions: list[str] = field(default_factory=list)
    target: str = ""
    files: dict[str, str] = field(default_factory=dict)      # revision -> sha256 of its file
    revisions: list[RevisionReport] = field(default_factory=list)
    upgrade_again_ok: bool | None = None
    validation: Any = None                                    # runbook.validate.ValidationReport
    notes: list[str] = field(default_factory=list)
    restore_seconds: float = 0.0
    total_seconds: float = 0.0
    started_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    log_path: str | None = None

    @property
    def passed(self) -> bool:
        return self.outcome == "passed"


# ---------------------------------------------------------------------------
# The lock sampler


_LOCK_MODES = {"AccessShareLock": "ACCESS SHARE", "RowShareLock": "ROW SHARE", "RowExclusiveLock": "ROW EXCLUSIVE",
               "ShareUpdateExclusiveLock": "SHARE UPDATE EXCLUSIVE", "ShareLock": "SHARE",
               "ShareRowExclusiveLock": "SHARE ROW EXCLUSIVE", "ExclusiveLock": "EXCLUSIVE",
               "AccessExclusiveLock": "ACCESS EXCLUSIVE"}
_MODE_ORDER = list(_LOCK_MODES.values())

_LOCKS_SQL = """
SELECT l.relation::bigint, l.mode
  FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
 WHERE a.application_name = %s AND l.locktype = 'relation' AND l.granted
   AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""


class LockSampler:
    """pg_locks of the migrator's session every `period` seconds, on its own connection, in a thread.
    Relations are kept by oid and named afterwards (a table the migration creates has no name a
    concurrent session can see until it commits)."""

    def __init__(self, copy: Target, app_name: str, period: float):
        self.copy, self.app_name, self.period = copy, app_name, period
        self.seen: dict[tuple[int, str], list[float]] = {}
        self.samples = 0
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "LockSampler":
        self._stop.clear()
        self.seen, self.samples = {}, 0
        self._thread = threading.Thread(target=self._run, name=f"lock-sampler-{self.app_name}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        try:
            with self.copy.connect("rehearse-locks", statement_timeout="1s") as conn:
                while not self._stop.is_set():
                    started = time.monotonic()
                    for oid, mode in conn.execute(_LOCKS_SQL, [self.app_name], prepare=True).fetchall():
                        span = self.seen.setdefault((int(oid), mode), [started, started])
                        span[1] = started
                    self.samples += 1
                    self._stop.wait(max(0.0, self.period - (time.monotonic() - started)))
        except (psycopg.Error, TargetError) as exc:
            self.error = one_line(str(exc))

    def locks(self, conn: psycopg.Connection, existed: dict[int, str],
              version_table: str = "alembic_version") -> list[LockHeld]:
        """Table locks seen, ACCESS EXCLUSIVE first, then the strongest and longest. `existed`: the
        tables before the step, by oid (names a table the step dropped)."""
        oids = sorted({oid for oid, _mode in self.seen})
        names: dict[int, tuple[str, str]] = {}
        if oids:
            for oid, shown, kind in conn.execute(
                    "SELECT c.oid::bigint, CASE WHEN n.nspname = 'public' THEN c.relname::text "
                    "ELSE n.nspname || '.' || c.relname END, c.relkind::text "
                    "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE c.oid = ANY(%s) AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
                    "AND n.nspname NOT LIKE 'pg\\_toast%%'", [oids]).fetchall():
                names[int(oid)] = (shown, kind)
        held: list[LockHeld] = []
        for (oid, mode), (first, last) in self.seen.items():
            if oid in names:
                shown, kind = names[oid]
                if kind not in ("r", "p", "m") or shown == version_table:
                    continue
            elif oid in existed:        # a table the migration dropped
                shown = f"{existed[oid]} (dropped)"
            else:                       # a catalog, or a transient heap of a rewrite (pg_temp_N)
                continue
            held.append(LockHeld(shown, _LOCK_MODES.get(mode, mode), round(last - first, 3)))
        held.sort(key=lambda h: (h.mode != "ACCESS EXCLUSIVE",
                                 -(_MODE_ORDER.index(h.mode) if h.mode in _MODE_ORDER else -1),
                                 -h.held_seconds, h.relation))
        return held


# ---------------------------------------------------------------------------
# Table facts before and after a revision


_TABLES_SQL = """
SELECT CASE WHEN n.nspname = 'public' THEN c.relname::text ELSE n.nspname || '.' || c.relname END,
       c.relfilenode::bigint, c.oid::bigint, pg_total_relation_size(c.oid),
       COALESCE(s.n_tup_ins + s.n_tup_upd + s.n_tup_del, 0)
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
 WHERE c.relkind IN ('r', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
   AND n.nspname NOT LIKE 'pg\\_toast%%'
"""


@dataclass(frozen=True)
class _Tables:
    files: dict[str, int]
    oids: dict[int, str]
    sizes: dict[str, int]
    writes: dict[str, int]
    lsn: str


def _tables(conn: psycopg.Connection) -> _Tables:
    conn.execute("SELECT pg_stat_clear_snapshot()")
    rows = conn.execute(_TABLES_SQL).fetchall()
    lsn = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]
    return _Tables({r[0]: int(r[1]) for r in rows}, {int(r[2]): r[0] for r in rows}, {r[0]: int(r[3]) for r in rows},
                   {r[0]: int(r[4]) for r in rows}, lsn)


def _compare(report: RevisionReport, before: _Tables, after: _Tables, conn: psycopg.Connection,
             version_table: str) -> None:
    report.rewrites = sorted(t for t, f in after.files.items() if t in before.files and before.files[t] != f
                             and t != version_table)
    changes = {}
    for table in set(before.sizes) | set(after.sizes):
        if table == version_table:
            continue
        delta = after.sizes.get(table, 0) - before.sizes.get(table, 0)
        if delta:
            changes[table] = delta
    report.size_by_table = dict(sorted(changes.items()))
    report.size_change_bytes = sum(changes.values())
    report.rows_changed = {t: n - before.writes.get(t, 0) for t, n in sorted(after.writes.items())
                           if t != version_table and n - before.writes.get(t, 0) > 0}
    report.wal_bytes = int(conn.execute("SELECT pg_wal_lsn_diff(%s::pg_lsn, %s::pg_lsn)",
                                        [after.lsn, before.lsn]).fetchone()[0])


# ---------------------------------------------------------------------------
# The risk review, confirmed or refuted by what was measured


# Modes that block writes to the table (SHARE and stronger), and how long one must be seen held for a
# finding about locks to count as confirmed: at that length a busy table's writers queue visibly.
WRITE_BLOCKING = ("SHARE", "SHARE ROW EXCLUSIVE", "EXCLUSIVE", "ACCESS EXCLUSIVE")
LONG_LOCK_SECONDS = 1.0


def _review_on_copy(name: str, copy_env: Environment, conn: psycopg.Connection, project: AlembicProject,
                    revisions: Sequence[Any], result: Rehearsal) -> dict[str, Any]:
    """runbook/review.py's review of the revisions, rated against the copy before they run (the same
    tables and sizes as the target when its backup was taken, and no live sessions): revision ->
    RevisionReview. Empty, with a note, when it cannot run; nothing when the review is disabled."""
    from runbook import review

    if not copy_env.review.enabled or not revisions:
        return {}
    try:
        done = review.review(name, copy_env, conn, project=project, revisions=revisions)
    except (review.ReviewError, review.AllowlistError, psycopg.Error, RevisionError) as exc:
        result.notes.append(f"risk review not checked against the measurements: {one_line(str(exc))}")
        return {}
    return {entry.revision: entry for entry in done.revisions}


def _plain(relation: str) -> str:
    return relation[len("public."):] if relation.startswith("public.") else relation


def risk_checks(entry: Any, report: RevisionReport, sample_ms: int) -> list[RiskCheck]:
    """Each finding of the review of `report`'s revision (`entry`: a runbook.review.RevisionReview, or None)
    against the locks and rewrites measured on the tables it names. A lock's duration is a lower bound:
    it was seen from its first sample to its last, and one shorter than a sample may not be seen at all."""
    from runbook.review import SIZE_RULES

    if entry is None:
        return []
    checks = []
    for finding in entry.findings:
        tables = [_plain(t) for t in finding.tables]
        seen: list[str] = []
        blocked_writes = False
        for table in tables:
            held = [lock for lock in report.locks if _plain(lock.relation) == table]
            rewritten = ", table rewritten" if table in map(_plain, report.rewrites) else ""
            if held:     # report.locks comes strongest first
                lock = held[0]
                seen.append(f"{lock.mode} lock on {lock.relation} {held_for(lock.held_seconds, at_least=True)}"
                            f"{rewritten}")
                blocked_writes = blocked_writes or any(h.mode in WRITE_BLOCKING and h.held_seconds >= LONG_LOCK_SECONDS
                                                       for h in held)
            else:
                seen.append(f"no lock seen on {table}: any was shorter than a sample ({sample_ms} ms){rewritten}")
        measured = "; ".join(seen) or f"nothing to weigh it against (no table named; the revision took {_seconds(report.seconds)})"
        verdict = None
        if finding.rule in SIZE_RULES and tables:
            if finding.rating == "low":
                verdict = "understated" if blocked_writes else "confirmed"
            else:
                verdict = "confirmed" if blocked_writes else "refuted"
        what = SIZE_RULES[finding.rule][0] if finding.rule in SIZE_RULES else finding.rule
        checks.append(RiskCheck(finding.rule, what + (f" on {', '.join(tables)}" if tables else ""),
                                finding.rating, measured, verdict))
    return checks


# ---------------------------------------------------------------------------
# Disk


def _free_disk(admin: Target, same_server: bool) -> tuple[int | None, str]:
    """(free bytes, how it was measured or why it could not be) of the server's data directory."""
    try:
        with admin.connect("rehearse") as conn:
            directory = conn.execute("SELECT current_setting('data_directory', true)").fetchone()[0]
    except TargetError as exc:
        return None, f"cannot read the server's data directory: {exc}"
    if not directory:
        return None, "the server does not show its data directory to this role (pg_read_all_settings)"
    path = Path(directory)
    if not path.is_dir():     # a path that exists here may still be another host's: only on the same server
        return None, f"the server's data directory {directory} is not on this host"
    try:
        return shutil.disk_usage(path).free, f"free disk at {directory}"
    except OSError as exc:
        return None, f"cannot read free disk at {directory}: {exc.strerror}"


# ---------------------------------------------------------------------------
# Leftovers


def scratch_name(run_id: str) -> str:
    return SCRATCH_PREFIX + run_id


def drop_scratch_of(settings: Any, runs: Sequence[Any]) -> list[str]:
    """The scratch databases of rehearsal runs just reaped (their process died), dropped; their names."""
    dropped = []
    for run in runs:
        if run.kind != KIND or not run.detail("scratch"):
            continue
        env = settings.environments.get(run.environment)
        if env is None:
            continue
        admin = Target(env.rehearsal_dsn, connect_timeout=env.connect_timeout_seconds)
        if backups.drop_scratch(admin, str(run.detail("scratch"))) is None:
            dropped.append(str(run.detail("scratch")))
    return dropped


def drop_leftovers(settings: Any, store, environments: Sequence[str] | None = None) -> list[str]:
    """Every `rbrehearse_*` database on the rehearsal servers of `environments` (default: all) whose
    rehearsal run is recorded here and no longer running, dropped; their names. A database whose run
    this state database does not know belongs to someone else and is left alone."""
    from runbook.state.runs import RUNNING, RunStore

    runs = RunStore(store)
    dropped: list[str] = []
    servers: dict[str, Any] = {}
    for name in environments or list(settings.environments):
        if not runs.list(environment=name, kinds=(KIND,), limit=1):
            continue        # never rehearsed here: no connection to its server
        env = settings.environments[name]
        servers.setdefault(env.rehearsal_dsn, env)
    for dsn, env in servers.items():
        admin = Target(dsn, connect_timeout=env.connect_timeout_seconds)
        try:
            with admin.connect("rehearse") as conn:
                names = [r[0] for r in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s",
                                                    [SCRATCH_PREFIX.replace("_", "\\_") + "%"]).fetchall()]
        except TargetError:
            continue
        for dbname in names:
            run = runs.get(dbname[len(SCRATCH_PREFIX):])
            if run is None or run.kind != KIND or run.state == RUNNING:
                continue
            if backups.drop_scratch(admin, dbname) is None:
                dropped.append(dbname)
    return dropped


# ---------------------------------------------------------------------------
# The rehearsal


class Refused(Exception):
    """The rehearsal cannot start; one line."""


def _choose_backup(name: str, env: Environment, store, current: list[str], backup_id: int | str | None,
                   actor: str, result: Rehearsal, *, may_take: bool = True) -> Any:
    """The backup to restore: the one named, else the latest verified full one taken at `current`, else a
    new one (`may_take`: only when the target is at `current` now)."""
    if backup_id is not None:
        try:
            item = backups.get_backup(store, name, backup_id)
        except backups.BackupError as exc:
            raise Refused(str(exc)) from None
        if item.status != "verified" or item.kind != "full":
            raise Refused(f"backup {item.id} is a {item.status} {item.kind} backup: a rehearsal needs a verified "
                          "full one")
        if item.revision is None or sorted(item.revision) != sorted(current):
            at = ", ".join(item.revision) if item.revision else "an unrecorded revision" if item.revision is None \
                else "base"
            raise Refused(f"backup {item.id} was taken at {at}, not at {', '.join(current) or 'base'} where {name} is "
                          "now: its copy would rehearse another range")
        return item
    # The revision rule of runbook/protection.py (taken at the revision the database is at), any age.
    for item in backups.list_backups(store, name, limit=50):
        if item.status == "verified" and item.kind == "full" and item.revision is not None \
                and sorted(item.revision) == sorted(current):
            return item
    if not may_take:
        raise Refused(f"no verified full backup taken at {', '.join(current) or 'base'} to rehearse on, and {name} "
                      "is no longer there to take one: a rollback is rehearsed on a copy of the database as it was "
                      "before the migration")
    result.notes.append(f"no verified full backup at {', '.join(current) or 'base'}: took one")
    try:
        item = backups.backup(name, env, store, reason="rehearse", actor=actor)
    except backups.BackupError as exc:
        raise Refused(f"the backup to rehearse on failed: {exc}") from None
    result.backup_taken = True
    return item


def rehearse(name: str, env: Environment, store, *, target: str = "head", backup_id: int | str | None = None,
             actor: str = "runbook-bot", run_id: str | None = None, project: AlembicProject | None = None,
             settings: Any = None, on_phase: Callable[[str], None] | None = None,
             log_dir: Path | None = None, start: Sequence[str] | None = None,
             sample_locks: bool = True) -> Rehearsal:
    """Rehearse `name`'s pending range up to `target` on a restored copy (see the module). Never raises for
    the target's or the copy's faults: the outcome and error say it. `start`: rehearse from this revision
    instead of the one `name` is at, on a copy of a verified full backup taken there (what a rollback
    to `start` matches: the rehearsal of `start` -> `target`, whose way down is the rollback).
    `sample_locks=False` runs it without the lock sampler (no locks reported): only bench/rehearse.py
    uses it, to measure what sampling costs."""
    from runbook.state.runs import FAILED, REFUSED, SUCCEEDED, Heartbeat, RunStore, new_run_id

    run_id = run_id or new_run_id()
    clock = time.monotonic()
    project = project or project_of(env)
    secret_values = [password_of(env.dsn), password_of(env.rehearsal_dsn), env.dsn, env.rehearsal_dsn]
    result = Rehearsal(run_id=run_id, environment=name, scratch=scratch_name(run_id),
                       server=describe(env.rehearsal_dsn), target=target)
    runs = RunStore(store)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d_%H%M%S")
    where = log_dir or migrate.default_log_dir(env)
    try:
        log = migrate.RunLog(where / f"rehearse_{name}_{stamp}_{run_id}.log", secret_values)
    except OSError as exc:
        result.error = f"cannot write the rehearsal's log in {where}: {exc.strerror or type(exc).__name__}"
        return result
    result.log_path = str(log.path)
    runs.start(kind=KIND, environment=name, actor=actor, target_revision=target, run_id=run_id,
               details={"scratch": result.scratch, "server": result.server})
    runs.set_log_path(run_id, str(log.path))

    def phase(text: str) -> None:
        log.write(text)
        if on_phase is not None:
            try:
                on_phase(text)
            except Exception as exc:  # a Slack hiccup must not stop the rehearsal
                log.write(f"progress callback failed: {type(exc).__name__}")

    beat = Heartbeat(runs, run_id)
    beat.__enter__()
    try:
        if settings is not None:
            for dropped in drop_leftovers(settings, store, [name]):
                log.write(f"dropped a leftover rehearsal database {dropped}")
        _rehearse(result, name, env, store, project, target, backup_id, actor, run_id, log, phase, beat, start,
                  sample_locks)
    except Refused as exc:
        result.outcome, result.error = "refused", log.scrub(str(exc))
    except Exception as exc:  # last resort: recorded, one redacted line
        result.outcome = "error"
        result.error = log.scrub(one_line(f"{type(exc).__name__}: {exc}"))
    finally:
        beat.__exit__(None, None, None)
        result.total_seconds = time.monotonic() - clock
        summary = log.scrub(summary_line(result))
        log.write(summary)
        log.close()
        state = {"passed": SUCCEEDED, "nothing to do": SUCCEEDED, "refused": REFUSED}.get(result.outcome, FAILED)
        try:
            runs.finish(run_id, state, summary=summary, result=to_json(result))
        except Exception:
            pass
        try:
            store.record(actor=actor, action=KIND, environment=name, outcome=result.outcome, summary=summary,
                         details={"backup_id": result.backup_id, "from": result.from_revisions,
                                  "to": result.target, "files": result.files, "run_id": run_id,
                                  "lines": [revision_line(r) for r in result.revisions if r.ok or r.error]},
                         run_id=run_id)
        except Exception:
            pass
    return result


def _rehearse(result: Rehearsal, name: str, env: Environment, store, project: AlembicProject, target: str,
              backup_id, actor: str, run_id: str, log: migrate.RunLog, phase, beat,
              start: Sequence[str] | None = None, sample_locks: bool = True) -> None:
    from runbook import validate

    tgt = target_of(env)
    try:      # the target is only read: its revision and its size
        with tgt.connect("rehearse") as conn:
            at_now = project.current(conn)
            size = int(conn.execute("SELECT pg_database_size(current_database())").fetchone()[0])
    except (TargetError, RevisionError) as exc:
        raise Refused(str(exc)) from None
    current = list(start) if start is not None else at_now
    result.from_revisions = list(current)
    try:
        the_plan = migrate.plan(project, current, "upgrade", target, True)
    except RevisionError as exc:
        raise Refused(str(exc)) from None
    result.target = the_plan.target
    beat.runs.set_revisions(run_id, ", ".join(current) or "base", the_plan.target)
    if not the_plan.revisions:
        result.outcome = "nothing to do"
        result.error = f"nothing to rehearse: {name} is already at {', '.join(current) or 'base'}"
        return
    result.files = file_hashes(the_plan.revisions)
    result.revisions = [RevisionReport(r.revision, r.message, reversible=r.reversible,
                                       irreversible_reason=r.irreversible_reason) for r in the_plan.revisions]

    admin = Target(env.rehearsal_dsn, connect_timeout=env.connect_timeout_seconds)
    same_server = env.rehearsal.server_url is None
    free, how = _free_disk(admin, same_server)
    if free is None:
        result.notes.append(f"free disk not checked: {how}")
    elif free < size + env.rehearsal.disk_margin:
        raise Refused(f"{human_size(free)} {how}, below the copy's {human_size(size)} plus the margin of "
                      f"{human_size(env.rehearsal.disk_margin)} (rehearsal.disk_margin): not restored")

    beat.set_step("backup")
    phase("choosing the backup to restore")
    item = _choose_backup(name, env, store, current, backup_id, actor, result,
                          may_take=sorted(current) == sorted(at_now))
    result.backup_id = item.id
    beat.set_step("restore")
    phase(f"restoring backup #{item.id} into {result.scratch} on {result.server}")
    restore_started = time.monotonic()
    try:
        copy_cm = backups.restored_copy(name, env, store, item.id, server_dsn=env.rehearsal_dsn, dbname=result.scratch,
                                        statement_timeout=env.rehearsal.statement_timeout, jobs=1)
        copy = copy_cm.__enter__()
    except backups.BackupError as exc:
        result.outcome, result.error = "error", log.scrub(str(exc))
        return
    try:
        result.restore_seconds = time.monotonic() - restore_started
        log.write(f"restored in {result.restore_seconds:.1f} s")
        copy_url = url_with_database(env.rehearsal_dsn, result.scratch)
        copy_env = env.model_copy(update={"database_url": SecretStr(copy_url)})
        _on_copy(result, name, env, copy_env, copy, copy_url, project, the_plan, run_id, log, phase, beat, validate,
                 sample_locks)
    except TargetError as exc:
        result.outcome, result.error = "error", log.scrub(str(exc))
    finally:
        beat.set_step("dropping the copy")
        copy_cm.__exit__(None, None, None)
        log.write(f"dropped {result.scratch}")


def url_with_database(url: str, dbname: str) -> str:
    """`url` (postgresql://...) naming database `dbname` instead: what the app's env.py reads."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + quote(dbname)))


def _on_copy(result: Rehearsal, name: str, env: Environment, copy_env: Environment, copy: Target, copy_url: str,
             project: AlembicProject, the_plan: migrate.Plan, run_id: str, log: migrate.RunLog, phase, beat,
             validate, sample_locks: bool = True) -> None:
    version_table = "alembic_version"
    statement_timeout = env.rehearsal.statement_timeout
    with copy.connect("rehearse-monitor", statement_timeout=statement_timeout) as monitor:
        sup = migrate.Supervisor(name=name, env=env, run_id=run_id, direction="upgrade", monitor=monitor, log=log,
                                 timeout_seconds=env.migration.timeout_seconds, started=time.monotonic())
        env_vars = migrate.alembic_environment(env, copy_url, sup.app_name, monitor.info.server_version)
        scratch_run = migrate.MigrationResult(run_id=run_id, environment=name, direction="upgrade",
                                              outcome="failed", target=the_plan.target,
                                              from_revisions=list(result.from_revisions), to_revisions=[])
        baseline = validate.take_baseline(monitor, copy_env)
        sampler = LockSampler(copy, sup.app_name, env.rehearsal.lock_sample_ms / 1000.0)
        phase("reviewing the risk of the revisions on the copy")
        reviewed = _review_on_copy(name, copy_env, monitor, project, the_plan.revisions, result)
        no_event = lambda *args, **kwargs: None      # noqa: E731 - the rehearsal records one event, at the end

        def step(direction: str, to: str, expected: list[str]) -> migrate.StepResult:
            sup.direction = direction
            scratch_run.error = None
            return migrate.run_step(sup, result=scratch_run, project=project, direction=direction, step=to,
                                    expected_after=expected, env_vars=env_vars, event=no_event,
                                    backoff_seconds=env.migration.retry_backoff_seconds)

        # up, one revision at a time, measured
        failed = False
        for index, report in enumerate(result.revisions, 1):
            beat.set_step(f"upgrade {report.revision} ({index}/{len(result.revisions)})")
            phase(f"upgrade {report.revision}")
            before = _tables(monitor)
            with sampler if sample_locks else contextlib.nullcontext():
                done = step("upgrade", report.revision, [report.revision])
            after = _tables(monitor)
            report.seconds, report.ok = done.seconds, done.ok
            report.error = done.error
            report.locks = sampler.locks(monitor, before.oids, version_table)
            if sampler.error:
                result.notes.append(f"lock sampling failed during {report.revision}: {sampler.error}")
            _compare(report, before, after, monitor, version_table)
            report.risk_checks = risk_checks(reviewed.get(report.revision), report, env.rehearsal.lock_sample_ms)
            log.write(revision_line(report))
            if not done.ok:
                failed = True
                result.error = f"{report.revision} failed: {done.error}"
                break
        if not failed:
            beat.set_step("validating")
            phase("validating the copy (§5)")
            tables, indexes = [], []
            try:
                preview = project.sql_preview(copy_url, result.from_revisions, the_plan.target)
                tables, indexes = validate.tables_in_sql(preview), validate.indexes_in_sql(preview)
            except RevisionError as exc:
                log.write(f"no SQL preview, so no table list from it: {exc}")
            result.validation = validate.validate(name, copy_env, expected=[the_plan.target], baseline=baseline,
                                                  touched_tables=tables, expected_indexes=indexes,
                                                  app_checks=False, project=project)
        # down, revision by revision, from wherever the way up stopped
        applied = [r for r in result.revisions if r.ok]
        down_ok = True
        for report in reversed(applied):
            if not report.reversible:
                result.notes.append(f"{report.revision} is irreversible ({report.irreversible_reason}): the way "
                                    "down stops there")
                down_ok = False
                break
            rev = project.get(report.revision)
            to = rev.down_revisions[0] if rev.down_revisions else "base"
            beat.set_step(f"downgrade {report.revision}")
            phase(f"downgrade {report.revision}")
            done = step("downgrade", to, [] if to == "base" else [to])
            report.downgrade_ok, report.downgrade_seconds = done.ok, done.seconds
            report.downgrade_error = done.error
            if not done.ok:
                down_ok = False
                result.error = result.error or f"the downgrade of {report.revision} failed: {done.error}"
                break
        # up again from wherever the way down stopped (up-down-up)
        if not failed and any(r.downgrade_ok for r in result.revisions):
            beat.set_step("upgrade again")
            phase(f"upgrade again to {the_plan.target}")
            done = step("upgrade", the_plan.target, [the_plan.target])
            result.upgrade_again_ok = done.ok
            if not done.ok:
                result.error = result.error or f"the second upgrade failed: {done.error}"
        if failed or any(r.downgrade_ok is False for r in result.revisions) or result.upgrade_again_ok is False:
            result.outcome = "failed"
        elif result.validation is not None and not result.validation.passed:
            result.outcome = "failed"
            result.error = "validation failed on the copy: " + ", ".join(c.name for c in result.validation.failed)
        else:
            result.outcome = "passed"
        del down_ok


# ---------------------------------------------------------------------------
# Text and JSON


def revision_line(report: RevisionReport) -> str:
    return revision_line_json(_revision_json(report))


def summary_line(result: Rehearsal) -> str:
    frm = ", ".join(result.from_revisions) or "base"
    text = f"rehearsal of {result.environment} {frm} -> {result.target}: {result.outcome}"
    if result.error and result.outcome != "passed":
        text += f": {result.error}"
    return text


def _revision_json(r: RevisionReport) -> dict[str, Any]:
    return {"revision": r.revision, "message": r.message, "ok": r.ok, "seconds": round(r.seconds, 3),
            "error": r.error,
            "locks": [{"relation": lock.relation, "mode": lock.mode, "held_seconds": lock.held_seconds}
                      for lock in r.locks],
            "rewrites": list(r.rewrites), "size_change_bytes": r.size_change_bytes,
            "size_by_table": dict(r.size_by_table), "rows_changed": dict(r.rows_changed),
            "wal_bytes": r.wal_bytes, "reversible": r.reversible, "irreversible_reason": r.irreversible_reason,
            "downgrade_ok": r.downgrade_ok,
            "downgrade_seconds": None if r.downgrade_seconds is None else round(r.downgrade_seconds, 3),
            "downgrade_error": r.downgrade_error,
            "risk_checks": [{"rule": c.rule, "finding": c.finding, "rated": c.rated, "measured": c.measured,
                             "verdict": c.verdict} for c in r.risk_checks]}


def to_json(result: Rehearsal) -> dict[str, Any]:
    """The `rehearse --json` contract, and what the run row keeps (latest_for reads it back)."""
    from runbook import validate

    return {"run_id": result.run_id, "environment": result.environment, "outcome": result.outcome,
            "error": result.error, "backup_id": result.backup_id, "backup_taken": result.backup_taken,
            "server": result.server, "scratch": result.scratch, "from": list(result.from_revisions),
            "to": result.target, "files": dict(result.files),
            "revisions": [_revision_json(r) for r in result.revisions],
            "upgrade_again_ok": result.upgrade_again_ok,
            "validation": validate.report_to_json(result.validation) if result.validation is not None else None,
            "notes": list(result.notes), "restore_seconds": round(result.restore_seconds, 3),
            "total_seconds": round(result.total_seconds, 3), "started_at": result.started_at.isoformat(),
            "log_path": result.log_path}


def render_text(result: Rehearsal) -> str:
    """The terminal report: one line per revision, then the validation and the notes."""
    lines = [summary_line(result)]
    if result.backup_id is not None:
        lines.append(f"copy: backup #{result.backup_id}" + (" (taken for it)" if result.backup_taken else "")
                     + f" restored into {result.scratch} on {result.server} in {_seconds(result.restore_seconds)}"
                     " (dropped)")
    for report in result.revisions:
        if report.ok or report.error:
            lines.append("  " + revision_line(report))
            lines += ["    risk: " + check_line(c) for c in _revision_json(report)["risk_checks"]]
    if result.upgrade_again_ok is not None:
        lines.append("  up again: " + ("ok" if result.upgrade_again_ok else "FAILED"))
    if result.validation is not None:
        failed = result.validation.failed
        lines.append("  validation (§5, on the copy): " + ("passed" if not failed else
                                                           "FAILED: " + "; ".join(f"{c.name}: {c.detail}"
                                                                                  for c in failed)))
    lines += [f"  note: {note}" for note in result.notes]
    lines.append(f"total {_seconds(result.total_seconds)}")
    return "\n".join(lines)


__all__ = ["KIND", "LockHeld", "LockSampler", "Match", "Refused", "Rehearsal", "RevisionReport", "RiskCheck",
           "SCRATCH_PREFIX", "check_line", "risk_checks",
           "drop_leftovers", "drop_scratch_of", "file_hashes", "latest_for", "match_in_events", "match_line", "rehearse",
           "render_text", "revision_line", "scratch_name", "summary_line", "to_json"]
