"""Issue 6, §7.3: the incident summary, generated from the bot's records of a real failed migration.

The failing migration is real: a throwaway copy of the sample app with a reversible revision and a
failing one after it, run step by step by the real CLI against the real PostgreSQL, held up once by a
session holding a lock (one retry), with a real verified backup before it, then rolled back, restored
and escalated. Every §7.3 item of the summary is checked against the values recorded for that run."""
from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from bot.localslack import LocalSlack
from runbook import backup as backups
from runbook import incident as incidents
from runbook.state import Store
from runbook.state.approvals import ApprovalStore
from runbook.state.runs import RunStore
from runbook.units import human_size
from tests.support.migrations import alembic_version, app_copy, assert_no_secret, PASSWORD
from tests.support.configs import with_password
from tests.support.escalations import GITHUB_TOKEN, OWNER, ROOT, cli, escalation_config, load
from tests.support.sample_app import REV_0003
from tests.support.sessions import Sessions
from tests.support.waiting import wait_for

BOT_TOKEN = "xoxb-incident-secret-token-7"
REVERSIBLE = ("0004_incomes_note", "op.add_column('incomes', sa.Column('note', sa.Text()))",
              "op.drop_column('incomes', 'note')")
FAILING = ("0005_divide_by_zero", "op.execute('SELECT 1/0')", "pass")


@pytest.fixture
def slack():
    with LocalSlack(joined=("C0ESCALATE1",)) as local:
        yield local


