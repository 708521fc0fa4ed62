"""§5 validation against the real sample database, and the §6.5 decision tree it feeds."""
from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psycopg
import pytest

from runbook import rollback, validate
from runbook.precheck import project_of
from tests.support.configs import with_password
from tests.support.migrations import assert_no_secret, config_file, environment, PASSWORD, run_cli
from tests.support.sample_app import REV_0001, REV_0002, REV_0003
from tests.support.sessions import Sessions


def _check(report: validate.ValidationReport, name: str) -> validate.ValidationCheck:
    return next(c for c in report.checks if c.name == name)


def _execute(url: str, *statements: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


def test_a_healthy_database_passes(sample_db, tmp_path):
    url = sample_db("head")
    _, name, env = environment(tmp_path, url, validation={
        "tables": ["expenses", "public.incomes"], "required_columns": {"expenses": ["date", "amount"]}})
    report = validate.validate(name, env)
    assert report.passed and report.error is None and report.current == [REV_0003] == report.expected
    assert [c.status for c in report.checks if c.name != "smoke command" and c.name != "health URL"] == \
        ["pass"] * (len(report.checks) - 2)
    assert "expenses 50" in _check(report, "row counts").detail


def test_not_valid_foreign_key_with_orphans_and_an_invalid_index_are_caught(sample_db, tmp_path):
    url = sample_db("head")
    _, name, env = environment(tmp_path, url)
    _execute(url,
             "CREATE TABLE budgets (id int PRIMARY KEY)",
             "ALTER TABLE expenses ADD COLUMN budget_id int",
             "UPDATE expenses SET budget_id = 999 WHERE id = (SELECT min(id) FROM expenses)",   # the orphan
             "ALTER TABLE expenses ADD CONSTRAINT fk_expenses_budget FOREIGN KEY (budget_id) "
             "REFERENCES budgets (id) NOT VALID",
             "INSERT INTO incomes (date, amount, source) VALUES (current_date, 1, 'dup'), (current_date, 2, 'dup')")
    with pytest.raises(psycopg.errors.UniqueViolation):
        _execute(url, "CREATE UNIQUE INDEX CONCURRENTLY ix_incomes_source ON incomes (source)")

    report = validate.validate(name, env)
    assert not report.passed and report.corruption
    fk = _check(report, "foreign key fk_expenses_budget")
    assert fk.status == "fail" and "1 row(s) of expenses point to no row of budgets (NOT VALID)" in fk.detail
    assert fk.tables == ("expenses",)
    # A validated key the run did not touch is not scanned (it cannot hold orphans).
    assert all(c.name != "foreign key fk_expenses_category_id_categories" for c in report.checks)
    invalid = _check(report, "invalid indexes")
    assert invalid.status == "fail" and "ix_incomes_source on incomes (INVALID" in invalid.detail

    # On demand (no run): the newest revision is the one in question; corruption -> full restore.
    rec = rollback.decide(project=project_of(env), start=None, current=report.current, validation=report)
    assert rec.action == "full_restore" and rec.walk[0].answer == "yes" and "fk_expenses_budget" in rec.walk[0].evidence


def test_orphans_cleared_make_the_not_valid_key_pass_with_a_hint(sample_db, tmp_path):
    url = sample_db("head")
    _, name, env = environment(tmp_path, url)
    _execute(url, "CREATE TABLE budgets (id int PRIMARY KEY)", "ALTER TABLE expenses ADD COLUMN budget_id int",
             "ALTER TABLE expenses ADD CONSTRAINT fk_expenses_budget FOREIGN KEY (budget_id) "
             "REFERENCES budgets (id) NOT VALID")
    fk = _check(validate.validate(name, env), "foreign key fk_expenses_budget")
    assert fk.status == "pass" and "VALIDATE CONSTRAINT can now be run" in fk.detail


def test_data_loss_is_flagged_against_the_baseline(sample_db, tmp_path):
    url = sample_db(REV_0002)
    _, name, env = environment(tmp_path, url, validation={"tables": ["expenses", "incomes"]})
    with psycopg.connect(url, autocommit=True) as conn:
        baseline = validate.take_baseline(conn, env)
    assert baseline.row_counts["expenses"] == 50
    _execute(url, "DELETE FROM expenses WHERE id IN (SELECT id FROM expenses ORDER BY id LIMIT 5)")
    report = validate.validate(name, env, expected=[REV_0002], baseline=baseline)
    counts = _check(report, "row counts")
    assert counts.status == "fail" and counts.kind == "data_loss" and report.data_loss
    assert "expenses 50 -> 45 (-5)" in counts.detail and counts.tables == ("expenses",)
    rec = rollback.decide(project=project_of(env), start=[REV_0001], current=[REV_0002], validation=report)
    assert rec.action == "full_restore" and "lost" in rec.headline


def test_wrong_version_required_column_nulls_and_unknown_names(sample_db, tmp_path):
    url = sample_db(REV_0002)
    _, name, env = environment(tmp_path, url, validation={
        "tables": ["expenses", "nope"],
        "required_columns": {"expenses": ["description", "amount"], "incomes": ["colour"], "ghosts": ["id"]}})
    _execute(url, "UPDATE expenses SET description = NULL WHERE id IN (SELECT id FROM expenses LIMIT 3)")
    report = validate.validate(name, env)          # expected: the head, 0003
    assert _check(report, "alembic version").detail == f"alembic_version is {REV_0002}, expected {REV_0003}"
    assert "configured in validation.tables but not in the database: nope" in _check(report, "tables present").detail
    nulls = _check(report, "required columns expenses")
    assert nulls.status == "fail" and nulls.detail == "NULLs in required columns: description 3" and report.corruption
    assert "incomes has no column colour" in _check(report, "required columns incomes").detail
    assert _check(report, "required columns ghosts").detail == "table ghosts does not exist"


def test_indexes_the_run_created_are_present_valid_and_their_usage_shown(sample_db, tmp_path):
    url = sample_db(REV_0001)
    _, name, env = environment(tmp_path, url)
    with psycopg.connect(url, autocommit=True) as conn:
        baseline = validate.take_baseline(conn, env)
    _execute(url, "CREATE INDEX ix_incomes_source ON incomes (source)")
    report = validate.validate(name, env, expected=[REV_0001], baseline=baseline,
                               expected_indexes=["ix_incomes_source", "ix_never_built"])
    assert "ix_incomes_source valid, 0 scan(s)" in _check(report, "new indexes").detail
    missing = _check(report, "new indexes present")
    assert missing.status == "fail" and "ix_never_built" in missing.detail


def test_validation_queries_do_not_queue_behind_a_lock(sample_db, tmp_path):
    url = sample_db(REV_0003)
    _, name, env = environment(tmp_path, url, validation={"tables": ["expenses"], "lock_timeout": "200ms"})
    with Sessions(url) as sessions:
        locker = sessions.open(autocommit=False)
        locker.execute("LOCK TABLE expenses IN ACCESS EXCLUSIVE MODE")
        report = validate.validate(name, env)
    counts = _check(report, "row counts")
    assert counts.status == "fail" and "could not check" in counts.detail and report.duration_seconds < 10


class _Health(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - the http.server API
        self.send_response(200 if self.path == "/health" else 503)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


@pytest.fixture
def health_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def test_smoke_command_and_health_url_pass_and_fail(sample_db, tmp_path, health_server):
    url = with_password(sample_db("head"), PASSWORD)
    ok_smoke = [sys.executable, "-c", "import os, sys; sys.exit(0 if os.environ['DATABASE_URL'] else 1)"]
    _, name, env = environment(tmp_path, url, validation={"smoke_command": ok_smoke,
                                                          "health_url": health_server + "/health"})
    report = validate.validate(name, env)
    assert _check(report, "smoke command").status == "pass" and _check(report, "health URL").status == "pass"
    assert report.passed

    bad_smoke = [sys.executable, "-c", "import os; print('connecting to', os.environ['DATABASE_URL']); "
                                       "raise SystemExit(3)"]
    _, name, env = environment(tmp_path, url, validation={"smoke_command": bad_smoke,
                                                          "health_url": health_server + "/down"})
    report = validate.validate(name, env)
    smoke = _check(report, "smoke command")
    assert smoke.status == "fail" and "failed (exit 3)" in smoke.detail and "connecting to" in smoke.detail
    assert _check(report, "health URL").detail.endswith("answered 503") and not report.passed
    assert_no_secret(PASSWORD, json.dumps(validate.report_to_json(report)))

    slow = [sys.executable, "-c", "import time; time.sleep(30)"]
    _, name, env = environment(tmp_path, url, validation={
        "smoke_command": slow, "smoke_timeout_seconds": 0.5,
        "health_url": "http://127.0.0.1:1/health", "health_timeout_seconds": 1})
    report = validate.validate(name, env)
    assert "did not finish within 0.5 s" in _check(report, "smoke command").detail
    assert _check(report, "health URL").status == "fail"


def test_cli_validate_exit_codes_and_json(sample_db, tmp_path):
    url = with_password(sample_db(REV_0002), PASSWORD)
    config = config_file(tmp_path, url, validation={"tables": ["expenses"]})
    failing = run_cli(config, "validate")                        # at 0002, the head is 0003
    assert failing.returncode == 1 and "Validation production" in failing.stdout and "FAIL" in failing.stdout
    _execute(url.replace(f":{PASSWORD}@", "@"), "UPDATE alembic_version SET version_num = '0003_backfill_categories'")
    passing = run_cli(config, "validate", "--json")
    assert passing.returncode == 0, passing.stdout + passing.stderr
    payload = json.loads(passing.stdout)
    assert payload["passed"] is True and payload["current"] == [REV_0003]
    assert {c["name"] for c in payload["checks"]} >= {"alembic version", "row counts", "invalid indexes"}
    unreachable = run_cli(config_file(tmp_path, f"postgresql://ops:{PASSWORD}@127.0.0.1:1/x"), "validate")
    assert unreachable.returncode == 2 and "ERROR" in unreachable.stdout
    for out in (failing, passing, unreachable):
        assert_no_secret(PASSWORD, out.stdout, out.stderr)


def test_tables_and_indexes_are_read_from_rendered_sql():
    text = ('CREATE TABLE categories (id SERIAL);\nALTER TABLE expenses ADD COLUMN category_id INTEGER;\n'
            'ALTER TABLE expenses ADD CONSTRAINT fk FOREIGN KEY(category_id) REFERENCES categories (id);\n'
            'CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS "Ix_Mixed" ON public."Budget Lines" (x);\n'
            "UPDATE alembic_version SET version_num='0002';\nINSERT INTO audit.log (x) VALUES (1);")
    assert validate.tables_in_sql(text) == ["categories", "expenses", "public.Budget Lines", "audit.log"]
    assert validate.indexes_in_sql(text) == ["Ix_Mixed"]


def test_decision_tree_paths(tmp_path, sample_db):
    url = sample_db(REV_0001)
    _, name, env = environment(tmp_path, url)
    project = project_of(env)
    unchanged = rollback.decide(project=project, start=[REV_0001], current=[REV_0001], failure="boom")
    assert unchanged.action == "none" and "boom" in unchanged.headline
    reversible = rollback.decide(project=project, start=[REV_0001], current=[REV_0002], failure="x")
    assert reversible.action == "downgrade" and reversible.target_revision == REV_0001
    assert [s.answer for s in reversible.walk] == ["yes", "unknown", "yes"]
    irreversible = rollback.decide(project=project, start=[REV_0002], current=[REV_0003], touched_tables=["expenses"])
    assert irreversible.action == "table_restore" and irreversible.tables == ["expenses"]
    unknown_tables = rollback.decide(project=project, start=[REV_0002], current=[REV_0003])
    assert unknown_tables.action == "full_restore"
    no_backup = rollback.decide(project=project, start=[REV_0002], current=[REV_0003], backup_available=False)
    assert no_backup.action == "escalate" and "no backup" in no_backup.headline
    unreadable = rollback.decide(project=project, start=[REV_0002], current=None, failure="connection refused")
    assert unreadable.action == "escalate"
    assert rollback.recommendation_to_json(irreversible)["section"] == "6.3"
