"""Backups and restores (§2, §6.2–6.4) with the real pg_dump/pg_restore/psql against the embedded server.

Every fault leaves: one clear line, no half-written file on disk or restorable entry in the
catalogue, and the target as it was.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest

from runbook import backup as engine
from runbook import guard
from runbook.backup import BackupError, BackupFailed
from runbook.backup import tools as backup_tools
from runbook.precheck import run_precheck
from runbook.state import Store
from runbook.storage import sha256_directory
from runbook.target import Target
from tests.support.configs import settings_for, with_password
from tests.support.sample_app import REV_0001, REV_0003, upgrade
from tests.support.sessions import Sessions
from tests.support.waiting import wait_for

PASSWORD = "Backup-Db-Passw0rd:x\\y"


# ---------------------------------------------------------------------------
# helpers


def environment(tmp_path: Path, url: str, bin_dir: Path | None, **backups):
    """(name, env, store) for `url` with the given backups settings (dir defaults to tmp_path/backups)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    settings = settings_for(tmp_path, url)
    name, env = settings.environment(None)
    current = env.backups.model_dump()
    current.update(backups)
    env = env.model_copy(update={"backups": type(env.backups).model_validate(current), "pg_bin_dir": bin_dir})
    store = Store(settings.state_url)
    store.migrate()
    return name, env, store