def test_a_failed_migration_documents_every_section_7_3_item_with_the_real_values(sample_db, tmp_path, pg_bin_dir,
                                                                                  slack):
    url = with_password(sample_db(REV_0003), PASSWORD)
    app = app_copy(tmp_path, [REVERSIBLE, FAILING])
    config = escalation_config(tmp_path, url, app_dir=app, pg_bin_dir=pg_bin_dir,
                               migration={"step_by_step": True, "lock_timeout": "1s", "retries": 2,
                                          "retry_backoff_seconds": 0.1},
                               validation={"tables": ["expenses", "incomes"]})
    slack_env = {"SLACK_BOT_TOKEN": BOT_TOKEN, "SLACK_API_URL": slack.url, "GITHUB_TOKEN": GITHUB_TOKEN}
    outputs: list[str] = []

    def run(*args: str) -> subprocess.CompletedProcess:
        done = cli(config, *args, env=slack_env)
        outputs.extend([done.stdout, done.stderr])
        return done

    assert run("precheck").returncode in (0, 1)
    assert run("backup").returncode == 0, outputs[-1]
    store = Store(f"sqlite:///{tmp_path / 'state.db'}")
    [made] = backups.list_backups(store, "production")

    # The migration: the first step waits behind a session holding a lock on incomes (one retry),
    # the second step divides by zero.
    with Sessions(url) as sessions:
        holder = sessions.open(application_name="nightly-report", autocommit=False)
        holder.execute("SELECT count(*) FROM incomes")
        # the override takes the run past the no-go gate (which sees the holder) into the lock timeout
        proc = subprocess.Popen([sys.executable, "-m", "bot.cli", "--config", str(config), "migrate", "--yes",
                                 "--override-gate", "the report ends in a minute"],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**__import__("os").environ, **slack_env})
        try:
            wait_for(lambda: store.events(action="migrate.blocked", limit=1), 60, what="the first lock timeout")
            holder.rollback()
            stdout, stderr = proc.communicate(timeout=180)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    outputs.extend([stdout, stderr])
    assert proc.returncode == 1, stdout + stderr
    assert alembic_version(url) == ["0004_incomes_note"]
    migrate_run = RunStore(store).list(limit=1)[0]
    assert migrate_run.kind == "migrate" and migrate_run.state == "failed"

    # Failed runs get a summary on their own: in Slack (a file with it) and next to the log.
    assert f"incident summary of run {migrate_run.id}: posted in Slack" in stderr
    written = Path(migrate_run.log_path).parent / next(
        p.name for p in Path(migrate_run.log_path).parent.iterdir() if p.name.startswith("incident_"))
    assert f"incident summary written to {written}" in stderr
    posted = slack.wait_for_message(lambda m: "Incident summary: migrate on production" in m.text, timeout=10)
    assert posted.channel == "C0ESCALATE1"
    [uploaded] = [f for f in slack.files() if f.filename.startswith("incident_production_" + migrate_run.id)]
    assert "division by zero" in uploaded.text and uploaded.thread_ts == posted.ts

    # Everything §6.5 recommends, and the escalation, become steps of the same incident.
    assert run("validate").returncode == 1                     # at 0004, not at the head 0005
    back = run("rollback", "--to", REV_0003, "--yes")
    assert back.returncode == 0, back.stdout + back.stderr
    restored = run("restore", str(made.id), "--yes")
    assert restored.returncode == 0, restored.stdout + restored.stderr
    escalated = run("escalate", "--level", "2", "the", "migration", "blocks", "the", "deploy")
    assert escalated.returncode == 0, escalated.stderr
    assert f"to {OWNER}: posted in Slack" in escalated.stderr

    summary = run("incident")                                  # the latest run is the rollback: same incident
    assert summary.returncode == 0, summary.stderr
    by_id = run("incident", migrate_run.id)
    assert by_id.stdout.split("\n", 3)[3] == summary.stdout.split("\n", 3)[3]   # the same, but for the time
    text = summary.stdout

    run_row = RunStore(store).get(migrate_run.id)
    result = run_row.result
    events = [e for e in store.events(limit=500)]
    when = incidents.when

    # environment; revision ids, from -> target, and where it stopped
    assert "| Environment | `production` |" in text
    assert f"| Run | `{migrate_run.id}` (migrate, failed) |" in text
    assert "| Revision | `0003_backfill_categories` → `0005_divide_by_zero`; reached `0004_incomes_note` |" in text
    assert result["from"] == [REV_0003] and result["to"] == ["0004_incomes_note"]
    # the time of each step, from the events the run recorded
    start = next(e for e in events if e.action == "migrate.start" and e.run_id == migrate_run.id)
    step_events = [e for e in events if e.action == "migrate.step" and e.run_id == migrate_run.id]
    blocked = [e for e in events if e.action == "migrate.blocked" and e.run_id == migrate_run.id]
    assert len(step_events) == 2 and len(blocked) == 1
    for event in [start, *step_events, *blocked]:
        assert f"| {when(event.at)} |" in text
    assert f"| Started | {when(run_row.started_at)} by `{run_row.actor}` |" in text
    assert f"| Finished | {when(run_row.finished_at)} |" in text
    # error messages and the relevant log lines (the last N of the run's own log file)
    assert result["error"] and "division by zero" in result["error"]
    assert f"- `{result['error']}`" in text
    log_tail = incidents.relevant_lines(Path(run_row.log_path).read_text().splitlines()[-160:])[-40:]
    assert (f"The last 40 lines of `{run_row.log_path}` (redacted; traceback frames inside installed "
            "libraries left out):") in text
    log_section = text.split("## Log", 1)[1].split("## Timeline")[0]
    assert "\n".join(log_tail) in log_section
    assert "[alembic] [SQL: SELECT 1/0]" in log_section and "DivisionByZero) division by zero" in log_section
    assert "site-packages" not in log_section and "^^^" not in log_section
    # the steps already attempted, each with who approved it
    cli_user = run_row.actor
    steps = [line for line in text.split("## Steps attempted")[1].split("## Backup")[0].splitlines()
             if line.startswith("| 20")]
    kinds = [line.split(" | ")[1] for line in steps]
    assert kinds[:2] == ["precheck", "backup"] and "none (no approval needed)" in steps[0]
    assert f"#{made.id} {made.name} (full), level full" in steps[1] and "none (no approval needed)" in steps[1]
    for expected in ("migrate", "retry", "migrate step", "validation", "rollback", "safety backup", "restore"):
        assert expected in kinds, (expected, kinds)
    for line in steps:
        if line.split(" | ")[1] in ("migrate", "retry", "migrate step", "rollback", "restore"):
            assert f"| {cli_user}" in line, line
    assert any("retried after" in line and "nightly-report" in line for line in steps)
    assert any(line.split(" | ")[1] == "restore" and "1 of 1 required" in line for line in steps)
    # the backup's location, time, size, checksum and verification level
    made = backups.get_backup(store, "production", made.id)
    assert f"- Location: `{made.location}`" in text
    assert f"- Time: {when(made.finished_at)}" in text
    assert f"- Size: {human_size(made.size_bytes)}" in text
    assert f"- SHA-256: `{made.sha256}`" in text
    assert f"- Verification level: {made.level}: full read" in text and made.level == "full"
    # validation results (the run's own did not run: it failed first; `validate` after it did)
    validate_event = next(e for e in events if e.action == "validate")
    assert f"| {when(validate_event.at)} | validation | fail |" in text
    # the §6.5 recommendation the run made
    assert result["recommendation"]["action"] == "downgrade"
    assert result["recommendation"]["headline"].split(":")[0] in text
    # who was escalated to, and when
    escalation = next(e for e in events if e.action == "escalate")
    assert f"| {when(escalation.at)} | 2 Owner | {OWNER} | {escalation.actor} | the migration blocks the deploy" in text

    # No password and no token anywhere: summaries, messages, files, events, logs, outputs.
    seen = "\n".join([json.dumps(c.body, default=str) for c in slack.calls()] + [f.text for f in slack.files()])
    assert_no_secret(PASSWORD, text, seen, *outputs, [(e.summary, e.details) for e in events],
                     files=(written, Path(run_row.log_path)))
    assert_no_secret(GITHUB_TOKEN, text, seen, *outputs, [(e.summary, e.details) for e in events])
    assert_no_secret(BOT_TOKEN, text, "\n".join(json.dumps(c.body, default=str) for c in slack.calls()), *outputs)


