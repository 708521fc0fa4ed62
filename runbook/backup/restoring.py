"""Restoring a verified backup (§6.2 full, §6.3 tables) in one psql transaction under the operation
lock: archive checked, revision still as approved, a safety backup taken, the restore piped in,
recorded as a run of kind "restore"."""
from __future__ import annotations

import dataclasses
import subprocess
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable, Sequence

import psycopg
from psycopg import sql

from runbook import guard
from runbook.backup.catalogue import _load, _update, get_backup
from runbook.backup.dump import backup
from runbook.backup.environment import _operation_lock, project_of, target_of, tools_for
from runbook.backup.introspect import (OWNED_SEQUENCES_SQL, _count_rows, _created_since, _definition_refusals,
                                       _foreign_keys, _parents_first, _partitioned_refusal, _partitioned_tables,
                                       _user_tables)
from runbook.backup.model import Backup, BackupError, CatalogObject, ProgressCallback, RestoreResult, VIEW_KINDS
from runbook.backup.names import _ident, _plain, _split
from runbook.backup.progress import _Ticker
from runbook.backup.restore_plan import _restorable, _restore_tables
from runbook.backup.tools import _first_error, _read_tmp
from runbook.config import Environment
from runbook.pgtools import Tools, client_env, conninfo_without_password
from runbook.revisions import AlembicProject
from runbook.storage import CHUNK, Storage, StorageError
from runbook.target import Target, TargetError
from runbook.tether import tethered


# A restore run's step (runs.step, shown when it is interrupted) for each phase of the restore.
RESTORE_STEPS = {"lock": "taking the operation lock", "fetch": "checking the archive",
                 "safety backup": "safety backup", "restore": "restore"}


def restore(name: str, env: Environment, store, backup_id: int | str, *, expected_revision: Sequence[str],
            tables: Sequence[str] = (), actor: str = "runbook-bot", progress: ProgressCallback | None = None,
            progress_every: float = 1.0, lock: guard.Held | None = None, approval_id: str | None = None,
            run_id: str | None = None) -> RestoreResult:
    """Restore a verified backup (§6.2 full with --clean --if-exists, §6.3 chosen tables), in one
    transaction: it applies completely or not at all.

    In order, all under the operation lock: the archive exists and its sha256 matches; the
    target's Alembic revision is still `expected_revision` (what the approvers saw); a safety
    backup of the current state is taken and catalogued (reason "safety"); the restore runs;
    the revision and row counts after are read back. Any refusal before the restore step
    changes nothing. Raises BackupError.

    Once the backup and tables are known good it is recorded as a run of kind "restore" (`run_id`,
    with a heartbeat and its phase as the step, `approval_id` the request it ran for), so a restore
    whose process dies is found interrupted at the next start, like a migration."""
    from runbook import protection
    from runbook.state.runs import FAILED, SUCCEEDED, Heartbeat, RunStore

    item = get_backup(store, name, backup_id)
    _restorable(item)
    mode, chosen = _restore_tables(item, tables)
    target = target_of(env)
    storage = Storage(env.backups)
    started = time.monotonic()
    expected = list(expected_revision)
    runs = RunStore(store)
    run = runs.start(kind="restore", environment=name, actor=actor, approval_id=approval_id, run_id=run_id,
                     from_revision=", ".join(expected), target_revision=", ".join(item.revision or []),
                     details={"backup_id": item.id, "mode": mode, "tables": list(chosen)})
    facts = {"run_id": run.id, "backup_id": item.id, "mode": mode, "tables": list(chosen),
             "target": ", ".join(item.revision or []), "from": expected}   # text, as a migration's target
    with Heartbeat(runs, run.id) as beat:
        beat.set_step(RESTORE_STEPS["lock"])
        try:
            with _operation_lock(target, name, "restore", lock) as held:
                result = _restore_locked(name, env, store, target, storage, held, item, mode, chosen,
                                         expected_revision=expected, actor=actor, progress=progress,
                                         progress_every=progress_every, started=started,
                                         on_phase=lambda phase: beat.set_step(RESTORE_STEPS.get(phase, phase)),
                                         on_safety=lambda safety: protection.remember(store, run.id, safety))
        except (BackupError, TargetError) as exc:
            error = str(exc)
            # one transaction: a restore that failed left the revision where it was
            runs.finish(run.id, FAILED, summary=error, result={**facts, "outcome": FAILED, "error": error,
                                                                "to": expected})
            if isinstance(exc, TargetError):
                raise BackupError(error) from None
            raise
        except BaseException as exc:     # recorded on the run, so its failure is followed up like any other
            error = f"the restore failed unexpectedly ({type(exc).__name__})"
            runs.finish(run.id, FAILED, summary=error, result={**facts, "outcome": FAILED, "error": error,
                                                                "to": None})
            raise
    summary = (f"backup #{item.id} restored into {name}, now at revision {', '.join(result.revision_after) or 'none'}; "
               f"safety backup #{result.safety_backup.id}")
    runs.finish(run.id, SUCCEEDED, summary=summary, result={
        **facts, "outcome": SUCCEEDED, "error": None, "from": result.revision_before, "to": result.revision_after,
        "revision_before": result.revision_before, "revision_after": result.revision_after,
        "row_counts_after": result.row_counts_after,
        "mismatches": {t: list(v) for t, v in result.mismatches.items()},
        "safety_backup_id": result.safety_backup.id, "duration_seconds": result.duration_seconds})
    return dataclasses.replace(result, run_id=run.id)


