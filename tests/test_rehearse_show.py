"""Issue 16, where a rehearsal shows: the "Rehearse first" button of an unrehearsed migrate or rollback
request (run under `/migrate rehearse`'s rules for the clicker, in the request's thread, the request drawn
again after), a real run's summary against its rehearsal's time per revision (Slack, the CLI's text and
--json), and the risk review's findings confirmed or refuted by what the rehearsal measured.

Real Bolt app over signed HTTP, real embedded PostgreSQL, real alembic and pg_restore; only Slack's Web
API is bot/localslack.py."""
from __future__ import annotations

import json

import psycopg

from bot.approvals import ACTION_APPROVE
from bot.migration_blocks import ACTION_REHEARSE_FIRST, rehearsal_message
from bot.render.core import validate
from bot.server import Runtime
from runbook import rehearse
from runbook.state.runs import RunStore
from tests.support.migrations import alembic_version, app_copy, config_file, run_cli
from tests.support.sample_app import REV_0003, upgrade
from tests.support.slack import local_slack, log_lines  # noqa: F401  (fixtures)
from tests.support.slack import SIGNING_SECRET
from tests.test_migrate_slack import (ALICE, BOB, BOT_TOKEN, CHANNEL, MALLORY, REQUESTER, MigrateBot,  # noqa: F401
                                      _settings, buttons, dumped, make_bot)

NOTE = ("0004_incomes_note", "op.add_column('incomes', sa.Column('note', sa.Text()))",
        "op.drop_column('incomes', 'note')")
# CREATE INDEX without CONCURRENTLY takes SHARE on expenses; the sleep keeps it held (same transaction)
INDEX = ("0004_expenses_amount_index",
         "op.execute('CREATE INDEX ix_expenses_amount ON expenses (amount)')\nop.execute('SELECT pg_sleep(1.2)')",
         "op.execute('DROP INDEX ix_expenses_amount')")