def test_unknown_run_id_is_one_line_and_exit_2(sample_db, tmp_path):
    config = escalation_config(tmp_path, sample_db(REV_0003))
    out = cli(config, "incident", "deadbeef00000000")
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.strip().splitlines() == [out.stderr.strip()]
    assert "unknown run id 'deadbeef00000000'" in out.stderr
    # no run at all: the environment's summary, every piece "none"
    empty = cli(config, "incident")
    assert empty.returncode == 0, empty.stderr
    assert "| Run | none (no migrate, rollback or restore run in the window) |" in empty.stdout


def test_missing_pieces_render_as_none(tmp_path):
    """A run with no backup, no log file, no approver, no result: every section says none."""
    store = Store(f"sqlite:///{tmp_path / 'state.db'}")
    store.migrate()
    runs = RunStore(store)
    run = runs.start(kind="migrate", environment="production", actor="U0SOMEONE1", target_revision="head")
    runs.finish(run.id, "failed", summary="the bot lost its database")
    found = incidents.gather(store, run_id=run.id)
    markdown = incidents.render_markdown(found)
    slack_text = "\n".join(incidents.render_mrkdwn(found))
    assert found.backup is None and found.log_path is None and found.validation is None
    for heading in ("## Backup", "## Validation", "## Recommendation (§6.5)", "## Escalations", "## Log"):
        assert markdown.split(heading, 1)[1].lstrip("\n").startswith("none"), heading
    assert "| Revision | `base` → `head`; reached `base` |" in markdown
    migrate_line = next(line for line in markdown.splitlines() if "| migrate |" in line)
    assert migrate_line.endswith("| none |")                       # nobody approved it
    assert "- `the bot lost its database`" in markdown
    for label in ("*Backup*: none", "*Validation*: none", "*Recommendation*: none", "*Escalated*: none",
                  "*Log*: none (the run kept no log file)"):
        assert label in slack_text, label
    assert "approved by: none" in slack_text

    # A log file that is gone, and one left empty.
    gone = runs.start(kind="migrate", environment="staging", actor="cli:ops")
    runs.set_log_path(gone.id, str(tmp_path / "vanished.log"))
    runs.finish(gone.id, "failed")
    assert "none (the log file cannot be read: No such file or directory)" in incidents.render_markdown(
        incidents.gather(store, run_id=gone.id))
    empty = tmp_path / "empty.log"
    empty.write_text("")
    runs.set_log_path(gone.id, str(empty))
    assert "none (the log file is empty)" in incidents.render_markdown(incidents.gather(store, run_id=gone.id))

    with pytest.raises(incidents.UnknownRun):
        incidents.gather(store, run_id="nope")


