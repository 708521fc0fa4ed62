"""`runbook-bot migrate|rollback --yes` take the runbook's §2 backup first, like Slack's run: real CLI
processes, the real sample app's Alembic, real pg_dump/pg_restore 16 and PostgreSQL. A fresh verified
backup is relied on instead; --no-backup skips it on the record; a backup that cannot be taken stops
the run in one line, exit 2, with the database where it was. No password in any output, event or log."""
from __future__ import annotations

import json
import subprocess
from datetime import timedelta
from pathlib import Path

from sqlalchemy import select

from runbook import backup as backups
from runbook.state import Store
from runbook.state.models import BackupRow
from runbook.state.runs import RunStore
from runbook.units import human_size
from tests.support.migrations import alembic_version, assert_no_secret, config_file, PASSWORD, run_cli
from tests.support.configs import with_password
from tests.support.sample_app import REV_0001, REV_0002, REV_0003

TAKING = "  backup: taking a verified full backup of production first (§2)"


def _store(tmp_path: Path) -> Store:
    return Store(f"sqlite:///{tmp_path / 'state.db'}")


def _age_backups(store: Store, by: timedelta) -> None:
    """What the passing of time does to the catalogue: every backup finished `by` earlier."""
    with store.session() as session, session.begin():
        for row in session.scalars(select(BackupRow)):
            row.started_at -= by
            row.finished_at -= by


def _nothing_secret(store: Store, *outputs: subprocess.CompletedProcess) -> None:
    runs = RunStore(store).list(limit=20)
    assert_no_secret(PASSWORD, *[o.stdout + o.stderr for o in outputs],
                     [(e.summary, e.details) for e in store.events(limit=200)],
                     [(r.summary, r.result) for r in runs],
                     files=tuple(Path(r.log_path) for r in runs if r.log_path))


def test_migrate_backs_up_first_records_it_and_a_run_within_the_window_relies_on_it(sample_db, pg_bin_dir,
                                                                                      tmp_path):
    url = with_password(sample_db(REV_0001), PASSWORD)
    config = config_file(tmp_path, url, validation={"tables": ["expenses"]}, pg_bin_dir=pg_bin_dir)

    first = run_cli(config, "migrate", "--to", REV_0002, "--yes")
    assert first.returncode == 0, first.stderr
    assert alembic_version(url) == [REV_0002]
    store = _store(tmp_path)
    [made] = backups.list_backups(store, "production")
    assert (made.status, made.kind, made.reason, made.level) == ("verified", "full", "migrate", "full")
    assert made.revision == [REV_0001]                     # dumped before the migration changed anything
    assert made.row_counts["public.expenses"] == 50 and made.actor.startswith("cli:")
    assert Path(made.location).is_file() and made.size_bytes == Path(made.location).stat().st_size
    # stderr shows the backup, then the step
    lines = first.stderr.splitlines()
    verified = f"  backup: #{made.id} verified (full), {human_size(made.size_bytes)}: {made.location}"
    step = next(i for i, line in enumerate(lines) if line.startswith(f"  upgrade {REV_0002} (1/1)"))
    taking = next(i for i, line in enumerate(lines) if line.startswith(TAKING))
    assert "has no verified full backup" in lines[taking] and taking < lines.index(verified) < step
    assert f"Backup: #{made.id} (taken before the run, verified full" in first.stdout
    # recorded: the catalogue entry, and a backup event of the run, before its first step
    [run] = RunStore(store).list(limit=5)
    [event] = store.events(action="backup")
    assert event.outcome == "verified" and event.run_id == run.id and event.actor == made.actor
    assert event.details["backup_id"] == made.id and event.details["sha256"] == made.sha256
    first_step = next(e for e in store.events(limit=50) if e.action == "migrate.step" and e.run_id == run.id)
    assert event.id < first_step.id

    # the rollback from 0002: the backup at 0001 lacks what 0002 added (and every row written into it), so the
    # run takes its own at 0002 (design rule 16), and says why
    back = run_cli(config, "rollback", "--yes", "--json")
    assert back.returncode == 0, back.stderr
    payload = json.loads(back.stdout)
    assert payload["to"] == [REV_0001] == alembic_version(url)
    at_0002 = backups.list_backups(store, "production")[0]
    assert at_0002.id != made.id and at_0002.revision == [REV_0002] and at_0002.status == "verified"
    assert (payload["backup_id"], payload["backup_taken"], payload["backup_skipped"]) == (at_0002.id, True, False)
    assert f"was taken at {REV_0001}, not at {REV_0002} where production is now" in back.stderr

    # a manual backup at the current revision, after the last run, within the window: relied on
    assert run_cli(config, "backup").returncode == 0
    manual = backups.list_backups(store, "production")[0]
    assert manual.revision == [REV_0001] and manual.reason == "manual"
    again = run_cli(config, "migrate", "--to", REV_0002, "--yes", "--json")
    assert again.returncode == 0, again.stderr
    payload = json.loads(again.stdout)
    assert (payload["backup_id"], payload["backup_taken"], payload["backup_skipped"]) == (manual.id, False, False)
    assert f"backup #{manual.id}, taken at {REV_0001}" in again.stderr and "relied on" in again.stderr
    assert "writes made after it are not in it" in again.stderr and TAKING not in again.stderr
    assert backups.list_backups(store, "production")[0].id == manual.id
    [relied] = [e for e in store.events(action="backup") if e.outcome == "relied on"]
    assert relied.details["backup_id"] == manual.id

    # older than the window: the next run takes a new one
    assert run_cli(config, "rollback", "--yes").returncode == 0
    assert run_cli(config, "backup").returncode == 0
    _age_backups(store, timedelta(minutes=61))
    late = run_cli(config, "migrate", "--yes", "--json")
    assert late.returncode == 0, late.stderr
    payload = json.loads(late.stdout)
    newer = backups.list_backups(store, "production")[0]
    assert newer.revision == [REV_0001] and newer.status == "verified" and newer.reason == "migrate"
    assert (payload["backup_id"], payload["backup_taken"], payload["backup_skipped"]) == (newer.id, True, False)
    assert payload["to"] == [REV_0003] == alembic_version(url)
    assert TAKING in late.stderr and "older than 60 min" in late.stderr
    _nothing_secret(store, first, back, again, late)