def _restore_locked(name: str, env: Environment, store, target: Target, storage: Storage, held: guard.Held,
                    item: Backup, mode: str, chosen: list[str], *, expected_revision: list[str], actor: str,
                    progress: ProgressCallback | None, progress_every: float, started: float,
                    on_phase: Callable[[str], None], on_safety: Callable[[Backup], None]) -> RestoreResult:
    state: dict[str, Any] = {"bytes": 0, "pid": None, "phase": "fetch", "on_phase": on_phase,
                             "on_safety": on_safety}
    on_phase("fetch")

    def measure() -> tuple[int, str, int | None, int | None]:
        return state["bytes"], state["phase"], item.id, state["pid"]

    def moved(n: int) -> None:
        state["bytes"] += n

    project = project_of(env)
    with _Ticker(progress, progress_every, started, measure), ExitStack() as stack:
        try:
            # for URL storage: a staged download, kept until the restore has read it
            path, digest = stack.enter_context(
                storage.fetch(item.location, directory=item.format == "directory", on_bytes=moved))
        except StorageError as exc:
            raise BackupError(f"{exc}: nothing was restored") from None
        if digest != item.sha256:
            raise BackupError(f"checksum mismatch on backup {item.id}: the archive changed since it was verified "
                              f"(sha256 {digest[:12]}…, catalogue {(item.sha256 or '?')[:12]}…); "
                              "nothing was restored")
        revision_before, safety = _restore_archive(name, env, store, target, held, item, mode, chosen, path,
                                                   expected_revision=expected_revision, actor=actor,
                                                   project=project, state=state)
    with target.connect("restore", statement_timeout="0") as conn:
        revision_after = project.current(conn)
        counts_after = _count_rows(conn, chosen if mode == "tables" else _user_tables(conn))
    mismatches = {t: (item.row_counts.get(t), counts_after.get(t)) for t in chosen
                  if t in item.row_counts and item.row_counts.get(t) != counts_after.get(t)}
    return RestoreResult(environment=name, backup=item, safety_backup=_load(store, safety.id), mode=mode,
                         tables=chosen, revision_before=revision_before, revision_after=revision_after,
                         row_counts_after=counts_after, mismatches=mismatches,
                         duration_seconds=round(time.monotonic() - started, 3))


def _enter_phase(state: dict[str, Any], phase: str) -> None:
    state["phase"] = phase
    state["on_phase"](phase)