def test_markdown_and_slack_texts_cannot_be_broken_by_what_they_quote(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'state.db'}")
    store.migrate()
    runs = RunStore(store)
    run = runs.start(kind="migrate", environment="production", actor="cli:ops")
    log = tmp_path / "run.log"
    log.write_text("line with ``` fence and <!here> and password hunter2 and a | pipe\n")
    runs.set_log_path(run.id, str(log))
    runs.finish(run.id, "failed", result={"error": "boom `x` | <@U0EVIL> <!channel>", "outcome": "failed"})
    found = incidents.gather(store, run_id=run.id, secrets=("hunter2",))
    markdown = incidents.render_markdown(found, secrets=("hunter2",))
    assert "hunter2" not in markdown and "````\nline with ``` fence" in markdown
    slack_text = "\n".join(incidents.render_mrkdwn(found, secrets=("hunter2",)))
    assert "<!here>" not in slack_text and "<@U0EVIL>" not in slack_text and "<!channel>" not in slack_text
    assert "&lt;!here&gt;" in slack_text and "hunter2" not in slack_text


def test_a_rollback_belongs_to_the_migration_before_it_and_the_window_ends_at_the_next(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'state.db'}")
    store.migrate()
    runs = RunStore(store)
    first = runs.start(kind="migrate", environment="production", actor="cli:ops")
    runs.finish(first.id, "failed")
    back = runs.start(kind="rollback", environment="production", actor="cli:ops")
    runs.finish(back.id, "succeeded")
    assert incidents.gather(store, run_id=back.id).run.id == first.id
    assert [s.name for s in incidents.gather(store, run_id=first.id).steps].count("rollback") == 1
    second = runs.start(kind="migrate", environment="production", actor="cli:ops")
    runs.finish(second.id, "succeeded")
    later = runs.start(kind="rollback", environment="production", actor="cli:ops")
    runs.finish(later.id, "failed")
    first_incident = incidents.gather(store, run_id=first.id)
    assert first_incident.until == RunStore(store).get(second.id).started_at
    assert [s.detail.split(":")[0] for s in first_incident.steps if s.name == "rollback"] == [f"run {back.id}"]
    # an escalation is about the latest run unless it succeeded over a day ago
    assert incidents.subject_run(store, "production").id == later.id
    assert incidents.subject_run(store, "production", now=RunStore(store).get(later.id).finished_at
                                 + timedelta(days=2)).id == later.id
    assert ApprovalStore(store).list() == []


def test_an_interrupted_rollback_says_where_it_stopped_in_the_summary_of_the_migration_it_belongs_to(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'state.db'}")
    store.migrate()
    runs = RunStore(store, host="bot-1")
    failed = runs.start(kind="migrate", environment="production", actor="U0ALICE01")
    runs.finish(failed.id, "failed", result={"error": "division by zero", "outcome": "failed"})
    back = runs.start(kind="rollback", environment="production", actor="U0ALICE01")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with store.engine.begin() as conn:        # its process died in the middle of a downgrade
        conn.exec_driver_sql("UPDATE runs SET pid = ?, step = 'downgrade 0005_divide_by_zero (1/1)' WHERE id = ?",
                             (dead.pid, back.id))
    assert [r.id for r in runs.reap()] == [back.id]
    found = incidents.gather(store, run_id=back.id)
    assert found.run.id == failed.id                  # the rollback belongs to the migration before it
    [rollback_step] = [s for s in found.steps if s.name == "rollback"]
    assert rollback_step.outcome == "interrupted"
    [error] = [e for e in found.errors if e.startswith(f"rollback {back.id}")]
    assert "interrupted during 'downgrade 0005_divide_by_zero (1/1)': its process" in error
    assert "interrupted during 'downgrade 0005_divide_by_zero (1/1)'" in incidents.render_markdown(found)
    assert "downgrade 0005_divide_by_zero (1/1)" in "\n".join(incidents.render_mrkdwn(found))