def test_no_backup_skips_it_on_the_record_with_a_warning(sample_db, pg_bin_dir, tmp_path):
    url = with_password(sample_db(REV_0001), PASSWORD)
    config = config_file(tmp_path, url, pg_bin_dir=pg_bin_dir)

    skipped = run_cli(config, "migrate", "--to", REV_0002, "--yes", "--no-backup", "--json")
    assert skipped.returncode == 0, skipped.stderr
    assert alembic_version(url) == [REV_0002]
    payload = json.loads(skipped.stdout)
    assert (payload["backup_id"], payload["backup_taken"], payload["backup_skipped"]) == (None, False, True)
    assert ("runbook-bot: warning: --no-backup: migrate runs without a backup first (§2; recorded); "
            "production has no verified full backup") in skipped.stderr.splitlines()
    assert TAKING not in skipped.stderr
    store = _store(tmp_path)
    assert backups.list_backups(store, "production") == []
    [run] = RunStore(store).list(limit=5)
    [event] = store.events(action="backup")
    assert event.outcome == "skipped" and event.run_id == run.id and event.actor.startswith("cli:")
    assert event.details == {"skipped": "--no-backup", "latest_backup_id": None, "protecting_backup_id": None}

    # an older verified backup is named, and still no new one is taken (rollback too)
    assert run_cli(config, "backup").returncode == 0
    [old] = backups.list_backups(store, "production")
    _age_backups(store, timedelta(hours=3))
    back = run_cli(config, "rollback", "--yes", "--no-backup")
    assert back.returncode == 0, back.stderr
    assert alembic_version(url) == [REV_0001] and "Rollback production: SUCCEEDED" in back.stdout
    assert f"--no-backup: rollback runs without a backup first (§2; recorded); the latest verified full backup " \
           f"is #{old.id} of " in back.stderr
    assert [b.id for b in backups.list_backups(store, "production")] == [old.id]
    latest = store.events(action="backup")[0]
    assert latest.outcome == "skipped" and latest.details["latest_backup_id"] == old.id
    assert latest.details["protecting_backup_id"] is None and latest.run_id == RunStore(store).list(limit=1)[0].id
    _nothing_secret(store, skipped, back)


