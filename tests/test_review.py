"""Issue 7: the risk review of pending revisions (squawk on each revision's own SQL, weighed against
the live database), its acknowledgement, and the promotion gate.

Real PostgreSQL, the real squawk binary (squawk-cli), real alembic subprocesses on throwaway copies of
the sample app (tests/support/migrations.py)."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import psycopg
import pytest

from runbook import migrate, precheck, review
from runbook.config import ConfigError, parse_settings
from runbook.revisions import AlembicProject
from runbook.state import Store
from runbook.units import human_size
from tests.support.migrations import alembic_version, app_copy, assert_no_secret, environment, PASSWORD
from tests.support.configs import with_password
from tests.support.sample_app import APP_DIR, REV_0003
from tests.support.sessions import Sessions
from tests.support.slack import log_lines  # noqa: F401  (a fixture)

# The revisions the review must flag, each with the rule squawk reports for it.
INDEX = ("0004_index_amount", 'op.create_index("ix_expenses_amount", "expenses", ["amount"])',
         'op.drop_index("ix_expenses_amount", table_name="expenses")')
NOT_NULL = ("0005_description_required", 'op.alter_column("expenses", "description", nullable=False)',
            'op.alter_column("expenses", "description", nullable=True)')
FOREIGN_KEY = ("0006_income_category",
               'op.add_column("incomes", sa.Column("category_id", sa.BigInteger(), nullable=True))\n'
               'op.create_foreign_key("fk_incomes_category_id", "incomes", "categories", ["category_id"], ["id"])',
               'op.drop_constraint("fk_incomes_category_id", "incomes", type_="foreignkey")\n'
               'op.drop_column("incomes", "category_id")')
READS_DATA = ("0007_count_expenses",
              'count = op.get_bind().execute(sa.text("SELECT count(*) FROM expenses")).scalar()\n'
              'op.execute(f"COMMENT ON TABLE expenses IS \'{count} rows at 0007\'")',
              'op.execute("COMMENT ON TABLE expenses IS NULL")')


def _size(url: str, table: str) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT pg_total_relation_size(%s::regclass)", [table]).fetchone()[0]


def _with_review(settings, name: str, **review_keys):
    env = settings.environments[name]
    env = env.model_copy(update={"review": env.review.model_copy(update=review_keys)})
    return settings.model_copy(update={"environments": {**settings.environments, name: env}}), env


@pytest.fixture
def risky_app(tmp_path, sample_db):
    """Factory: the sample app at 0003 with 2000 expenses (~250 incomes) and `revisions` pending.
    Thresholds sit between the two tables' real sizes: expenses is "large", incomes "medium"."""
    def make(revisions):
        url = with_password(sample_db(REV_0003, seed_rows=2000), PASSWORD)
        app = app_copy(tmp_path, revisions)
        settings, name, env = environment(tmp_path, url, app_dir=app)
        expenses, incomes = _size(url, "expenses"), _size(url, "incomes")
        assert incomes < expenses
        settings, env = _with_review(settings, name, large_table_bytes=expenses, medium_table_bytes=incomes)
        return settings, name, env, url, app

    return make


@pytest.fixture
def risky(risky_app):
    """The four revisions pending, the data-reading one last."""
    return risky_app([INDEX, NOT_NULL, FOREIGN_KEY, READS_DATA])


def _by_revision(report) -> dict[str, review.RevisionReview]:
    return {r.revision: r for r in report.risk.revisions}


def test_a_range_that_renders_offline_is_rendered_once_for_the_review_and_the_preview(risky_app, tmp_path):
    settings, name, env, url, app = risky_app([INDEX, NOT_NULL, FOREIGN_KEY])
    cache = tmp_path / "previews"
    project = AlembicProject(env.app_dir, list(env.alembic), env.url_env, preview_cache_dir=cache)
    report = precheck.run_precheck(name, env, project=project)
    assert [c.status for c in report.checks if c.name == "SQL preview"] == ["ok"]
    reviewed = _by_revision(report)
    assert [r.status for r in reviewed.values()] == ["reviewed"] * 3
    assert [f.rule for f in reviewed[INDEX[0]].findings] == ["require-concurrent-index-creation"]
    [rendered] = list(cache.glob("*.sql"))               # one alembic render served both
    assert rendered.read_text() == report.sql_preview
    # each finding's line is the line of its statement in that revision's own render
    downs = {INDEX[0]: REV_0003, NOT_NULL[0]: INDEX[0], FOREIGN_KEY[0]: NOT_NULL[0]}
    for entry in reviewed.values():
        own = precheck.project_of(env).sql_preview(env.dsn, [downs[entry.revision]], entry.revision).splitlines()
        for finding in entry.findings:
            assert finding.statement.split()[0] in own[finding.line - 1], (entry.revision, finding.line)