def _restore_archive(name: str, env: Environment, store, target: Target, held: guard.Held, item: Backup,
                     mode: str, chosen: list[str], path: Path, *, expected_revision: list[str], actor: str,
                     project: AlembicProject, state: dict[str, Any]) -> tuple[list[str], Backup]:
    """The revision check, the safety backup, the restore itself: (revision before, safety backup)."""
    with target.connect("restore", statement_timeout="120s") as conn:
        tools = tools_for(conn, env, name)
        revision_before = project.current(conn)
        existing = _user_tables(conn)
        parents = _partitioned_tables(conn)
        fks = _foreign_keys(conn)
        sequences = {t: [r[0] for r in conn.execute(OWNED_SEQUENCES_SQL, [_ident(t).as_string(conn)])]
                     for t in chosen if t in existing}
        definitions = _definition_refusals(conn, item, [t for t in chosen if t in existing], revision_before, name) \
            if mode == "tables" else []
    if sorted(revision_before) != sorted(expected_revision):
        raise BackupError(f"the revision of {name} changed since the restore was requested (was "
                          f"{', '.join(expected_revision) or 'none'}, now {', '.join(revision_before) or 'none'}): "
                          "nothing was restored; ask again")
    if tools.pg_restore.major < int(str(item.tool_version or "0").split(".")[0]):
        raise BackupError(f"pg_restore {tools.pg_restore.version} cannot read an archive written by pg_dump "
                          f"{item.tool_version}: set pg_bin_dir to a newer PostgreSQL client")
    if mode == "tables":
        refusal = _partitioned_refusal(chosen, parents, item)
        if refusal:
            raise BackupError(f"{refusal}; nothing was restored")
        gone = [t for t in chosen if t not in existing]
        if gone:
            raise BackupError(f"{', '.join(_plain(t) for t in gone)} no longer exist(s) in {name}: "
                              "a table restore replaces rows only; nothing was restored")
        if definitions:
            raise BackupError(f"{definitions[0]}; nothing was restored")
        for src, ref, conname, deltype in fks:
            if ref in chosen and src not in chosen and deltype in ("c", "n", "d"):
                raise BackupError(f"{_plain(src)} references {_plain(ref)} with a cascading delete "
                                  f"({conname}): restore both tables together; nothing was restored")

    _enter_phase(state, "safety backup")
    try:
        safety = backup(name, env, store, kind="tables" if mode == "tables" else "full",
                        tables=chosen if mode == "tables" else (), verify="full", actor=actor,
                        reason="safety", lock=held, project=project)
    except BackupError as exc:
        raise BackupError(f"the safety backup failed ({exc}): nothing was restored") from None
    _update(store, safety.id, details={**safety.details, "before_restore_of": item.id})
    state["on_safety"](safety)

    _enter_phase(state, "restore")
    state["bytes"] = 0
    extras = [t for t in [*existing, *parents] if t not in item.tables] if mode == "full" else []
    with target.connect("restore", statement_timeout="120s") as conn:
        later = _created_since(conn, item) if mode == "full" else []
        prologue = _restore_prologue(conn, env, mode, chosen, existing, extras, later, fks)
    problem = _pipe_restore(tools, env, path, mode, chosen, sequences, fks, prologue, state)
    if problem and "lock timeout" in problem:
        problem = (f"other sessions kept the tables locked for longer than lock_wait_timeout "
                   f"({env.backups.lock_wait_timeout}): stop the application first (§6.2 step 1) — {problem}")
    if problem:
        raise BackupError(f"the restore failed and was rolled back, {name} is unchanged "
                          f"(safety backup {safety.id}): {target.scrub(problem)}")
    return revision_before, safety