def rows(url: str, table: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()


def counts(url: str, *tables: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables}


def tables_of(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return [r[0] for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1").fetchall()]


def files_in(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def scratch_databases(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return [r[0] for r in conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE 'runbook_bot_verify_%'").fetchall()]


def add_random_bytes(url: str, megabytes: int) -> None:
    """Incompressible rows: the dump is about as large as the data, and takes a while to write."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE blobs (id int PRIMARY KEY, payload bytea)")
        conn.execute(
            "INSERT INTO blobs SELECT g, (SELECT string_agg(decode(md5(random()::text || g || i), 'hex'), ''::bytea)"
            "  FROM generate_series(1, 64) i) FROM generate_series(1, %s) g", [megabytes * 1024 * 1024 // 1024])


def fingerprint(url: str) -> dict:
    """Everything a failed operation must leave unchanged in the target."""
    with psycopg.connect(url) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1").fetchall()]
        return {t: conn.execute(f"SELECT md5(string_agg(t::text, ',' ORDER BY t::text)) FROM {t} t").fetchone()[0]
                for t in tables}


def run(url: str, *statements: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


def value(url: str, query: str):
    with psycopg.connect(url) as conn:
        return conn.execute(query).fetchone()[0]


# ---------------------------------------------------------------------------
# backups and the ladder


def test_full_backup_is_verified_catalogued_and_named_like_the_runbook(sample_db, pg_bin_dir, tmp_path):
    url = sample_db("head")
    name, env, store = environment(tmp_path, url, pg_bin_dir)
    made = engine.backup(name, env, store, actor="cli:ops")
    assert re.fullmatch(r"backup_\d{8}_\d{6}\.dump", made.name)
    path = Path(made.location)
    assert path.parent == tmp_path / "backups" and path.is_file()
    assert made.status == "verified" and made.level == "full" and made.restorable
    assert made.kind == "full" and made.format == "custom" and made.reason == "manual" and made.actor == "cli:ops"
    assert made.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert made.size_bytes == path.stat().st_size
    assert made.server_version.startswith("16") and made.tool_version.startswith("16")
    assert made.revision == [REV_0003]
    assert made.row_counts == {f"public.{t}": n for t, n in counts(
        url, "expenses", "incomes", "categories", "alembic_version").items()}
    assert made.tables == ["public.alembic_version", "public.categories", "public.expenses", "public.incomes"]
    assert made.duration_seconds > 0 and made.finished_at >= made.started_at
    assert files_in(tmp_path / "backups") == [made.name]          # no partial file left behind
    assert [b.id for b in engine.list_backups(store, name)] == [made.id]
    assert engine.last_backup_at(store, name) == made.finished_at
    # the archive is a real custom-format dump holding the rows
    listing = subprocess.run([str(pg_bin_dir / "pg_restore"), "--list", str(path)], capture_output=True, text=True)
    assert "TABLE DATA public expenses" in listing.stdout


def test_schema_only_backup_is_plain_sql_and_verified_by_restoring_it(sample_db, pg_bin_dir, tmp_path, pg_server):
    url = sample_db("head")
    name, env, store = environment(tmp_path, url, pg_bin_dir)
    made = engine.backup(name, env, store, kind="schema", verify="restore")
    assert re.fullmatch(r"schema_backup_\d{8}_\d{6}\.sql", made.name)
    text = Path(made.location).read_text()
    assert "CREATE TABLE public.expenses" in text and "COPY public.expenses" not in text
    assert made.format == "plain" and made.level == "restore" and made.status == "verified"
    assert not made.restorable                                     # a reference, never restored by the bot
    assert scratch_databases(pg_server.admin_url) == []


def test_table_backup_holds_only_the_tables_asked_for(sample_db, pg_bin_dir, tmp_path):
    url = sample_db("head")
    name, env, store = environment(tmp_path, url, pg_bin_dir)
    made = engine.backup(name, env, store, kind="tables", tables=["expenses", "public.incomes"])
    assert re.fullmatch(r"tables_backup_\d{8}_\d{6}\.dump", made.name)
    assert made.tables == ["public.expenses", "public.incomes"]
    assert set(made.row_counts) == {"public.expenses", "public.incomes"}
    listing = subprocess.run([str(pg_bin_dir / "pg_restore"), "--list", made.location],
                             capture_output=True, text=True).stdout
    assert "TABLE DATA public expenses" in listing and "TABLE DATA public categories" not in listing


def test_a_partitioned_table_is_catalogued_by_its_names_only(sample_db, pg_bin_dir, tmp_path):
    url = sample_db("head")
    name, env, store = environment(tmp_path, url, pg_bin_dir)
    run(url, "CREATE TABLE readings (day date, v int) PARTITION BY RANGE (day)",
        "CREATE TABLE readings_2026 PARTITION OF readings FOR VALUES FROM ('2026-01-01') TO ('2027-01-01')")
    made = engine.backup(name, env, store)              # its TOC also says "TABLE ATTACH public readings_2026"
    assert made.tables == ["public.alembic_version", "public.categories", "public.expenses", "public.incomes",
                           "public.readings", "public.readings_2026"]


@pytest.mark.parametrize("tables, expected", [
    (["nope"], "unknown table 'nope' in production; tables: alembic_version, categories, expenses, incomes"),
    (["expenses; DROP TABLE incomes"], "'expenses; DROP TABLE incomes' is not a table name"),
    (["other.expenses"], "unknown table 'other.expenses'"),
])
def test_unknown_or_malformed_table_is_refused_before_anything_runs(sample_db, pg_bin_dir, tmp_path, tables, expected):
    url = sample_db("head")
    name, env, store = environment(tmp_path, url, pg_bin_dir)
    before = fingerprint(url)
    with pytest.raises(BackupError) as caught:
        engine.backup(name, env, store, kind="tables", tables=tables)
    assert expected in str(caught.value) and "\n" not in str(caught.value)
    assert not isinstance(caught.value, BackupFailed)
    assert engine.list_backups(store, name) == [] and files_in(tmp_path / "backups") == []
    assert fingerprint(url) == before


def test_restore_level_restores_into_a_scratch_database_and_drops_it(sample_db, pg_bin_dir, tmp_path, pg_server):
    url = sample_db("head")
    name, env, store = environment(tmp_path, url, pg_bin_dir, verify="restore")
    made = engine.backup(name, env, store)
    assert made.level == "restore" and made.status == "verified"
    table_only = engine.backup(name, env, store, kind="tables", tables=["expenses"])   # FK to categories: data only
    assert table_only.level == "restore"
    assert scratch_databases(pg_server.admin_url) == []


def test_directory_format_with_parallel_jobs_above_the_configured_size(sample_db, pg_bin_dir, tmp_path):
    url = sample_db("head")
    name, env, store = environment(tmp_path, url, pg_bin_dir, parallel_above_bytes=0, jobs=2)
    made = engine.backup(name, env, store)
    path = Path(made.location)
    assert made.format == "directory" and path.is_dir() and re.fullmatch(r"backup_\d{8}_\d{6}\.dir", made.name)
    assert made.details["jobs"] == 2 and made.level == "full"
    assert made.sha256 == sha256_directory(path)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DELETE FROM incomes")
    plan = engine.plan_restore(name, env, store, made.id)
    engine.restore(name, env, store, made.id, expected_revision=plan.current_revision)
    assert counts(url, "incomes")["incomes"] == made.row_counts["public.incomes"]


def test_a_client_older_than_the_server_is_refused_naming_both_versions(sample_db, tmp_path):
    url = sample_db("head")
    old_bin = Path("/usr/lib/postgresql/15/bin")          # this machine's distribution client is 15
    for bin_dir in (None, old_bin):                       # from PATH, and from pg_bin_dir
        name, env, store = environment(tmp_path, url, bin_dir)
        with pytest.raises(BackupError) as caught:
            engine.backup(name, env, store)
        message = str(caught.value)
        assert re.search(r"pg_dump 15\.\d+ \(.*\) is older than the server \(PostgreSQL 16\.\d+\)", message), message
        assert "set pg_bin_dir of production" in message and "PostgreSQL 16 or newer" in message
        assert engine.list_backups(store, name) == [] and files_in(tmp_path / "backups") == []


def test_the_password_never_reaches_a_command_line_and_the_dump_is_recognisable(sample_db, pg_bin_dir, tmp_path):
    url = sample_db("head")
    name, env, store = environment(tmp_path, with_password(url, PASSWORD), pg_bin_dir)
    seen: dict = {}
    with Sessions(url) as sessions, ThreadPoolExecutor(1) as pool:
        holder = sessions.open(autocommit=False)
        holder.execute("LOCK TABLE incomes IN ACCESS EXCLUSIVE MODE")   # keeps pg_dump waiting, visibly

        def on_progress(progress):
            seen.setdefault("pid", progress.pid)

        running = pool.submit(engine.backup, name, env, store, progress=on_progress, progress_every=0.02)
        pid = wait_for(lambda: seen.get("pid"), 10, what="the pg_dump pid")
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
        environ = Path(f"/proc/{pid}/environ").read_bytes().decode("utf-8", "replace").split("\0")
        with psycopg.connect(url, autocommit=True) as observer:
            dumps = wait_for(lambda: [d for d in engine.dump_in_progress(observer)
                                      if d.application == "runbook-bot/pg_dump"], 10, what="the dump's session")
        holder.rollback()
        made = running.result(timeout=60)
    assert cmdline[0].endswith("pg_dump") and "--lock-wait-timeout=30s" in cmdline
    assert any(a.startswith("--snapshot=") for a in cmdline)
    assert PASSWORD not in "\n".join(cmdline) and "Passw0rd" not in "\n".join(cmdline)
    assert not any(e.startswith("PGPASSWORD=") for e in environ)
    passfile = next(e.split("=", 1)[1] for e in environ if e.startswith("PGPASSFILE="))
    assert not Path(passfile).exists()                               # removed once the dump ended
    assert dumps and made.status == "verified"
    catalogue = json.dumps([b.__dict__ for b in engine.list_backups(store, name)], default=str)
    assert "Passw0rd" not in catalogue
    assert all("Passw0rd".encode() not in p.read_bytes() for p in (tmp_path / "backups").iterdir())


def test_dump_in_progress_sees_anyones_pg_dump(sample_db, pg_bin_dir, tmp_path):
    url = sample_db("head")
    with Sessions(url) as sessions:
        holder = sessions.open(autocommit=False)
        holder.execute("LOCK TABLE expenses IN ACCESS EXCLUSIVE MODE")
        dump = subprocess.Popen([str(pg_bin_dir / "pg_dump"), "--format=custom",
                                 f"--file={tmp_path / 'by-hand.dump'}", f"--dbname={url}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            with psycopg.connect(url, autocommit=True) as observer:
                found = wait_for(lambda: engine.dump_in_progress(observer), 10, what="pg_dump's session")
            assert found[0].application == "pg_dump"
        finally:
            holder.rollback()
            _out, err = dump.communicate(timeout=60)
            assert dump.returncode == 0, err
        with psycopg.connect(url, autocommit=True) as observer:
            assert engine.dump_in_progress(observer) == []


def test_progress_reports_elapsed_and_bytes_while_dumping(pg_url, pg_bin_dir, tmp_path):
    add_random_bytes(pg_url, 24)
    name, env, store = environment(tmp_path, pg_url, pg_bin_dir)
    reports = []
    made = engine.backup(name, env, store, progress=reports.append, progress_every=0.02)
    dumping = [p for p in reports if p.phase == "dump" and p.bytes_written > 0]
    assert dumping, reports
    assert all(p.backup_id == made.id for p in reports)
    assert [p.elapsed for p in reports] == sorted(p.elapsed for p in reports)
    assert max(p.bytes_written for p in dumping) <= made.size_bytes


# ---------------------------------------------------------------------------
# the lock


def test_a_second_operation_on_the_same_target_is_refused(sample_db, pg_bin_dir, tmp_path, monkeypatch):
    url = sample_db("head")
    name, env, store = environment(tmp_path, url, pg_bin_dir)
    made = engine.backup(name, env, store)
    monkeypatch.setattr(guard, "DEFAULT_WAIT_SECONDS", 0.3)
    with guard.exclusive(Target(url), name, "migrate"):
        with pytest.raises(BackupError, match=r"^another migrate is running on production \(pid \d+, \d+ s\); try again"):
            engine.backup(name, env, store)
        plan = engine.plan_restore(name, env, store, made.id)        # looking is allowed
        with pytest.raises(BackupError, match="another migrate is running on production"):
            engine.restore(name, env, store, made.id, expected_revision=plan.current_revision)
    assert [b.id for b in engine.list_backups(store, name)] == [made.id]
    assert engine.backup(name, env, store).status == "verified"      # released on exit


# ---------------------------------------------------------------------------
# faults


def test_a_truncated_dump_is_caught_where_the_runbooks_list_check_passes_it(sample_db, pg_bin_dir, tmp_path):
    url = sample_db("head")
    add_random_bytes(url, 2)                    # data blocks after the TOC, as in any real database
    name, env, store = environment(tmp_path, url, pg_bin_dir)
    made = engine.backup(name, env, store)
    path = Path(made.location)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    runbook_check = subprocess.run([str(pg_bin_dir / "pg_restore"), "--list", str(path)], capture_output=True)
    assert runbook_check.returncode == 0                              # §2.1's check says "verified"
    rechecked = engine.verify_backup(name, env, store, made.id)
    assert rechecked.status == "failed" and rechecked.level == "toc" and not rechecked.restorable
    assert "full read failed" in rechecked.error and "checksum mismatch" in rechecked.error
    before = fingerprint(url)
    for attempt in (lambda: engine.plan_restore(name, env, store, made.id),
                    lambda: engine.restore(name, env, store, made.id, expected_revision=[REV_0003])):
        with pytest.raises(BackupError, match=rf"backup {made.id} is failed .*only verified backups can be restored"):
            attempt()
    assert fingerprint(url) == before


def test_a_checksum_mismatch_is_refused_and_nothing_changes(sample_db, pg_bin_dir, tmp_path):
    url = sample_db("head")
    name, env, store = environment(tmp_path, url, pg_bin_dir)
    made = engine.backup(name, env, store)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DELETE FROM expenses WHERE id % 2 = 0")
    path = Path(made.location)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF                                      # same size, one bit pattern off
    path.write_bytes(bytes(data))
    before = fingerprint(url)
    plan = engine.plan_restore(name, env, store, made.id)
    with pytest.raises(BackupError, match=rf"^checksum mismatch on backup {made.id}: .*nothing was restored$"):
        engine.restore(name, env, store, made.id, expected_revision=plan.current_revision)
    assert fingerprint(url) == before
    assert [b.id for b in engine.list_backups(store, name)] == [made.id]   # no safety backup was even taken


def test_unknown_backup_id_and_missing_file(sample_db, pg_bin_dir, tmp_path):
    url = sample_db("head")
    name, env, store = environment(tmp_path, url, pg_bin_dir)
    with pytest.raises(BackupError, match=r"^unknown backup id 999 for production: see `backups production`"):
        engine.restore(name, env, store, 999, expected_revision=[REV_0003])
    with pytest.raises(BackupError, match=r"^'latest' is not a backup id"):
        engine.plan_restore(name, env, store, "latest")
    made = engine.backup(name, env, store)
    Path(made.location).unlink()
    before = fingerprint(url)
    with pytest.raises(BackupError, match=rf"^the backup file {re.escape(made.location)} is missing: nothing was restored$"):
        engine.restore(name, env, store, made.id, expected_revision=[REV_0003])
    assert fingerprint(url) == before


def test_disk_full_leaves_no_file_and_a_failed_entry(pg_url, pg_bin_dir, tmp_path, monkeypatch):
    add_random_bytes(pg_url, 4)
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)],
                             capture_output=True).returncode == 0
    try:
        if not mounted:
            # no mount here (not root): write the dump to /dev/full, which answers every write with ENOSPC
            # (patched in the module that opens the partial archive: runbook.backup.tools)
            monkeypatch.setattr(backup_tools, "_open_partial", lambda path: open("/dev/full", "wb", buffering=0))
        name, env, store = environment(tmp_path, pg_url, pg_bin_dir, dir=small)
        before = fingerprint(pg_url)
        with pytest.raises(BackupFailed) as caught:
            engine.backup(name, env, store)
        message = str(caught.value)
        assert message.startswith("disk full: no space left in ") and "nothing was kept" in message
        assert caught.value.backup.status == "failed" and not caught.value.backup.restorable
        assert files_in(small) == []
        assert engine.latest_verified(store, name) is None
        assert fingerprint(pg_url) == before
    finally:
        if mounted:
            subprocess.run(["umount", str(small)], check=True)


def test_pg_dump_killed_midway_leaves_no_file(pg_url, pg_bin_dir, tmp_path):
    add_random_bytes(pg_url, 48)
    name, env, store = environment(tmp_path, pg_url, pg_bin_dir)
    killed = []

    def kill_once_it_writes(progress):
        if progress.phase == "dump" and progress.bytes_written > 0 and not killed:
            os.kill(progress.pid, signal.SIGKILL)
            killed.append(progress.bytes_written)

    with pytest.raises(BackupFailed) as caught:
        engine.backup(name, env, store, progress=kill_once_it_writes, progress_every=0.01)
    assert killed
    assert re.fullmatch(r"pg_dump was killed \(SIGKILL\) after [\d.]+ [kM]?B; nothing was kept", str(caught.value))
    failed = engine.list_backups(store, name)
    assert [(b.status, b.restorable) for b in failed] == [("failed", False)]
    assert files_in(tmp_path / "backups") == []


def test_an_unreachable_target_is_one_line_without_the_password(tmp_path, pg_bin_dir):
    name, env, store = environment(tmp_path, f"postgresql://app:{PASSWORD}@127.0.0.1:1/budget", pg_bin_dir)
    for attempt in (lambda: engine.backup(name, env, store),
                    lambda: engine.plan_restore(name, env, store, 1)):
        with pytest.raises(BackupError) as caught:
            attempt()
        assert "\n" not in str(caught.value) and "Passw0rd" not in str(caught.value)
    with pytest.raises(BackupError, match=r"^cannot connect to 127\.0\.0\.1:1/budget"):
        engine.backup(name, env, store)
    assert engine.list_backups(store, name) == []


# ---------------------------------------------------------------------------
# retention


def test_retention_keeps_the_newest_verified_and_never_the_only_one(sample_db, pg_bin_dir, tmp_path):
    url = sample_db("head")
    name, env, store = environment(tmp_path, url, pg_bin_dir, keep=2)
    first, second, third = (engine.backup(name, env, store) for _ in range(3))
    statuses = {b.id: b.status for b in engine.list_backups(store, name)}
    assert statuses == {first.id: "expired", second.id: "verified", third.id: "verified"}
    assert not Path(first.location).exists() and Path(third.location).exists()
    assert engine.backup(name, env, store, kind="schema").status == "verified"   # other kinds are kept apart
    assert Path(second.location).exists()

    # keep=1 and newer failures: the only verified backup stays
    name, env, store = environment(tmp_path / "one", url, pg_bin_dir, keep=1)
    only = engine.backup(name, env, store)
    Path(only.location).with_name("x").write_text("")                # unrelated file: untouched
    with Sessions(url) as sessions:
        holder = sessions.open(autocommit=False)
        holder.execute("LOCK TABLE incomes IN ACCESS EXCLUSIVE MODE")
        env_short = env.model_copy(update={"backups": env.backups.model_copy(update={"lock_wait_timeout": "200ms"})})
        with pytest.raises(BackupFailed, match=r"^pg_dump failed: a table stayed locked by another session for "
                                               r"longer than lock_wait_timeout \(200ms\); see `activity`"):
            engine.backup(name, env_short, store)
        holder.rollback()
    assert engine.apply_retention(name, env, store) == []
    assert engine.latest_verified(store, name).id == only.id and Path(only.location).exists()


# ---------------------------------------------------------------------------
# restores


def test_full_restore_brings_back_the_exact_rows_and_drops_what_came_later(sample_db, pg_bin_dir, tmp_path):
    url = sample_db("head")
    name, env, store = environment(tmp_path, url, pg_bin_dir)
    original = {t: rows(url, t) for t in ("expenses", "incomes", "categories", "alembic_version")}
    made = engine.backup(name, env, store)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DELETE FROM expenses WHERE id <= 10")
        conn.execute("UPDATE incomes SET amount = amount + 1")
        conn.execute("CREATE TABLE audit_later (id int PRIMARY KEY)")
        conn.execute("INSERT INTO audit_later VALUES (1), (2)")
    plan = engine.plan_restore(name, env, store, made.id)
    changes = {c.table: c for c in plan.changes}
    assert plan.mode == "full" and plan.current_revision == [REV_0003] and plan.allowed
    assert changes["public.expenses"].rows_now == 40 and changes["public.expenses"].rows_in_backup == 50
    assert changes["public.audit_later"].action == "drop" and changes["public.audit_later"].rows_now == 2
    assert any("audit_later" in w for w in plan.warnings)

    result = engine.restore(name, env, store, made.id, expected_revision=plan.current_revision, actor="cli:ops")
    assert {t: rows(url, t) for t in original} == original
    assert "audit_later" not in tables_of(url)
    assert result.revision_before == [REV_0003] == result.revision_after and result.mismatches == {}
    assert result.row_counts_after["public.expenses"] == 50
    safety = result.safety_backup
    assert safety.reason == "safety" and safety.status == "verified" and safety.details["before_restore_of"] == made.id
    assert safety.row_counts["public.expenses"] == 40 and "public.audit_later" in safety.tables


def test_full_restore_takes_a_database_back_across_a_migration(sample_db, pg_bin_dir, tmp_path):
    url = sample_db(REV_0001)
    name, env, store = environment(tmp_path, url, pg_bin_dir)
    expenses = rows(url, "expenses")
    made = engine.backup(name, env, store)
    assert made.revision == [REV_0001]
    upgrade(url, "head")
    plan = engine.plan_restore(name, env, store, made.id)
    assert plan.current_revision == [REV_0003] and plan.backup_revision == [REV_0001]
    assert any("brings that revision back" in w for w in plan.warnings)
    result = engine.restore(name, env, store, made.id, expected_revision=[REV_0003])
    assert result.revision_after == [REV_0001]
    assert "categories" not in tables_of(url) and rows(url, "expenses") == expenses
    upgrade(url, "head")                                                 # and the app can migrate again


# ---------------------------------------------------------------------------
# full restores: the types, domains, functions, sequences and schemas created since the backup


# PostgreSQL's own name lookups: independent of the engine's catalogue query
LOOKUPS = {"type": "to_regtype", "domain": "to_regtype", "function": "to_regprocedure",
           "procedure": "to_regprocedure", "aggregate": "to_regprocedure", "sequence": "to_regclass",
           "table": "to_regclass", "schema": "to_regnamespace"}


def present(url: str, *objects: str) -> dict[str, bool]:
    """{"type mood": True, "function f(integer)": False, ...}."""
    with psycopg.connect(url) as conn:
        return {o: conn.execute(f"SELECT {LOOKUPS[o.split(' ', 1)[0]]}(%s) IS NOT NULL",
                                [o.split(" ", 1)[1]]).fetchone()[0] for o in objects}


USER_SCHEMAS = "n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema'"


def user_objects(url: str) -> dict[str, list[str]]:
    """Every type, routine (with its definition), sequence and schema outside the system's, by name."""
    queries = {
        "types": f"SELECT t.oid::regtype::text FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace "
                 f"WHERE {USER_SCHEMAS}",
        "routines": f"SELECT p.oid::regprocedure::text || ' ' || CASE WHEN p.prokind = 'a' THEN 'aggregate' "
                    f"ELSE pg_get_functiondef(p.oid) END "
                    f"FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                    f"WHERE {USER_SCHEMAS}",
        "sequences": f"SELECT c.oid::regclass::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                     f"WHERE c.relkind = 'S' AND {USER_SCHEMAS}",
        "schemas": f"SELECT n.nspname FROM pg_namespace n WHERE {USER_SCHEMAS}",
    }
    with psycopg.connect(url) as conn:
        return {what: sorted(r[0] for r in conn.execute(query)) for what, query in queries.items()}


def dropped(plan) -> list[tuple[str, str]]:
    return [(o.kind, o.shown) for o in plan.dropped]


def test_full_restore_drops_the_types_functions_sequences_and_schemas_created_since(sample_db, pg_bin_dir, tmp_path):
    url = sample_db("head")
    name, env, store = environment(tmp_path, url, pg_bin_dir)
    run(url, "CREATE TYPE kept_status AS ENUM ('open', 'closed')",
        "CREATE TYPE kept_span AS RANGE (subtype = float8)",        # its constructors and multirange come with it
        "CREATE FUNCTION kept_double(n integer) RETURNS integer LANGUAGE sql AS 'SELECT n * 2'",
        "CREATE FUNCTION kept_label(s kept_status) RETURNS text LANGUAGE sql AS 'SELECT upper(s::text)'")
    original = {t: rows(url, t) for t in ("expenses", "incomes", "categories", "alembic_version")}
    at_backup = user_objects(url)
    made = engine.backup(name, env, store)
    assert made.details["objects"]["type"] == ["public.kept_span", "public.kept_status"]
    assert made.details["objects"]["function"] == ["public.kept_double(integer)",
                                                   "public.kept_label(public.kept_status)"]
    assert made.details["objects"]["sequence"] == ["public.categories_id_seq", "public.expenses_id_seq",
                                                   "public.incomes_id_seq"]
    assert made.details["objects"]["schema"] == [] and made.details["objects"]["domain"] == []

    run(url,
        "CREATE TYPE mood AS ENUM ('calm', 'tense')",                   # what Alembic's sa.Enum creates
        "CREATE TYPE later_span AS RANGE (subtype = float8)",
        "CREATE TABLE moods (id int PRIMARY KEY, mood mood NOT NULL)",
        "INSERT INTO moods VALUES (1, 'calm')",
        "CREATE DOMAIN positive_amount AS numeric CHECK (VALUE > 0)",
        # takes a type the archive holds: pg_restore's own DROP TYPE would fail while it exists
        "CREATE FUNCTION later_label(s kept_status) RETURNS text LANGUAGE sql AS 'SELECT s::text'",
        "CREATE FUNCTION kept_double(t text) RETURNS text LANGUAGE sql AS 'SELECT t || t'",   # an overload
        "CREATE PROCEDURE later_proc(INOUT n integer) LANGUAGE sql AS 'SELECT n'",
        "CREATE AGGREGATE later_count(*) (sfunc = int8inc, stype = int8, initcond = '0')",
        "CREATE SEQUENCE later_seq",
        "CREATE SCHEMA audit",
        "CREATE TABLE audit.log (id serial PRIMARY KEY, mood mood, amount positive_amount)",
        "INSERT INTO audit.log (mood, amount) VALUES ('tense', 3)",
        # the backup's own objects, changed since: their definitions come back
        "ALTER TYPE kept_status ADD VALUE 'archived'",
        "CREATE OR REPLACE FUNCTION kept_double(n integer) RETURNS integer LANGUAGE sql AS 'SELECT n * 3'",
        "DELETE FROM expenses WHERE id > 30")
    later = ["type mood", "type later_span", "type later_span_multirange", "domain positive_amount",
             "function later_label(kept_status)", "function kept_double(text)", "procedure later_proc(integer)",
             "aggregate later_count()", "sequence later_seq", "schema audit", "table moods", "table audit.log"]
    assert all(present(url, *later).values())

    plan = engine.plan_restore(name, env, store, made.id)
    assert dropped(plan) == [("function", "kept_double(text)"), ("function", "later_label(public.kept_status)"),
                             ("procedure", "later_proc(integer)"), ("aggregate", "later_count(*)"),
                             ("domain", "positive_amount"), ("type", "later_span"), ("type", "mood"),
                             ("sequence", "later_seq"),
                             ("schema", "audit")]
    for line in ("2 table(s) created since the backup will be dropped: audit.log, moods",
                 "2 function(s) created since the backup will be dropped: kept_double(text), "
                 "later_label(public.kept_status)",
                 "1 procedure(s) created since the backup will be dropped: later_proc(integer)",
                 "1 aggregate(s) created since the backup will be dropped: later_count(*)",
                 "1 domain(s) created since the backup will be dropped: positive_amount",
                 "2 type(s) created since the backup will be dropped: later_span, mood",
                 "1 sequence(s) created since the backup will be dropped: later_seq",
                 "1 schema(s) created since the backup will be dropped with everything in them: audit"):
        assert line in plan.warnings, plan.warnings

    result = engine.restore(name, env, store, made.id, expected_revision=plan.current_revision)
    assert [o for o, there in present(url, *later).items() if there] == []
    assert {t: rows(url, t) for t in original} == original and result.mismatches == {}
    assert value(url, "SELECT enum_range(NULL::kept_status)::text") == "{open,closed}"
    assert value(url, "SELECT kept_double(21)") == 42 and value(url, "SELECT kept_label('open')") == "OPEN"
    assert user_objects(url) == at_backup                         # exactly the backup's set, definitions too
    safety = result.safety_backup.details["objects"]              # and the safety backup can bring them back
    assert "public.mood" in safety["type"] and "audit" in safety["schema"]

    again = engine.plan_restore(name, env, store, made.id)
    assert again.dropped == [] and not [w for w in again.warnings if "created since" in w]
    engine.restore(name, env, store, made.id, expected_revision=again.current_revision)
    assert user_objects(url) == at_backup and {t: rows(url, t) for t in original} == original
    upgrade(url, "head")                                  # Alembic agrees: already at head, nothing left over


def test_names_with_spaces_and_overloads_are_matched_to_the_archive_exactly(sample_db, pg_bin_dir, tmp_path):
    url = sample_db("head")
    name, env, store = environment(tmp_path, url, pg_bin_dir)
    run(url, 'CREATE SCHEMA "Odd Schema"',
        """CREATE TYPE "Odd Schema"."Odd Type" AS ENUM ('x')""",
        'CREATE DOMAIN "Odd Schema"."Odd Domain" AS character varying(20)',
        'CREATE FUNCTION "Odd Schema"."Odd Fn"(t "Odd Schema"."Odd Type", VARIADIC n double precision[]) '
        "RETURNS integer LANGUAGE sql AS 'SELECT 1'",
        "CREATE FUNCTION total(a integer, b integer DEFAULT 0) RETURNS integer LANGUAGE sql AS 'SELECT a + b'",
        'CREATE SEQUENCE "Odd Schema"."Odd Seq"')
    made = engine.backup(name, env, store)
    assert made.details["objects"]["function"] == [
        'Odd Schema.Odd Fn("Odd Schema"."Odd Type", double precision[])', "public.total(integer, integer)"]
    assert made.details["objects"]["schema"] == ["Odd Schema"]
    assert made.details["objects"]["type"] == ["Odd Schema.Odd Type"]
    run(url, """CREATE TYPE "Odd Schema"."Later Type" AS ENUM ('y')""",
        "CREATE FUNCTION total(a numeric, b numeric) RETURNS numeric LANGUAGE sql AS 'SELECT a + b'")
    plan = engine.plan_restore(name, env, store, made.id)
    assert dropped(plan) == [("function", "total(numeric, numeric)"), ("type", "Odd Schema.Later Type")]
    engine.restore(name, env, store, made.id, expected_revision=plan.current_revision)
    assert present(url, 'schema "Odd Schema"', 'type "Odd Schema"."Odd Type"', 'domain "Odd Schema"."Odd Domain"',
                   'function "Odd Schema"."Odd Fn"("Odd Schema"."Odd Type", double precision[])',
                   "function total(integer, integer)", 'sequence "Odd Schema"."Odd Seq"',
                   'type "Odd Schema"."Later Type"', "function total(numeric, numeric)") == {
        'schema "Odd Schema"': True, 'type "Odd Schema"."Odd Type"': True, 'domain "Odd Schema"."Odd Domain"': True,
        'function "Odd Schema"."Odd Fn"("Odd Schema"."Odd Type", double precision[])': True,
        "function total(integer, integer)": True, 'sequence "Odd Schema"."Odd Seq"': True,
        'type "Odd Schema"."Later Type"': False, "function total(numeric, numeric)": False}


def extension_members(url: str, extension: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return sorted(r[0] for r in conn.execute(
            "SELECT pg_describe_object(classid, objid, objsubid) FROM pg_depend WHERE deptype = 'e' "
            "AND refclassid = 'pg_extension'::regclass "
            "AND refobjid = (SELECT oid FROM pg_extension WHERE extname = %s)",
            [extension]))


def test_an_extension_created_since_the_backup_keeps_its_objects_and_its_schema(sample_db, pg_bin_dir, tmp_path):
    url = sample_db("head")
    name, env, store = environment(tmp_path, url, pg_bin_dir)
    made = engine.backup(name, env, store)
    run(url, "CREATE SCHEMA vec", "CREATE EXTENSION vector SCHEMA vec",     # pgvector ships with pgserver
        # some extensions spread over several schemas: a schema holding one of its members is never dropped
        "CREATE SCHEMA vec_ops", "ALTER FUNCTION vec.l2_distance(vec.vector, vec.vector) SET SCHEMA vec_ops",
        "CREATE TABLE embeddings (id int PRIMARY KEY, v vec.vector(3))",
        "INSERT INTO embeddings VALUES (1, '[1,2,3]')",
        "CREATE TYPE mood AS ENUM ('calm')")
    members = extension_members(url, "vector")
    assert "type vec.vector" in members and "function vec_ops.l2_distance(vec.vector,vec.vector)" in members
    plan = engine.plan_restore(name, env, store, made.id)
    assert dropped(plan) == [("type", "mood")]                     # nothing of the extension, nor its schema
    engine.restore(name, env, store, made.id, expected_revision=plan.current_revision)
    assert extension_members(url, "vector") == members
    assert value(url, "SELECT vec_ops.l2_distance('[1,2,3]'::vec.vector, '[1,2,4]'::vec.vector)") == 1.0
    assert present(url, "schema vec", "schema vec_ops", "type mood", "table embeddings") == {
        "schema vec": True, "schema vec_ops": True, "type mood": False, "table embeddings": False}


def test_a_backup_taken_before_the_record_drops_none_of_these_kinds_and_says_so(sample_db, pg_bin_dir, tmp_path):
    from runbook.state.models import BackupRow

    url = sample_db("head")
    name, env, store = environment(tmp_path, url, pg_bin_dir)
    made = engine.backup(name, env, store)
    with store.session() as session, session.begin():                # what an older bot's backup looks like
        row = session.get(BackupRow, made.id)
        row.details = {k: v for k, v in row.details.items() if k != "objects"}
    run(url, "CREATE TYPE mood AS ENUM ('calm')", "CREATE TABLE moods (id int, mood mood)",
        "CREATE FUNCTION later_fn() RETURNS integer LANGUAGE sql AS 'SELECT 1'", "CREATE VIEW later_view AS SELECT 1")
    plan = engine.plan_restore(name, env, store, made.id)
    assert dropped(plan) == [("view", "later_view")]                 # views were always recorded
    assert [w for w in plan.warnings if "recorded" in w] == [
        f"backup {made.id} was taken before backups recorded their types, domains, functions, sequences and "
        "schemas: those created since it stay in place (drop them by hand if a migration will create them again)"]
    engine.restore(name, env, store, made.id, expected_revision=plan.current_revision)
    assert present(url, "type mood", "function later_fn()", "table moods") == {
        "type mood": True, "function later_fn()": True, "table moods": False}


def test_a_full_restore_that_fails_after_its_drops_changes_nothing(sample_db, pg_bin_dir, tmp_path):
    url = sample_db("head")
    name, env, store = environment(tmp_path, url, pg_bin_dir)
    run(url, "CREATE FUNCTION kept_add(a integer, b integer) RETURNS integer LANGUAGE sql AS 'SELECT a + b'")
    made = engine.backup(name, env, store)
    run(url, "CREATE TYPE mood AS ENUM ('calm')", "CREATE SCHEMA audit", "CREATE TABLE audit.log (id int)",
        "DELETE FROM incomes",
        # an operator is not a kind the restore drops: pg_restore's own DROP FUNCTION kept_add fails on it
        "CREATE OPERATOR ### (leftarg = integer, rightarg = integer, function = kept_add)")
    before, objects = fingerprint(url), user_objects(url)
    plan = engine.plan_restore(name, env, store, made.id)
    assert dropped(plan) == [("type", "mood"), ("schema", "audit")]
    with pytest.raises(BackupError) as caught:
        engine.restore(name, env, store, made.id, expected_revision=plan.current_revision)
    assert re.match(r"the restore failed and was rolled back, production is unchanged \(safety backup \d+\): psql: ",
                    str(caught.value)), str(caught.value)
    assert "cannot drop function" in str(caught.value)
    assert fingerprint(url) == before and user_objects(url) == objects
    assert all(present(url, "type mood", "schema audit", "table audit.log").values())


def test_table_restore_leaves_other_tables_untouched(sample_db, pg_bin_dir, tmp_path):
    url = sample_db("head")
    name, env, store = environment(tmp_path, url, pg_bin_dir)
    expenses = rows(url, "expenses")
    made = engine.backup(name, env, store)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DELETE FROM expenses WHERE id > 25")
        conn.execute("UPDATE incomes SET amount = 1")
        conn.execute("INSERT INTO categories (name) VALUES ('later')")
    incomes, categories = rows(url, "incomes"), rows(url, "categories")
    plan = engine.plan_restore(name, env, store, made.id, tables=["expenses"])
    assert plan.mode == "tables" and plan.tables == ["public.expenses"]
    assert [(c.table, c.rows_now, c.rows_in_backup, c.action) for c in plan.changes] == [
        ("public.expenses", 25, 50, "replace")]
    result = engine.restore(name, env, store, made.id, tables=["expenses"], expected_revision=plan.current_revision)
    assert rows(url, "expenses") == expenses
    assert rows(url, "incomes") == incomes and rows(url, "categories") == categories
    assert result.safety_backup.kind == "tables" and result.safety_backup.tables == ["public.expenses"]
    with psycopg.connect(url, autocommit=True) as conn:             # the sequence came back too: inserts work
        conn.execute("INSERT INTO expenses (date, amount, description) VALUES (current_date, 1, 'after')")
    with pytest.raises(BackupError, match=r"^unknown table 'nope' in backup"):
        engine.plan_restore(name, env, store, made.id, tables=["nope"])


def test_a_table_restore_across_a_changed_definition_is_refused_naming_the_columns(sample_db, pg_bin_dir, tmp_path):
    """Issue 12 f: a `--table expenses` backup from 0001 restored after 0002 added expenses.category_id would
    leave that column in place with every value NULL. Refused, in the plan and by the restore itself."""
    url = sample_db(REV_0001)
    name, env, store = environment(tmp_path, url, pg_bin_dir)
    made = engine.backup(name, env, store, kind="tables", tables=["expenses"])
    assert made.details["columns"]["public.expenses"][0] == ["id", "integer"]
    upgrade(url, "head")                                   # 0002 adds expenses.category_id; 0003 fills it
    filled = rows(url, "expenses")
    plan = engine.plan_restore(name, env, store, made.id, tables=["expenses"])
    [blocker] = plan.blockers
    assert blocker.startswith(f"expenses is not defined as it was in backup #{made.id} (added since: category_id)")
    assert "use a full restore, or take a backup at the current revision" in blocker
    with pytest.raises(BackupError, match=r"added since: category_id.*nothing was restored$"):
        engine.restore(name, env, store, made.id, tables=["expenses"], expected_revision=plan.current_revision)
    assert rows(url, "expenses") == filled                  # category_id values still there
    # a backup that recorded no definitions is judged by its revision
    engine._update(store, made.id, details={k: v for k, v in made.details.items() if k != "columns"})
    [blocker] = engine.plan_restore(name, env, store, made.id, tables=["expenses"]).blockers
    assert "did not record its table definitions" in blocker and f"taken at {REV_0001}" in blocker
    # at the current revision, nothing differs: allowed
    same = engine.backup(name, env, store, kind="tables", tables=["expenses"])
    assert engine.plan_restore(name, env, store, same.id, tables=["expenses"]).blockers == []


def test_restore_stops_when_the_revision_changed_since_the_request(sample_db, pg_bin_dir, tmp_path):
    url = sample_db(REV_0001)
    name, env, store = environment(tmp_path, url, pg_bin_dir)
    made = engine.backup(name, env, store)
    plan = engine.plan_restore(name, env, store, made.id)
    upgrade(url, "head")                                               # someone migrated after the request
    before = fingerprint(url)
    with pytest.raises(BackupError, match=rf"^the revision of production changed since the restore was requested "
                                          rf"\(was {REV_0001}, now {REV_0003}\): nothing was restored"):
        engine.restore(name, env, store, made.id, expected_revision=plan.current_revision)
    assert fingerprint(url) == before
    assert len(engine.list_backups(store, name)) == 1                  # no safety backup either


def test_a_failing_restore_is_rolled_back_whole(sample_db, pg_bin_dir, tmp_path):
    url = sample_db("head")
    name, env, store = environment(tmp_path, url, pg_bin_dir)
    made = engine.backup(name, env, store)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DELETE FROM expenses WHERE id > 40")
        # rows in the backup point at a category that no longer exists: the refill must fail
        conn.execute("UPDATE expenses SET category_id = NULL")
        conn.execute("DELETE FROM categories WHERE id = (SELECT min(id) FROM categories)")
    before = fingerprint(url)
    plan = engine.plan_restore(name, env, store, made.id, tables=["expenses"])
    with pytest.raises(BackupError) as caught:
        engine.restore(name, env, store, made.id, tables=["expenses"], expected_revision=plan.current_revision)
    assert re.match(r"the restore failed and was rolled back, production is unchanged \(safety backup \d+\): psql: ",
                    str(caught.value)), str(caught.value)
    assert "foreign key" in str(caught.value)
    assert fingerprint(url) == before


def test_storage_on_an_fsspec_url_round_trips(sample_db, pg_bin_dir, tmp_path):
    import fsspec

    url = sample_db("head")
    staging = tmp_path / "staging"
    for where in ("memory://rb-tests/backups", (tmp_path / "remote").as_uri()):
        name, env, store = environment(tmp_path / where.split(":")[0], url, pg_bin_dir, dir=where, staging_dir=staging)
        made = engine.backup(name, env, store)
        assert made.location.startswith(where.split("://")[0] + "://") and made.location.endswith(made.name)
        fs, path = fsspec.core.url_to_fs(made.location)
        with fs.open(path, "rb") as handle:
            assert hashlib.sha256(handle.read()).hexdigest() == made.sha256
        assert files_in(staging) == []                                 # staged copy removed after the upload
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("DELETE FROM incomes")
        moved = []
        engine.restore(name, env, store, made.id, expected_revision=[REV_0003],
                       progress=moved.append, progress_every=0.01)
        assert counts(url, "incomes")["incomes"] == made.row_counts["public.incomes"]
        assert [p for p in files_in(staging) if not p.startswith(".")] == []


def test_precheck_backup_item_reads_the_catalogue(sample_db, pg_bin_dir, tmp_path):
    url = sample_db("head")
    name, env, store = environment(tmp_path, url, pg_bin_dir)
    item = lambda: next(c for c in run_precheck(name, env, last_backup_at=engine.last_backup_at(store, name)).checks
                        if c.name == "Backup completed successfully")
    assert item().status == "warn" and "no backup yet" in item().detail
    engine.backup(name, env, store, kind="schema")                     # not a full backup: does not count
    assert item().status == "warn"
    engine.backup(name, env, store)
    assert item().status == "ok" and "latest verified backup" in item().detail


def test_precheck_measures_free_space_in_the_staging_directory_for_url_storage(sample_db, pg_bin_dir, tmp_path):
    url = sample_db("head")
    name, env, _store = environment(tmp_path, url, pg_bin_dir, dir="memory://rb-precheck/backups",
                                    staging_dir=tmp_path)
    item = next(c for c in run_precheck(name, env).checks if c.name == "Sufficient disk space available")
    assert f"free in the staging directory {tmp_path} (backups go to memory://rb-precheck/backups)" in item.detail


def test_a_restore_waits_for_locks_only_as_long_as_configured(sample_db, pg_bin_dir, tmp_path):
    url = sample_db("head")
    name, env, store = environment(tmp_path, url, pg_bin_dir, lock_wait_timeout="300ms")
    made = engine.backup(name, env, store)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DELETE FROM incomes")
    before = fingerprint(url)
    with Sessions(url) as sessions:
        app = sessions.open(autocommit=False)
        app.execute("SELECT count(*) FROM incomes")                 # the app, idle in a transaction
        with pytest.raises(BackupError, match=r"^the restore failed and was rolled back, production is unchanged "
                                              r"\(safety backup \d+\): other sessions kept the tables locked for "
                                              r"longer than lock_wait_timeout \(300ms\): stop the application first"):
            engine.restore(name, env, store, made.id, expected_revision=[REV_0003])
        app.rollback()
    assert fingerprint(url) == before


def test_an_entry_left_running_by_a_dead_bot_is_failed_by_the_next_backup(sample_db, pg_bin_dir, tmp_path):
    from runbook.state.models import BackupRow

    url = sample_db("head")
    name, env, store = environment(tmp_path, url, pg_bin_dir)
    with store.session() as session, session.begin():     # what a bot killed mid-dump leaves behind
        session.add(BackupRow(environment=name, kind="full", format="custom", reason="manual", status="running",
                              level="none", name="backup_20200101_000000.dump", location="/nowhere",
                              tables=[], row_counts={}, actor="U0GONE0001", details={}))
    made = engine.backup(name, env, store)
    stale = engine.list_backups(store, name)[-1]
    assert stale.status == "failed" and stale.error == "interrupted: the bot stopped during this backup"
    assert not stale.restorable and made.status == "verified"


def test_a_directory_archive_round_trips_through_url_storage(sample_db, pg_bin_dir, tmp_path):
    url = sample_db("head")
    name, env, store = environment(tmp_path, url, pg_bin_dir, dir="memory://rb-tests/directory",
                                   staging_dir=tmp_path / "staging", parallel_above_bytes=0, jobs=2)
    made = engine.backup(name, env, store)
    assert made.format == "directory" and made.location.startswith("memory://")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DELETE FROM expenses WHERE id > 5")
    engine.restore(name, env, store, made.id, expected_revision=[REV_0003])
    assert counts(url, "expenses")["expenses"] == 50
    assert files_in(tmp_path / "staging") == []


def test_partitioned_tables_a_full_restore_drops_a_later_one_and_a_table_restore_names_the_partitions(
        sample_db, pg_bin_dir, tmp_path):
    url = sample_db("head")
    name, env, store = environment(tmp_path, url, pg_bin_dir)
    run(url, "CREATE TABLE readings (day date, v int) PARTITION BY RANGE (day)",
        "CREATE TABLE readings_2026 PARTITION OF readings FOR VALUES FROM ('2026-01-01') TO ('2027-01-01')",
        "INSERT INTO readings VALUES ('2026-03-01', 1), ('2026-04-01', 2)")
    made = engine.backup(name, env, store)
    run(url, "CREATE TABLE events (at date) PARTITION BY RANGE (at)",         # created after the backup
        "CREATE TABLE events_2026 PARTITION OF events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01')",
        "INSERT INTO readings VALUES ('2026-05-01', 3)")

    # a table restore of the parent would empty the partitions and load nothing: refused, naming them
    plan = engine.plan_restore(name, env, store, made.id, tables=["readings"])
    assert plan.blockers == ["readings is partitioned: its rows live in its partitions; restore those "
                             "(readings_2026)"]
    with pytest.raises(BackupError, match="readings is partitioned: .*nothing was restored"):
        engine.restore(name, env, store, made.id, tables=["readings"], expected_revision=[REV_0003])
    assert counts(url, "readings") == {"readings": 3}
    by_partition = engine.restore(name, env, store, made.id, tables=["readings_2026"],
                                  expected_revision=[REV_0003])
    assert by_partition.row_counts_after["public.readings_2026"] == 2

    full = engine.plan_restore(name, env, store, made.id)
    actions = {c.table: c.action for c in full.changes}
    assert actions["public.readings"] == "replace" and actions["public.events"] == "drop"
    assert actions["public.events_2026"] == "drop"
    engine.restore(name, env, store, made.id, expected_revision=[REV_0003])
    assert rows(url, "(SELECT to_regclass('public.events'), to_regclass('public.events_2026')) AS gone") == [
        (None, None)]
    assert counts(url, "readings") == {"readings": 2}