def test_each_risky_revision_is_flagged_with_its_rule_revision_file_line_and_table_size(risky):
    settings, name, env, url, app = risky
    report = precheck.run_precheck(name, env)
    reviewed = _by_revision(report)
    assert list(reviewed) == [INDEX[0], NOT_NULL[0], FOREIGN_KEY[0], READS_DATA[0]]
    expenses_size = human_size(_size(url, "expenses"))
    incomes_size = human_size(_size(url, "incomes"))

    index = reviewed[INDEX[0]]
    assert index.path == f"alembic/versions/{INDEX[0]}.py"
    assert [f.rule for f in index.findings] == ["require-concurrent-index-creation"]
    finding = index.findings[0]
    assert finding.tables == ("expenses",) and "CREATE INDEX ix_expenses_amount" in finding.statement
    # the line is the one of that statement in `alembic upgrade 0003:0004 --sql`
    sql = precheck.project_of(env).sql_preview(env.dsn, [REV_0003], INDEX[0])
    assert "CREATE INDEX ix_expenses_amount" in sql.splitlines()[finding.line - 1]
    assert index.rating == "high"
    assert index.reason.startswith(f"CREATE INDEX without CONCURRENTLY on expenses, {expenses_size}")
    assert "writes blocked for the build" in index.reason

    not_null = reviewed[NOT_NULL[0]]
    assert [f.rule for f in not_null.findings] == ["adding-not-nullable-field"]
    assert not_null.rating == "high" and f"SET NOT NULL on expenses, {expenses_size}" in not_null.reason

    fk = reviewed[FOREIGN_KEY[0]]
    rules = {f.rule for f in fk.findings}
    assert {"adding-foreign-key-constraint", "constraint-missing-not-valid"} <= rules
    fk_finding = next(f for f in fk.findings if f.rule == "adding-foreign-key-constraint")
    assert fk_finding.tables == ("incomes", "categories")
    assert fk.rating == "medium" and f"on incomes, {incomes_size}" in fk.reason    # the smaller table

    data = reviewed[READS_DATA[0]]
    assert data.status == "not reviewable offline" and data.findings == []
    assert data.reason.startswith("cannot be reviewed offline:")
    assert "op.get_bind() at line" in data.reason and data.rating == "medium"
    # the range cannot be rendered offline because of it: a warning, and the SQL up to it is shown
    [preview_check] = [c for c in report.checks if c.name == "SQL preview"]
    assert preview_check.status == "warn" and preview_check.detail.startswith(
        f"{READS_DATA[0]} cannot be rendered offline (upgrade() reads the database): the SQL up to "
        f"{FOREIGN_KEY[0]} is shown; review its upgrade() by hand")
    assert "CREATE INDEX ix_expenses_amount" in report.sql_preview and "fk_incomes_category_id" in report.sql_preview
    assert "COMMENT ON TABLE" not in report.sql_preview and not report.errors

    # high and not acknowledged: no-go, saying which revision and how to acknowledge it
    assert report.verdict == "no-go"
    assert not any(reason.startswith("SQL preview") for reason in report.reasons)
    check = next(c for c in report.checks if c.name == "risk review")
    assert check.status == "fail" and INDEX[0] in check.detail and NOT_NULL[0] in check.detail
    assert f"/migrate ack-risk {name} {INDEX[0]} REASON" in check.detail

    as_json = precheck.report_to_json(report)
    assert as_json["risk"]["highest"] == "high"
    assert as_json["risk"]["blocking"] == [INDEX[0], NOT_NULL[0]]
    assert as_json["verdict"] == "no-go" and "pending" in as_json        # existing keys kept
    assert_no_secret(PASSWORD, json.dumps(as_json))