def _restore_prologue(conn: psycopg.Connection, env: Environment, mode: str, chosen: list[str],
                      existing: list[str], extras: list[str], later: Sequence[CatalogObject],
                      fks: Sequence[tuple[str, str, str, str]]) -> str:
    """The SQL that opens the restore's transaction: a bounded wait for the locks, then what
    pg_restore's own script does not do (drop what the backup lacks: views, tables, then the rest of
    `later` in its order; or empty the tables it refills)."""
    lines = [f"SET lock_timeout = {sql.Literal(env.backups.lock_wait_timeout).as_string(conn)};", "BEGIN;"]
    present = [t for t in (chosen if mode == "tables" else existing)]
    if present:
        # pg_restore's script sets lock_timeout = 0: take every lock now, while ours still bounds the wait
        lines.append(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE;").format(
            sql.SQL(", ").join(_ident(t) for t in present)).as_string(conn))
    if mode == "full":
        lines += [o.drop(conn) for o in later if o.kind in VIEW_KINDS]
        for table in extras:
            lines.append(sql.SQL("DROP TABLE IF EXISTS {} CASCADE;").format(_ident(table)).as_string(conn))
        lines += [o.drop(conn) for o in later if o.kind not in VIEW_KINDS]
    else:
        for table in reversed(_parents_first(chosen, fks)):
            lines.append(sql.SQL("DELETE FROM {};").format(_ident(table)).as_string(conn))
    return "\n".join(lines) + "\n"


def _pipe_restore(tools: Tools, env: Environment, archive: Path, mode: str, chosen: list[str],
                  sequences: dict[str, list[str]], fks: Sequence[tuple[str, str, str, str]], prologue: str,
                  state: dict[str, Any]) -> str | None:
    """prologue + pg_restore's script(s) + COMMIT into one psql with ON_ERROR_STOP: psql stops at
    the first error, before COMMIT, so the target is left as it was. None on success. Both tools are
    tethered to this process (runbook/tether.py): a killed bot's psql must not go on to COMMIT a script
    already sitting in its pipe, unsupervised, after the run was marked interrupted."""
    conninfo, password = conninfo_without_password(env.dsn, purpose="pg_restore")
    if mode == "full":
        scripts = [[str(tools.pg_restore.path), "--clean", "--if-exists", "--file=-", str(archive)]]
    else:
        scripts = []
        for table in _parents_first(chosen, fks):
            schema, name = _split(table)
            argv = [str(tools.pg_restore.path), "--data-only", f"--schema={schema}", f"--table={name}"]
            argv += [f"--table={seq}" for seq in sequences.get(table, [])]
            scripts.append(argv + ["--file=-", str(archive)])
    with client_env(password) as tool_env, tempfile.TemporaryFile() as psql_err, \
            tempfile.TemporaryFile() as restore_err:
        psql = subprocess.Popen(tethered([str(tools.psql.path), "-X", "-q", "--no-password", "-v", "ON_ERROR_STOP=1",
                                          f"--dbname={conninfo}"]), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                stderr=psql_err, env=tool_env)
        state["pid"] = psql.pid
        broken = False
        failed_tool: str | None = None
        try:
            psql.stdin.write(prologue.encode())
            for argv in scripts:
                producer = subprocess.Popen(tethered(argv), stdout=subprocess.PIPE, stderr=restore_err,
                                            stdin=subprocess.DEVNULL, env=tool_env)
                try:
                    while chunk := producer.stdout.read1(CHUNK):
                        psql.stdin.write(chunk)
                        state["bytes"] += len(chunk)
                finally:
                    producer.stdout.close()
                    if producer.wait() != 0 and failed_tool is None:
                        failed_tool = "pg_restore"
                if failed_tool:
                    break
            if failed_tool is None:
                psql.stdin.write(b"COMMIT;\n")
        except BrokenPipeError:
            broken = True          # psql stopped at an error: its stderr says which
        finally:
            try:
                psql.stdin.close()
            except BrokenPipeError:
                pass
            rc = psql.wait()
        if failed_tool:
            # psql saw no COMMIT: closing its input ended the session and rolled everything back
            return f"pg_restore: {_first_error(_read_tmp(restore_err), 'pg_restore')}"
        if rc != 0 or broken:
            return f"psql: {_first_error(_read_tmp(psql_err), 'psql')}"
    return None
