"""Issue 16, the surfaces: `runbook-bot rehearse`, `/migrate rehearse`, the approval request showing the
latest rehearsal of its range (voided by a file edit), rehearsal.required, the precheck's §1.3 item, and
the copy of a SIGKILLed CLI rehearsal dropped at the next start."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from bot.approvals import ACTION_REJECT
from runbook import ops, precheck, rehearse
from runbook.state import Store
from tests.support.migrations import alembic_version, app_copy, config_file, environment, run_cli
from tests.support.sample_app import REV_0003
from tests.support.slack import local_slack, log_lines  # noqa: F401  (fixtures)
from tests.support.waiting import wait_for
from tests.test_migrate_slack import CHANNEL, REQUESTER, make_bot, dumped  # noqa: F401  (fixtures)

ROOT = Path(__file__).resolve().parent.parent
NOTE = ("0004_incomes_note", "op.add_column('incomes', sa.Column('note', sa.Text()))",
        "op.drop_column('incomes', 'note')")
BROKEN = ("0004_broken", "op.execute('SELECT 1/0')", "pass")
SLOW = ("0004_slow", "op.execute('SELECT pg_sleep(60)')", "pass")
STAGING = precheck.HUMAN_CHECKLIST[1][1]


def _scratch(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return [r[0] for r in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'rbrehearse%'")]


def test_cli_rehearse_json_and_exit_codes_and_the_precheck_item(sample_db, tmp_path, pg_bin_dir):
    url = sample_db(REV_0003)
    config = config_file(tmp_path, url, app_dir=app_copy(tmp_path, [NOTE]), pg_bin_dir=pg_bin_dir)

    before = json.loads(run_cli(config, "precheck", "--json").stdout)
    [item] = [c for c in before["checks"] if c["name"] == STAGING]
    assert item["status"] == "warn" and not item["automatic"]

    done = run_cli(config, "rehearse", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["outcome"] == "passed" and report["error"] is None
    [rev] = report["revisions"]
    assert rev["revision"] == "0004_incomes_note" and rev["downgrade_ok"] is True
    assert {"seconds", "locks", "rewrites", "size_change_bytes"} <= set(rev)
    assert rev["rewrites"] == []       # a nullable column without a default: catalog only (its lock lasts ms)
    assert isinstance(report["backup_id"], int) and report["validation"]["passed"] is True
    assert alembic_version(url) == [REV_0003] and _scratch(url) == []

    after = json.loads(run_cli(config, "precheck", "--json").stdout)
    [item] = [c for c in after["checks"] if c["name"] == STAGING]
    assert item["status"] == "ok" and item["automatic"] and "passed" in item["detail"]

    text = run_cli(config, "rehearse")
    assert text.returncode == 0
    assert "0004_incomes_note test revision 0004_incomes_note:" in text.stdout
    assert "down ok" in text.stdout and "rewritten" not in text.stdout


def test_cli_rehearse_of_a_failing_revision_exits_1_with_its_error(sample_db, tmp_path, pg_bin_dir):
    url = sample_db(REV_0003)
    config = config_file(tmp_path, url, app_dir=app_copy(tmp_path, [BROKEN]), pg_bin_dir=pg_bin_dir)
    done = run_cli(config, "rehearse", "--json")
    assert done.returncode == 1, done.stderr
    report = json.loads(done.stdout)
    assert report["outcome"] == "failed" and "division by zero" in report["error"]
    assert alembic_version(url) == [REV_0003] and _scratch(url) == []
    bad = run_cli(config, "rehearse", "--to", "nope")
    assert bad.returncode == 2 and "nope" in bad.stdout


def test_a_killed_cli_rehearsal_leaves_no_copy_after_the_next_start(sample_db, tmp_path, pg_bin_dir):
    url = sample_db(REV_0003)
    config = config_file(tmp_path, url, app_dir=app_copy(tmp_path, [SLOW]), pg_bin_dir=pg_bin_dir)
    proc = subprocess.Popen([sys.executable, "-m", "bot.cli", "--config", str(config), "rehearse"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def sleeping() -> bool:
            with psycopg.connect(url) as conn:
                return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'rbmigrate/%' "
                                    "AND query LIKE '%pg_sleep%'").fetchone()[0] > 0
        wait_for(sleeping, timeout=120, what="the rehearsal's migration on the copy")
        assert len(_scratch(url)) == 1
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    nxt = run_cli(config, "backups")
    assert nxt.returncode == 0, nxt.stderr
    assert "rehearse run" in nxt.stderr and "dropped rbrehearse_" in nxt.stderr
    assert _scratch(url) == []
    assert alembic_version(url) == [REV_0003]


def test_rehearsal_required_refuses_a_request_without_a_passed_one(sample_db, tmp_path, pg_bin_dir):
    url = sample_db(REV_0003)
    settings, name, env = environment(tmp_path, url, app_dir=app_copy(tmp_path, [BROKEN]), pg_bin_dir=pg_bin_dir)
    env = env.model_copy(update={"rehearsal": env.rehearsal.model_copy(update={"required": True})})
    settings = settings.model_copy(update={"environments": {name: env}})
    store = Store(settings.state_url)
    store.migrate()
    with pytest.raises(ops.Refused, match="requires a passed rehearsal.*no rehearsal of it") as refused:
        ops.propose(name, env, "upgrade", "head", "/migrate run", store=store,
                    rehearse_hint="`/migrate rehearse production {target}`")
    assert "Rehearse it first" in str(refused.value)
    assert "`/migrate rehearse production 0004_broken`, then ask again" in str(refused.value)
    from bot.migrations import checked_proposal       # each surface says how its users rehearse
    with pytest.raises(ops.Refused, match=r"Rehearse it first.*`/migrate rehearse production 0004_broken`"):
        checked_proposal(name, env, "upgrade", "head", "/migrate run", store=store)
    with pytest.raises(ops.Refused, match=r"`runbook-bot rehearse --env production --to 0004_broken`"):
        checked_proposal(name, env, "upgrade", "head", "migrate --to head", store=store, cli=True)
    assert ops.rehearse(settings, store, name, actor="test").outcome == "failed"
    with pytest.raises(ops.Refused, match=r"requires a passed rehearsal.*failed: 0004_broken"):
        ops.propose(name, env, "upgrade", "head", "/migrate run", store=store)


def test_slack_rehearse_posts_the_report_and_the_request_shows_it_until_a_file_changes(sample_db, make_bot,
                                                                                       tmp_path, local_slack):
    app = app_copy(tmp_path, [NOTE])
    bot = make_bot(sample_db(REV_0003), app_dir=app)

    bot.command("rehearse", user="U0ALICE001")                 # an approver: the rehearse permission
    assert bot.runtime.flows.wait_idle(timeout=180)
    [report] = [m for m in local_slack.messages(kind="message") if "Rehearsal of production" in m.text]
    shown = dumped(report.blocks)
    assert "passed" in shown and "0004_incomes_note" in shown and "down ok" in shown
    assert _scratch(bot.url) == []

    request = bot.ask("run")
    shown = dumped(bot.message(request).blocks)
    assert "*Rehearsed*" in shown and "0004_incomes_note" in shown and "down ok" in shown
    bot.click(request, "U0ALICE001", ACTION_REJECT)

    path = app / "alembic" / "versions" / "0004_incomes_note.py"
    path.write_text(path.read_text() + "\n# edited after the rehearsal\n")
    again = bot.ask("run")
    shown = dumped(bot.message(again).blocks)
    assert "*Rehearsal void*" in shown and "0004_incomes_note changed since" in shown
    assert alembic_version(bot.url) == [REV_0003]


def test_a_request_without_a_rehearsal_says_so(sample_db, make_bot, tmp_path):
    bot = make_bot(sample_db(REV_0003), app_dir=app_copy(tmp_path, [NOTE]))
    request = bot.ask("run")
    assert "*Not rehearsed*" in dumped(bot.message(request).blocks)
    assert rehearse.latest_for(bot.store, "production", precheck.project_of(bot.env), [REV_0003],
                               "0004_incomes_note") is None