def _allow(app: Path, revision: str, literal: str) -> Path:
    """Put a module-level `squawk_allow = <literal>` into a revision file of the copied app."""
    path = app / "alembic" / "versions" / f"{revision}.py"
    text = path.read_text()
    path.write_text(text.replace("depends_on = None\n", f"depends_on = None\n\nsquawk_allow = {literal}\n", 1))
    return path


def test_an_allowlist_entry_silences_exactly_its_finding_and_shows_its_reason(risky):
    settings, name, env, url, app = risky
    _allow(app, INDEX[0], '{"require-concurrent-index-creation": "built in the 2 a.m. window, reviewed by @dba"}')
    _allow(app, FOREIGN_KEY[0], '{"constraint-missing-not-valid": "incomes is append-only", '
                                '"ban-drop-column": "stale entry"}')
    reviewed = _by_revision(precheck.run_precheck(name, env))

    index = reviewed[INDEX[0]]
    assert index.findings == [] and [f.rule for f in index.silenced] == ["require-concurrent-index-creation"]
    assert index.silenced[0].allowed == "built in the 2 a.m. window, reviewed by @dba"
    assert index.rating == "low" and "1 silenced" in index.reason

    fk = reviewed[FOREIGN_KEY[0]]
    assert [f.rule for f in fk.silenced] == ["constraint-missing-not-valid"]
    assert "adding-foreign-key-constraint" in {f.rule for f in fk.findings}      # the other one remains
    assert fk.unused_allows == ["ban-drop-column"]                                # allowed, never reported
    # an allowlist in one revision silences nothing in another
    assert [f.rule for f in reviewed[NOT_NULL[0]].findings] == ["adding-not-nullable-field"]


@pytest.mark.parametrize("literal, expected", [
    ('["require-concurrent-index-creation"]', "squawk_allow must be a dict of squawk rule -> reason"),
    ('{"require-concurent-index-creation": "typo"}',
     "'require-concurent-index-creation' is not a squawk rule (did you mean require-concurrent-index-creation?)"),
    ('{"require-concurrent-index-creation": "  "}', "require-concurrent-index-creation needs a reason"),
    ('dict(a=1)', "squawk_allow must be a literal dict"),
])
def test_a_malformed_allowlist_is_one_line_naming_file_and_line_and_makes_the_precheck_no_go(risky, literal,
                                                                                                expected):
    settings, name, env, url, app = risky
    path = _allow(app, INDEX[0], literal)
    with pytest.raises(review.AllowlistError) as caught:
        review.read_allowlist(path)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{INDEX[0]}.py line 14: ") and expected in message
    report = precheck.run_precheck(name, env)
    index = _by_revision(report)[INDEX[0]]
    assert index.status == "error" and index.rating == "high" and expected in index.reason
    assert report.verdict == "no-go"
    # the rule is not silenced by a broken list: the SQL is still reported as it is
    assert index.findings == []


def test_acknowledging_the_high_revisions_turns_the_precheck_go_until_the_file_changes(risky_app):
    # the data-reading revision would be a warning of its own: left out to show the verdict turn go
    settings, name, env, url, app = risky_app([INDEX, NOT_NULL, FOREIGN_KEY])
    store = Store(settings.state_url)
    store.migrate()
    project = precheck.project_of(env)
    acks = lambda: review.acknowledgements(store, name)      # noqa: E731
    assert precheck.run_precheck(name, env, acknowledgements=acks).verdict == "no-go"

    for revision in (INDEX[0], NOT_NULL[0]):
        review.acknowledge(store, name, env, revision, "runs in the 2 a.m. window; the app is paused", "U0APPROVE1",
                           project=project, current=[REV_0003])
    report = precheck.run_precheck(name, env, acknowledgements=acks)
    assert report.verdict == "go", report.reasons
    check = next(c for c in report.checks if c.name == "risk review")
    assert check.status == "warn"
    assert f"{INDEX[0]} HIGH, acknowledged by U0APPROVE1: runs in the 2 a.m. window" in check.detail
    event = store.events(environment=name, action=review.ACK_ACTION, limit=1)[0]
    assert event.actor == "U0APPROVE1" and event.details["revision"] == NOT_NULL[0]

    # the acknowledgement is bound to the file as it was reviewed: an edit needs a new one
    path = app / "alembic" / "versions" / f"{INDEX[0]}.py"
    path.write_text(path.read_text() + "\n# edited after the review\n")
    report = precheck.run_precheck(name, env, acknowledgements=acks)
    assert report.verdict == "no-go"
    index = _by_revision(report)[INDEX[0]]
    assert index.acknowledgement is None and index.stale_acknowledgement is not None
    assert "earlier version of the file" in next(c for c in report.checks if c.name == "risk review").detail