def test_a_restore_is_an_incident_of_its_own_unless_it_recovers_a_failed_migration(tmp_path):
    """A restore run's summary: its backup, its one restore step (not twice: its request is that step),
    where it stopped. After a migration that failed it belongs to that migration's incident, like a
    rollback; after one that went well it does not."""
    from runbook.state.models import BackupRow, utcnow

    store = Store(f"sqlite:///{tmp_path / 'state.db'}")
    store.migrate()
    runs = RunStore(store, host="bot-1")
    approvals = ApprovalStore(store)
    with store.session() as session, session.begin():
        backup = BackupRow(environment="production", kind="full", format="custom", reason="manual", status="verified",
                           level="full", name="backup_20261124_100000.dump", location="/backups/b.dump",
                           size_bytes=4096, sha256="ab" * 32, revision=[REV_0003], tables=["public.expenses"],
                           row_counts={"public.expenses": 50}, actor="U0ALICE01")
        session.add(backup)
    fine = runs.start(kind="migrate", environment="production", actor="U0ALICE01")
    runs.finish(fine.id, "succeeded", result={"outcome": "succeeded", "to": [REV_0003]})

    def restore_run(note: str) -> tuple:
        request = approvals.create(kind="restore", environment="production", requester="U0REQUEST1",
                                   params={"backup_id": backup.id, "mode": "full", "tables": []}, required=1,
                                   expires_at=utcnow(), state="executing")
        run = runs.start(kind="restore", environment="production", actor="U0REQUEST1", from_revision=REV_0003,
                         target_revision=REV_0003, approval_id=request.id,
                         details={"backup_id": backup.id, "mode": "full", "tables": []})
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        with store.engine.begin() as conn:       # its process died while psql waited for the tables' locks
            conn.exec_driver_sql("UPDATE runs SET pid = ?, step = 'restore' WHERE id = ?", (dead.pid, run.id))
        assert [r.id for r in runs.reap()] == [run.id]
        approvals.transition(request.id, ["executing"], "failed", result={"outcome": "interrupted"},
                             result_summary=f"interrupted during 'restore' ({note})")
        return request, runs.get(run.id)

    request, own = restore_run("after a good migration")
    found = incidents.gather(store, run_id=own.id)
    assert found.run.id == own.id and found.title == "Incident summary: restore on production (interrupted)"
    assert found.backup.id == backup.id and found.backup.relation == "the backup this restore restores"
    [step] = [s for s in found.steps if s.name == "restore" and s.detail.startswith(f"run {own.id}")]
    assert step.outcome == "interrupted" and f"the whole database from backup #{backup.id}; revision {REV_0003} before" in step.detail
    assert [s.name for s in found.steps].count("restore") == 2        # the run, and where it was interrupted
    assert not any(s.detail.startswith(f"backup #{backup.id}") for s in found.steps)    # its request: not again
    assert [e for e in found.errors if "interrupted during 'restore'" in e] and len(found.errors) == 1
    markdown = incidents.render_markdown(found)
    assert "| Run | `" + own.id + "` (restore, interrupted) |" in markdown and "/backups/b.dump" in markdown
    assert incidents.latest_run(store, "production").id == own.id     # `runbook-bot incident`'s default

    failed = runs.start(kind="migrate", environment="production", actor="U0ALICE01")
    runs.finish(failed.id, "failed", result={"error": "division by zero", "outcome": "failed"})
    request, recovery = restore_run("after a failed migration")
    found = incidents.gather(store, run_id=recovery.id)
    assert found.run.id == failed.id                                  # the §6.5 recovery of that migration
    [step] = [s for s in found.steps if s.name == "restore"]           # its request, in that incident
    assert step.outcome == "failed" and "after a failed migration" in step.detail
    assert any("interrupted during 'restore' (after a failed migration)" in e for e in found.errors)
    assert "division by zero" in found.errors


def test_a_restore_recorded_with_its_target_as_a_list_still_reads_as_a_revision(tmp_path):
    """Restore runs recorded before issue 12 §2 j kept the backup's revision list as their target:
    the summary shows it as text in Markdown and in Slack, never `['0003…']`."""
    store = Store(f"sqlite:///{tmp_path / 'state.db'}")
    store.migrate()
    runs = RunStore(store)
    run = runs.start(kind="restore", environment="production", actor="U0ALICE01", from_revision=REV_0003,
                     details={"backup_id": 1, "mode": "full", "tables": []})
    runs.finish(run.id, "failed", summary="psql: lock timeout", result={
        "outcome": "failed", "error": "psql: lock timeout", "from": [REV_0003], "to": [REV_0003],
        "target": [REV_0003], "backup_id": 1, "mode": "full"})
    found = incidents.gather(store, run_id=run.id)
    assert found.target == REV_0003
    assert f"`{REV_0003}` → `{REV_0003}`" in incidents.render_markdown(found)
    assert "['" not in incidents.render_markdown(found) + "".join(incidents.render_mrkdwn(found))
    store.close()