def _scratch(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return [r[0] for r in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'rbrehearse%'")]


def _rehearsals(bot) -> list:
    return RunStore(bot.store).list(kinds=(rehearse.KIND,), limit=50)


def _events(bot, action: str) -> list:
    return bot.store.events(action=action, limit=100)


def test_rehearse_first_rehearses_in_the_thread_then_the_request_and_its_run_show_it(sample_db, make_bot, tmp_path,
                                                                                      local_slack):
    bot = make_bot(sample_db(REV_0003), app_dir=app_copy(tmp_path, [NOTE]))
    request = bot.ask("run")
    message = bot.message(request)
    shown = dumped(message.blocks)
    assert "*Not rehearsed*" in shown and "*Rehearse first* (or `/migrate rehearse production 0004_incomes_note`)" \
        in shown
    [rehearse_first] = [b for b in buttons(message) if b["action_id"] == ACTION_REHEARSE_FIRST]
    assert rehearse_first["value"] == request.id                   # the opaque id, nothing else

    # forged and malformed values: one line each, nothing runs
    bot.click(request, MALLORY, ACTION_REHEARSE_FIRST, value="0004'; DROP TABLE expenses")
    bot.click(request, MALLORY, ACTION_REHEARSE_FIRST, value="0" * len(request.id))
    assert bot.ephemerals(MALLORY) == [
        ":warning: That button does not carry an id the bot gave out; nothing was changed.",
        ":warning: That button's request does not exist; nothing was changed."]
    assert _rehearsals(bot) == []

    # the rehearse permission (approvers by default): a copy on the target's server is not for anyone,
    # the requester included; the refusal is recorded and nothing runs
    for who in (MALLORY, REQUESTER):
        bot.click(request, who, ACTION_REHEARSE_FIRST)
        assert bot.ephemerals(who)[-1].startswith(f":warning: Only the approvers (<@{ALICE}>, <@{BOB}>) may "
                                                  "rehearse on a restored copy")
    assert [e.actor for e in _events(bot, "rehearse") if e.outcome == "unauthorised"] == [REQUESTER, MALLORY]   # newest first
    assert _rehearsals(bot) == [] and _scratch(bot.url) == []

    bot.click(request, BOB, ACTION_REHEARSE_FIRST)
    [run] = _rehearsals(bot)
    assert run.actor == BOB and run.state == "succeeded"
    [report] = [m for m in bot.thread(request) if "Rehearsal of production" in m.text]
    assert "passed" in report.text and "0004_incomes_note" in dumped(report.blocks)
    shown = dumped(bot.message(request).blocks)                    # the request, drawn again
    assert "*Rehearsed*" in shown and "down ok" in shown and "*Not rehearsed*" not in shown
    assert ACTION_REHEARSE_FIRST not in {b["action_id"] for b in buttons(bot.message(request))}
    [audit] = [e for e in _events(bot, "rehearse_first") if e.outcome == "ok"]
    assert audit.actor == BOB and audit.details["rehearsal_run_id"] == run.id
    assert alembic_version(bot.url) == [REV_0003] and _scratch(bot.url) == []

    # the stale button: rehearsed already, nothing more runs
    bot.click(request, ALICE, ACTION_REHEARSE_FIRST)
    assert "rehearsed already" in bot.ephemerals(ALICE)[-1] and len(_rehearsals(bot)) == 1

    # the real run: its summary against the rehearsal, per revision
    bot.click(request, ALICE, ACTION_APPROVE)
    done = bot.get(request)
    assert done.state == "done", done.result_summary
    compared = done.result["rehearsal"]
    assert compared["run_id"] == run.id and compared["outcome"] == "passed"
    [timed] = compared["revisions"]
    assert timed["revision"] == "0004_incomes_note" and timed["seconds"] > 0 and timed["rehearsed_seconds"] > 0
    shown = dumped(bot.message(request).blocks)
    assert "*Against its rehearsal*" in shown
    assert f"0004_incomes_note test revision 0004_incomes_note: {timed['seconds']:.2f} s (rehearsed " \
           f"{timed['rehearsed_seconds']:.2f} s)" in shown


def test_rehearse_first_is_held_to_the_rules_of_migrate_rehearse_for_the_clicker(sample_db, tmp_path, local_slack,
                                                                                  pg_bin_dir):
    """A click is the clicker's /migrate rehearse: where /migrate is not taken (slack.command_channels), the
    click is refused as the command would be, recorded as such, and nothing runs."""
    team = "C0TEAMROOM"
    local_slack.join(team)
    settings = _settings(tmp_path, sample_db(REV_0003), app_dir=app_copy(tmp_path, [NOTE]), migration=None,
                         validation=None, state_url=f"sqlite:///{tmp_path / 'state.db'}", pg_bin_dir=pg_bin_dir)
    settings = settings.model_copy(update={"slack": settings.slack.model_copy(update={"command_channels": [team]})})
    runtime = Runtime.build(settings, bot_token=BOT_TOKEN, api_url=local_slack.url, signing_secret=SIGNING_SECRET)
    server = runtime.serve_http("127.0.0.1", 0, background=True)
    try:
        bot = MigrateBot(runtime, server, local_slack, settings.environments["production"].database_url
                         .get_secret_value())
        bot.command("run", channel=team)
        [request] = bot.requests("migrate")
        assert request.channel == CHANNEL                          # the approvals channel, where commands are not taken
        assert ACTION_REHEARSE_FIRST in {b["action_id"] for b in buttons(bot.message(request))}
        bot.click(request, ALICE, ACTION_REHEARSE_FIRST)
        [refusal] = bot.ephemerals(ALICE)
        assert "`/migrate` is not taken in this channel" in refusal and "Nothing was done" in refusal
        [event] = [e for e in _events(bot, "rehearse") if e.outcome == "unauthorised"]
        assert event.actor == ALICE
        assert _rehearsals(bot) == [] and _scratch(bot.url) == []
    finally:
        server.close()
        runtime.close()


def test_a_rollback_request_rehearses_on_a_backup_at_its_target_and_its_run_compares_the_way_down(
        sample_db, make_bot, tmp_path, local_slack):
    app = app_copy(tmp_path, [NOTE])
    bot = make_bot(sample_db(REV_0003), app_dir=app)
    bot.backup()                                                   # at 0003: what the rollback goes back to
    upgrade(bot.url, "0004_incomes_note", app_dir=app)
    request = bot.ask("rollback")
    shown = dumped(bot.message(request).blocks)
    assert "*Not rehearsed*" in shown and "a rollback counts the rehearsal of" in shown
    bot.click(request, BOB, ACTION_REHEARSE_FIRST)
    [run] = _rehearsals(bot)
    assert run.state == "succeeded" and run.result["from"] == [REV_0003] and run.result["to"] == "0004_incomes_note"
    assert "*Rehearsed*" in dumped(bot.message(request).blocks)
    assert alembic_version(bot.url) == ["0004_incomes_note"] and _scratch(bot.url) == []

    bot.click(request, ALICE, ACTION_APPROVE)
    done = bot.get(request)
    assert done.state == "done", done.result_summary
    [timed] = done.result["rehearsal"]["revisions"]
    assert timed["rehearsed_seconds"] == run.result["revisions"][0]["downgrade_seconds"] > 0
    assert alembic_version(bot.url) == [REV_0003]


def test_the_cli_rehearsal_weighs_the_risk_review_and_the_runs_compare_with_it(sample_db, tmp_path, pg_bin_dir):
    url = sample_db(REV_0003)
    config = config_file(tmp_path, url, app_dir=app_copy(tmp_path, [INDEX]), pg_bin_dir=pg_bin_dir)
    # every table counts as large, so the review rates the index high
    config.write_text(config.read_text().replace(
        "    backups:", "    review: {large_table_bytes: 1, medium_table_bytes: 1}\n    backups:", 1))

    done = run_cli(config, "rehearse", "--json")
    assert done.returncode == 0, done.stderr + done.stdout
    report = json.loads(done.stdout)
    [rev] = report["revisions"]
    [check] = [c for c in rev["risk_checks"] if c["rule"] == "require-concurrent-index-creation"]
    assert check["finding"] == "CREATE INDEX without CONCURRENTLY on expenses" and check["rated"] == "high"
    assert check["measured"].startswith("SHARE lock on expenses for at least ") and check["verdict"] == "confirmed"
    message = validate(rehearsal_message(report, environment="production"))      # Block Kit limits
    assert "rated high, measured SHARE lock on expenses for at least" in dumped(message.blocks)
    assert "lower bound" in dumped(message.blocks)

    migrated = run_cli(config, "migrate", "--yes", "--override-gate", "the rehearsal measured it")  # rated HIGH
    assert migrated.returncode == 0, migrated.stderr + migrated.stdout
    assert f"against its rehearsal (run {report['run_id'][:8]}, passed):" in migrated.stdout
    assert "0004_expenses_amount_index test revision 0004_expenses_amount_index: " in migrated.stdout
    assert "(rehearsed " in migrated.stdout

    rolled = run_cli(config, "rollback", "--yes", "--json")
    assert rolled.returncode == 0, rolled.stderr + rolled.stdout
    compared = json.loads(rolled.stdout)["rehearsal"]
    assert compared["run_id"] == report["run_id"]
    [timed] = compared["revisions"]
    assert timed["rehearsed_seconds"] == rev["downgrade_seconds"] and timed["seconds"] > 0


def test_a_finding_the_measurement_refutes_and_the_text_report():
    """The verdicts, decided from the measured locks (no database needed for the rule itself)."""
    from runbook.review import Finding, RevisionReview

    def finding(rule: str, rating: str) -> Finding:
        return Finding(rule, "", "", 1, 0, "CREATE INDEX ...", ("expenses",), rating, "")

    entry = RevisionReview("0004", "x.py", "sha", "reviewed", "high", "",
                           findings=[finding("require-concurrent-index-creation", "high"),
                                     finding("ban-drop-column", "medium")])
    quick = rehearse.RevisionReport("0004", "add index", seconds=0.05, ok=True,
                                    locks=[rehearse.LockHeld("expenses", "SHARE", 0.02)])
    index, column = rehearse.risk_checks(entry, quick, 20)
    assert (index.rated, index.verdict) == ("high", "refuted")
    assert index.measured == "SHARE lock on expenses for at least 20 ms"
    assert column.verdict is None                   # not about locks: shown, neither confirmed nor refuted
    unseen = rehearse.RevisionReport("0004", "add index", seconds=0.01, ok=True)
    [index, _] = rehearse.risk_checks(entry, unseen, 20)
    assert index.measured == "no lock seen on expenses: any was shorter than a sample (20 ms)"
    assert index.verdict == "refuted"
    quick.risk_checks = rehearse.risk_checks(entry, quick, 20)
    result = rehearse.Rehearsal("r1", "production", outcome="passed", target="0004", revisions=[quick])
    text = rehearse.render_text(result)
    assert ("    risk: CREATE INDEX without CONCURRENTLY on expenses: rated high, measured SHARE lock on expenses "
            "for at least 20 ms: refuted") in text
    assert rehearse.to_json(result)["revisions"][0]["risk_checks"][0]["verdict"] == "refuted"

    # a lock seen by one sample only has no measured length: never "for 0 ms", which reads as not held
    once = rehearse.RevisionReport("0004", "add index", seconds=0.03, ok=True,
                                   locks=[rehearse.LockHeld("expenses", "ACCESS EXCLUSIVE", 0.0)])
    [index, _] = rehearse.risk_checks(entry, once, 20)
    assert index.measured == "ACCESS EXCLUSIVE lock on expenses briefly (seen by one sample)"
    line = rehearse.revision_line(once)
    assert line == "0004 add index: 30 ms, ACCESS EXCLUSIVE on expenses briefly (seen by one sample)", line
    [untabled] = rehearse.risk_checks(RevisionReview("0004", "x.py", "sha", "reviewed", "low", "",
                                                     findings=[Finding("prefer-text-field", "", "", 1, 0, "", (),
                                                                       "low", "")]), once, 20)
    assert untabled.measured == "nothing to weigh it against (no table named; the revision took 30 ms)"