@pytest.mark.parametrize("revision, reason, expected", [
    ("0099_nope", "fine", "unknown revision '0099_nope'"),
    (REV_0003, "fine", f"{REV_0003} is not pending on production (at {REV_0003}"),
    (INDEX[0], "   ", "say why it is acceptable"),
    (INDEX[0], "x" * 301, "the reason is 301 characters long: keep it to 300"),
])
def test_a_bad_acknowledgement_is_refused_in_one_line_and_records_nothing(risky, revision, reason, expected):
    settings, name, env, url, app = risky
    store = Store(settings.state_url)
    store.migrate()
    with pytest.raises(review.AcknowledgeError) as caught:
        review.acknowledge(store, name, env, revision, reason, "U0APPROVE1", project=precheck.project_of(env),
                           current=[REV_0003])
    assert expected in str(caught.value) and "\n" not in str(caught.value)
    assert store.events(action=review.ACK_ACTION) == []


def test_a_session_holding_a_conflicting_lock_raises_the_rating_and_names_it(risky):
    settings, name, env, url, app = risky
    before = _by_revision(precheck.run_precheck(name, env))
    assert before[FOREIGN_KEY[0]].rating == "medium" and before[FOREIGN_KEY[0]].live == []
    with Sessions(url) as sessions:
        reader = sessions.open(application_name="nightly-report", autocommit=False)
        reader.execute("SELECT count(*) FROM incomes")       # ACCESS SHARE on incomes, kept: idle in transaction
        writer = sessions.open(application_name="importer", autocommit=False)
        writer.execute("SELECT count(*) FROM expenses")      # a reader of expenses: CREATE INDEX can share with it
        report = precheck.run_precheck(name, env)
        reviewed = _by_revision(report)
        fk = reviewed[FOREIGN_KEY[0]]
        assert fk.rating == "high" and fk.findings_rating == "medium" and fk.live_high and fk.blocking
        assert fk.reason.startswith(f"pid {reader.info.backend_pid} (nightly-report, idle in transaction")
        assert "holds AccessShareLock on incomes" in fk.reason and "ALTER TABLE (AccessExclusiveLock)" in fk.reason
        # CREATE INDEX takes SHARE, which a reader does not block: 0004's rating is the findings' alone
        assert reviewed[INDEX[0]].live == []
        # SET NOT NULL takes ACCESS EXCLUSIVE: the reader of expenses is in its way
        assert any(f"pid {writer.info.backend_pid} (importer" in line for line in reviewed[NOT_NULL[0]].live)
        holders = [h for t in fk.tables if t.name == "incomes" for h in t.holders]
        assert [h.pid for h in holders] == [reader.info.backend_pid]
        # a live lock cannot be acknowledged away
        store = Store(settings.state_url)
        store.migrate()
        review.acknowledge(store, name, env, FOREIGN_KEY[0], "reviewed", "U0APPROVE1",
                           project=precheck.project_of(env), current=[REV_0003])
        again = precheck.run_precheck(name, env, acknowledgements=lambda: review.acknowledgements(store, name))
        assert _by_revision(again)[FOREIGN_KEY[0]].blocking and again.verdict == "no-go"
    after = _by_revision(precheck.run_precheck(name, env))
    assert after[FOREIGN_KEY[0]].rating == "medium" and after[FOREIGN_KEY[0]].live == []


# ---------------------------------------------------------------------------
# The promotion gate: staging and production, two real databases, one configuration

SAFE = ("0004_expense_note", 'op.add_column("expenses", sa.Column("note", sa.Text(), nullable=True))',
        'op.drop_column("expenses", "note")')
SAFE_2 = ("0005_income_note", 'op.add_column("incomes", sa.Column("note", sa.Text(), nullable=True))',
          'op.drop_column("incomes", "note")')