def test_a_backup_that_cannot_be_taken_stops_the_migration_in_one_line(sample_db, tmp_path):
    url = with_password(sample_db(REV_0001), PASSWORD)
    no_tools = tmp_path / "no-tools"
    no_tools.mkdir()
    config = config_file(tmp_path, url, pg_bin_dir=no_tools)

    for args in (("migrate", "--yes"), ("migrate", "--yes", "--json")):
        out = run_cli(config, *args)
        assert out.returncode == 2 and out.stdout == ""
        [taking, error] = out.stderr.splitlines()             # the progress line, then one line of error
        assert taking.startswith(TAKING)
        assert error.startswith("runbook-bot: migrate stopped, production was not changed: the backup before it "
                                f"failed: pg_bin_dir {no_tools} has no pg_dump: point pg_bin_dir at ")
        assert error.endswith("(fix that and run again, or add --no-backup)")
        assert alembic_version(url) == [REV_0001]
    store = _store(tmp_path)
    assert backups.list_backups(store, "production") == []
    runs = RunStore(store).list(limit=5)
    assert len(runs) == 2 and all(r.state == "failed" and r.kind == "migrate" for r in runs)
    failed = store.events(action="backup")
    assert [e.outcome for e in failed] == ["failed", "failed"] and {e.run_id for e in failed} == {r.id for r in runs}
    assert "has no pg_dump" in failed[0].summary
    assert not [e for e in store.events(limit=100) if e.action == "migrate.step"]
    assert "the backup before the migration failed" in Path(runs[0].log_path).read_text()
    _nothing_secret(store, out)


def test_backup_storage_that_cannot_be_written_stops_the_rollback(sample_db, pg_bin_dir, tmp_path):
    url = with_password(sample_db(REV_0002), PASSWORD)
    config = config_file(tmp_path, url, pg_bin_dir=pg_bin_dir)
    blocker = tmp_path / "blocker"                     # a file where the storage needs a directory
    blocker.write_text("not a directory")
    staging = tmp_path / "staging"
    text = config.read_text()
    config.write_text(text.replace('backups: {dir: "backups"}', f'backups: {{dir: "{(blocker / "backups").as_uri()}", '
                                                                f'staging_dir: "{staging}"}}'))
    assert config.read_text() != text

    out = run_cli(config, "rollback", "--yes")
    assert out.returncode == 2 and out.stdout == "", out.stdout + out.stderr
    [taking, error] = out.stderr.splitlines()
    assert taking.startswith(TAKING)
    assert error.startswith("runbook-bot: rollback stopped, production was not changed: the backup before it "
                            "failed: ")
    assert alembic_version(url) == [REV_0002]
    store = _store(tmp_path)
    [entry] = backups.list_backups(store, "production")     # dumped and verified in staging, never stored
    assert entry.status == "failed" and entry.reason == "migrate" and entry.error and entry.error in error
    assert not [p for p in staging.iterdir() if p.is_file()]   # nothing half-written left behind
    [event] = store.events(action="backup")
    assert event.outcome == "failed" and event.details["backup_id"] == entry.id
    [run] = RunStore(store).list(limit=5)
    assert run.kind == "rollback" and run.state == "failed" and event.run_id == run.id
    _nothing_secret(store, out)


def test_a_backups_directory_that_cannot_be_created_stops_the_run_before_it_starts(sample_db, pg_bin_dir,
                                                                                    tmp_path):
    url = with_password(sample_db(REV_0001), PASSWORD)
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory")
    config = config_file(tmp_path, url, pg_bin_dir=pg_bin_dir)
    config.write_text(config.read_text().replace('backups: {dir: "backups"}',
                                                 f'backups: {{dir: "{blocker / "backups"}"}}'))

    out = run_cli(config, "migrate", "--yes")
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.splitlines() == [f"runbook-bot: migrate stopped, production was not changed: cannot write "
                                       f"the run's log in {blocker / 'backups' / 'migration-logs'}: Not a directory"]
    assert alembic_version(url) == [REV_0001]
    store = _store(tmp_path)
    assert RunStore(store).list(limit=5) == []                   # no run left "running" to be reaped later
    [event] = [e for e in store.events(action="migrate") if e.summary.startswith("upgrade production")]
    assert event.outcome == "error" and "cannot write the run's log" in event.summary
    status = run_cli(config, "status")
    assert status.returncode == 0 and "interrupted" not in status.stderr
    _nothing_secret(store, out, status)