@pytest.fixture
def promotion(tmp_path, pg_server, sample_db):
    """staging and production of one app (two databases at 0003); production has promote_from: staging."""
    import uuid

    from tests.support.sample_app import sample_db_at

    production_url = with_password(sample_db(REV_0003), PASSWORD)
    staging_name = "t_" + uuid.uuid4().hex[:12]
    staging_url = with_password(sample_db_at(pg_server.create_database(staging_name), REV_0003), PASSWORD)
    app = app_copy(tmp_path, [SAFE, SAFE_2])
    from tests.support.configs import write_config
    from tests.support.sample_app import ALEMBIC_ARGV

    path = write_config(tmp_path, production_url, extra_env="\n".join([
        "    promote_from: staging",
        "  staging:",
        f"    database_url: {json.dumps(staging_url)}",
        f"    app_dir: {json.dumps(str(app))}",
        f"    alembic: {json.dumps(ALEMBIC_ARGV)}",
        "    backups: {dir: backups-staging}",
    ]))
    path.write_text(path.read_text().replace(json.dumps(str(APP_DIR)), json.dumps(str(app))))
    settings = parse_settings(path.read_text(), source=path)
    assert settings.environments["production"].app_dir == app
    store = Store(settings.state_url)
    store.migrate()
    yield settings, store, production_url, staging_url
    pg_server.drop_database(staging_name)


def test_the_promotion_gate_refuses_production_until_staging_is_migrated_and_validated(promotion, tmp_path):
    settings, store, production_url, staging_url = promotion
    production = settings.environments["production"]
    staging = settings.environments["staging"]

    proposal = migrate.propose("production", production, store=store)
    assert proposal.target == SAFE_2[0]
    assert proposal.refusal is not None and proposal.refusal.startswith(
        "promotion gate: production takes only revisions the bot applied and validated on staging first; "
        f"{SAFE_2[0]} has not been: the bot has no successful migration of staging on record")
    assert f"`/migrate run staging {SAFE_2[0]}`" in proposal.refusal
    # without the state database there is no evidence: refused, not waved through
    assert "state database" in migrate.propose("production", production).refusal
    # run() enforces it too (the CLI's --yes and an approval made before the gate are both stopped)
    refused = migrate.upgrade("production", production, store=store, log_dir=tmp_path / "logs")
    assert refused.outcome == "refused" and "has not been" in refused.error
    assert alembic_version(production_url) == [REV_0003]

    # staging to the first revision only: production may follow to it, not beyond
    first = migrate.upgrade("staging", staging, target=SAFE[0], store=store, log_dir=tmp_path / "logs")
    assert first.outcome == "succeeded" and first.validation.passed
    assert migrate.propose("production", production, target=SAFE[0], store=store).refusal is None
    beyond = migrate.propose("production", production, store=store)
    assert f"staging's latest migration by the bot reached {SAFE[0]} (run {first.run_id})" in beyond.refusal

    second = migrate.upgrade("staging", staging, store=store, log_dir=tmp_path / "logs")
    assert second.outcome == "succeeded" and second.validation.passed
    allowed = migrate.propose("production", production, store=store)
    assert allowed.refusal is None and allowed.promotion.allowed
    assert allowed.promotion.evidence_run_id == second.run_id
    result = migrate.upgrade("production", production, store=store, log_dir=tmp_path / "logs")
    assert result.outcome == "succeeded" and alembic_version(production_url) == [SAFE_2[0]]

    # a rollback on staging withdraws the evidence for what it undid
    migrate.downgrade("production", production, target=SAFE[0], store=store, log_dir=tmp_path / "logs")
    back = migrate.downgrade("staging", staging, target=SAFE[0], store=store, log_dir=tmp_path / "logs")
    assert back.outcome == "succeeded"
    again = migrate.propose("production", production, store=store)
    assert f"{SAFE_2[0]} was rolled back on staging (run {back.run_id}" in again.refusal
    assert_no_secret(PASSWORD, again.refusal, refused.error, beyond.refusal)


@pytest.mark.parametrize("extra, expected", [
    ("    promote_from: production\n", "environments.production.promote_from: an environment cannot be promoted "
                                       "from itself"),
    ("    promote_from: qa\n", "environments.production.promote_from: 'qa' is not a configured environment"),
    ("    promote_from: staging\n  staging: {database_url: 'postgresql://x/s', app_dir: '.', promote_from: "
     "production}\n", "promotion cycle production -> staging -> production"),
    ("    review: {large_table_bytes: 12 furlongs}\n",
     "environments.production.review.large_table_bytes: Value error, must be a size such as 100MB"),
    ("    review: {medium_table_bytes: 1GB, large_table_bytes: 1MB}\n",
     "medium_table_bytes must not be larger than large_table_bytes"),
    ("    review: {exclude_rules: [Not A Rule]}\n", "environments.production.review.exclude_rules[0]: not a valid"),
    ("    review: {squawk_timeout_seconds: 0}\n", "environments.production.review.squawk_timeout_seconds: "),
    ("    review: {large_table_bytes: 1GB, colour: red}\n", "environments.production.review.colour: unknown key"),
])
def test_malformed_review_and_promotion_config_is_one_line_naming_the_key(tmp_path, extra, expected):
    from tests.support.configs import config_text

    text = config_text("postgresql://localhost/db", extra_env=extra.rstrip("\n"))
    with pytest.raises(ConfigError) as caught:
        parse_settings(text, source=tmp_path / "runbook-bot.yaml")
    assert expected in str(caught.value) and "\n" not in str(caught.value)


def test_review_sizes_read_as_binary_units(tmp_path):
    from tests.support.configs import config_text

    text = config_text("postgresql://localhost/db",
                       extra_env="    review: {large_table_bytes: 2GB, medium_table_bytes: 512 kB}")
    env = parse_settings(text, source=tmp_path / "x.yaml").environments["production"]
    assert env.review.large_table_bytes == 2 << 30 and env.review.medium_table_bytes == 512 << 10
    default = parse_settings(config_text("postgresql://localhost/db"), source=tmp_path / "x.yaml")
    assert default.environments["production"].review.large_table_bytes == 100 << 20
    assert default.environments["production"].promote_from is None


# ---------------------------------------------------------------------------
# Over Slack (the real Bolt app over signed HTTP, LocalSlack) and the command line

def test_precheck_shows_the_review_and_an_approver_acknowledges_it_over_slack(risky_app, tmp_path, log_lines):
    from bot.localslack import LocalSlack
    from tests.test_end_to_end import BOT_TOKEN, ack_text, command, everything_slack_saw, start

    settings, name, env, url, app = risky_app([INDEX, NOT_NULL, FOREIGN_KEY])
    with LocalSlack(joined=("C0TESTCHAN", "C0RUNBOOK1")) as slack:
        runtime, server = start(settings, slack)
        try:
            command(server, runtime, "precheck")
            [posted] = slack.messages(kind="message")
            rendered = json.dumps(posted.blocks)
            assert "NO-GO" in posted.text and "*Risk review*: highest :red_circle: *HIGH*" in rendered
            assert "require-concurrent-index-creation" in rendered and "adding-not-nullable-field" in rendered
            assert f"/migrate ack-risk production {INDEX[0]} REASON" in rendered

            # malformed: refused in the ack itself, one line, nothing recorded
            answer = command(server, runtime, f"ack-risk {INDEX[0]}")
            assert ack_text(answer).startswith(f":warning: Say why the risk of {INDEX[0]} is acceptable")
            # not an approver: refused, audited, nothing acknowledged
            command(server, runtime, f"ack-risk {INDEX[0]} looks fine to me")
            refusal = slack.messages(kind="ephemeral")[-1]
            assert refusal.text == (":warning: Only the approvers (<@U0APPROVE1>) may acknowledge a risk rating "
                                    "(`/migrate ack-risk`) on production; nothing was done.")
            # an unknown revision: one line, nothing acknowledged
            command(server, runtime, "ack-risk 0099_nope fine", user_id="U0APPROVE1")
            assert "unknown revision '0099_nope'" in slack.messages(kind="ephemeral")[-1].text
            store = Store(settings.state_url)
            assert review.acknowledgements(store, name) == []

            for revision in (INDEX[0], NOT_NULL[0]):
                command(server, runtime, f"ack-risk {revision} built at 2 a.m. with the app paused",
                        user_id="U0APPROVE1")
                confirmation = slack.messages(kind="message")[-1]
                assert "<@U0APPROVE1> acknowledged the risk of" in json.dumps(confirmation.blocks)
            command(server, runtime, "precheck")
            again = slack.messages(kind="message")[-1]
            assert again.text.startswith("Precheck production: GO")
            assert "acknowledged by <@U0APPROVE1>" in json.dumps(again.blocks)
            events = store.events(action=review.ACK_ACTION)
            assert [(e.actor, e.outcome) for e in events] == [("U0APPROVE1", "ok"), ("U0APPROVE1", "ok")]
            assert [e.actor for e in store.events(action="ack-risk") if e.outcome == "unauthorised"] == ["U0TESTER1"]
            seen = everything_slack_saw(slack) + log_lines.getvalue()
            assert PASSWORD not in seen and BOT_TOKEN not in seen
        finally:
            server.close()
            runtime.close()


@pytest.fixture
def root_logging():
    """bot.cli.main installs its redacting handler on the root logger, writing to the captured stderr
    of this test: put the root logger back as it was, so no later test logs into a closed stream."""
    import logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


def test_cli_precheck_json_carries_the_review_and_ack_risk_clears_it(risky_app, tmp_path, capsys, root_logging):
    from bot.cli import main

    settings, name, env, url, app = risky_app([INDEX, NOT_NULL, FOREIGN_KEY])
    config = tmp_path / "runbook-bot.yaml"        # written by the fixture: the same environment, on the app copy
    config.write_text(config.read_text().replace(json.dumps(str(APP_DIR)), json.dumps(str(app))).replace(
        "    thresholds: {}",
        "    thresholds: {}\n"
        f"    review: {{large_table_bytes: {env.review.large_table_bytes}, "
        f"medium_table_bytes: {env.review.medium_table_bytes}}}"))
    assert main(["--config", str(config), "precheck", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["risk"]["blocking"] == [INDEX[0], NOT_NULL[0]]
    assert report["risk"]["revisions"][0]["findings"][0]["rule"] == "require-concurrent-index-creation"

    assert main(["--config", str(config), "ack-risk", "0099_nope", "--reason", "fine"]) == 1
    assert "runbook-bot: ack-risk refused: unknown revision '0099_nope'" in capsys.readouterr().err
    for revision in (INDEX[0], NOT_NULL[0]):
        assert main(["--config", str(config), "ack-risk", revision, "--reason", "window booked"]) == 0
    assert "acknowledged by cli:" in capsys.readouterr().out
    assert main(["--config", str(config), "precheck"]) == 0
    out = capsys.readouterr().out
    assert "risk review (squawk" in out and f"HIGH   {INDEX[0]}: CREATE INDEX without CONCURRENTLY" in out
    assert "acknowledged by cli:" in out and PASSWORD not in out


@pytest.mark.parametrize("squawk, timeout, expected", [
    (["/nonexistent/squawk"], 30, "cannot run '/nonexistent/squawk': not found (pip install squawk-cli"),
    ([sys.executable, "-c", "import time; time.sleep(30)"], 0.5,
     "squawk did not finish within 0.5 s (review.squawk_timeout_seconds)"),
    ([sys.executable, "-c", "print('not json')"], 30, "squawk's output is not JSON: not json"),
    ([sys.executable, "-c", "import sys; sys.exit(3)"], 30, "squawk failed (exit 3)"),
])
def test_a_squawk_that_cannot_run_fails_the_review_in_one_line(risky_app, squawk, timeout, expected):
    settings, name, env, url, app = risky_app([INDEX])
    settings, env = _with_review(settings, name, squawk=squawk, squawk_timeout_seconds=timeout)
    started = time.monotonic()
    report = precheck.run_precheck(name, env)
    assert time.monotonic() - started < 20              # a hung squawk is stopped, not waited for
    check = next(c for c in report.checks if c.name == "risk review")
    assert check.status == "fail" and check.detail.startswith("not reviewed: ") and expected in check.detail
    assert report.verdict == "no-go" and report.risk is None and "\n" not in check.detail


def test_the_approval_request_renders_the_review_from_its_stored_params_within_slack_limits(risky_app):
    from bot.blocks import Message, validate
    from bot.review_blocks import request_risk_blocks

    settings, name, env, url, app = risky_app([INDEX, NOT_NULL, FOREIGN_KEY])
    proposal = migrate.propose(name, env)
    assert proposal.refusal is None and [r.revision for r in proposal.risk.revisions] == [
        INDEX[0], NOT_NULL[0], FOREIGN_KEY[0]]
    params = json.loads(json.dumps(review.risk_params(proposal)))      # as the approvals table keeps it
    blocks = request_risk_blocks(params, name)
    rendered = json.dumps(blocks)
    assert "require-concurrent-index-creation" in rendered
    assert "CREATE INDEX without CONCURRENTLY on expenses" in rendered
    validate(Message(text="request", blocks=blocks))
    # a long review is cut with a pointer, never over Slack's limits, and HIGH ratings come first
    many = dict(params["risk"])
    many["revisions"] = [dict(params["risk"]["revisions"][2], revision=f"{n:04d}_x", reason="r" * 380)
                         for n in range(60)] + [params["risk"]["revisions"][0]]
    cut = request_risk_blocks({"risk": many}, name)
    validate(Message(text="request", blocks=cut))
    assert len(cut) == 2 and INDEX[0] in cut[0]["text"]["text"] and "more lines" in cut[0]["text"]["text"]
    failed = request_risk_blocks({"risk": None, "risk_error": "squawk not found: install it"}, name)
    assert "not reviewed — squawk not found" in failed[0]["text"]["text"]


def test_a_table_locked_access_exclusive_is_still_weighed_from_the_catalog(risky_app):
    settings, name, env, url, app = risky_app([INDEX])
    with Sessions(url) as sessions:
        locker = sessions.open(application_name="maintenance", autocommit=False)
        locker.execute("LOCK TABLE expenses IN ACCESS EXCLUSIVE MODE")   # pg_total_relation_size would wait
        report = precheck.run_precheck(name, env)
        index = _by_revision(report)[INDEX[0]]
        assert next(c for c in report.checks if c.name == "connectivity").status == "ok"
        [expenses] = index.tables
        assert not expenses.exact_size and expenses.size_bytes > 0 and expenses.describe().startswith("~")
        assert index.rating == "high" and index.live and index.blocking
        assert index.reason.startswith(f"pid {locker.info.backend_pid} (maintenance, idle in transaction")
        assert "holds AccessExclusiveLock on expenses" in index.reason


def test_squawk_lints_each_revisions_sql_once_until_it_changes(risky_app, tmp_path):
    """A fresh process reviewing SQL linted before (the same text: a touched revision file renders
    it again) reuses the findings and the parsed statements kept beside the previews; new SQL
    is linted, and gets the same findings as ever."""
    from runbook.review.lint_cache import LintCache

    settings, name, env, url, app = risky_app([INDEX, NOT_NULL])
    real = review.squawk_argv(env)[0]
    log = tmp_path / "squawk-runs.log"
    wrapper = tmp_path / "counting_squawk.py"
    wrapper.write_text("import subprocess, sys\n"
                       f"open({str(log)!r}, 'a').write(' '.join(sys.argv[1:]) + '\\n')\n"
                       f"sys.exit(subprocess.run([{real!r}, *sys.argv[1:]]).returncode)\n")
    settings, env = _with_review(settings, name, squawk=[sys.executable, str(wrapper)])
    runs = lambda: [line for line in (log.read_text().splitlines() if log.exists() else []) if "--reporter" in line]

    first = precheck.run_precheck(name, env)
    assert len(runs()) == 2
    LintCache._memory.clear()                       # as a fresh process: only the files are left
    again = precheck.run_precheck(name, env)
    assert len(runs()) == 2
    assert [(r.revision, r.rating, r.reason, [(f.rule, f.line, f.statement) for f in r.findings])
            for r in again.risk.revisions] == \
           [(r.revision, r.rating, r.reason, [(f.rule, f.line, f.statement) for f in r.findings])
            for r in first.risk.revisions]
    assert again.risk.squawk_version == first.risk.squawk_version is not None

    # a changed revision is linted again; the other is not
    path = app / "alembic" / "versions" / f"{NOT_NULL[0]}.py"
    path.write_text(path.read_text().replace("def upgrade() -> None:\n",
                                             "def upgrade() -> None:\n    op.execute('SELECT 1')\n", 1))
    LintCache._memory.clear()
    changed = precheck.run_precheck(name, env)
    assert len(runs()) == 3
    assert [f.rule for f in _by_revision(changed)[NOT_NULL[0]].findings] == ["adding-not-nullable-field"]
