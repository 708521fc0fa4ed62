"""runbook/revisions/ against the real sample app, real alembic subprocesses and a real PostgreSQL."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psycopg
import pytest

from runbook import revisions
from runbook.revisions import preview, scripts
from runbook.revisions import AlembicProject, AlembicState, RevisionError
from tests.support.sample_app import (ALEMBIC_ARGV, APP_DIR, REV_0001, REV_0002, REV_0003, REVISIONS,
                                      alembic, seed, upgrade)

SECRET_URL = "postgresql://u:S3cretPw@127.0.0.1:1/x"     # offline previews never connect


@pytest.fixture
def project() -> AlembicProject:
    return AlembicProject(APP_DIR, ALEMBIC_ARGV, "DATABASE_URL")


def current_of(project: AlembicProject, url: str) -> list[str]:
    with psycopg.connect(url, autocommit=True) as conn:
        return project.current(conn)


def state_of(project: AlembicProject, url: str) -> AlembicState:
    with psycopg.connect(url, autocommit=True) as conn:
        return project.state(conn)


# ---------------------------------------------------------------------------
# The sample app at its three interesting points


def test_at_0001_pending_is_0002_then_0003_with_messages_and_reversibility(project, sample_db):
    url = sample_db("0001")
    assert current_of(project, url) == [REV_0001]
    pending = project.pending([REV_0001])
    assert [r.revision for r in pending] == [REV_0002, REV_0003]
    assert [r.message for r in pending] == ["add categories table and expenses.category_id",
                                           "backfill categories from expense descriptions"]
    first, second = pending
    assert first.reversible and first.irreversible_reason is None
    assert not second.reversible
    assert second.irreversible_reason.startswith("downgrade() raises NotImplementedError: 0003 is a data backfill")
    assert first.down_revisions == (REV_0001,) and second.down_revisions == (REV_0002,)
    assert first.path == APP_DIR / "alembic" / "versions" / "0002_categories.py"

    state = state_of(project, url)
    assert state == AlembicState(current=[REV_0001], heads=[REV_0003], pending=pending)
    assert state.problem is None


def test_sql_preview_covers_the_pending_range_only_and_brings_the_database_to_head(project, sample_db):
    url = sample_db("0001")
    sql = project.sql_preview(url, [REV_0001])
    # 0002's DDL and 0003's data migration ...
    assert "CREATE TABLE categories" in sql
    assert "ALTER TABLE expenses ADD COLUMN category_id INTEGER" in sql
    assert "CREATE INDEX ix_expenses_category_id ON expenses (category_id)" in sql
    assert "INSERT INTO categories (name)" in sql
    assert f"UPDATE alembic_version SET version_num='{REV_0003}'" in sql
    # ... and nothing from 0001 or from base
    assert "CREATE TABLE expenses" not in sql
    assert "CREATE TABLE incomes" not in sql
    assert "CREATE TABLE alembic_version" not in sql

    # the preview is exactly the pending work: running it reaches head and backfills every row
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql)
        assert project.current(conn) == [REV_0003]
        missing = conn.execute("SELECT count(*) FROM expenses WHERE category_id IS NULL").fetchone()[0]
        names = {r[0] for r in conn.execute("SELECT name FROM categories").fetchall()}
    assert missing == 0
    # from the free-text column ("groceries" -> Groceries) and from descriptions ("Electric bill" -> Utilities)
    assert {"Groceries", "Rent", "Transport", "Dining", "Utilities", "Health", "Entertainment", "Other"} <= names


def test_sql_preview_to_an_intermediate_target(project, sample_db):
    url = sample_db("0001", seed_rows=0)
    sql = project.sql_preview(url, [REV_0001], target="0002")
    assert "CREATE TABLE categories" in sql
    assert "INSERT INTO categories" not in sql
    assert REV_0003 not in sql
    # nothing between a revision and itself or below it: no subprocess, empty text
    assert project.sql_preview(url, [REV_0002], target="0002") == ""
    assert project.sql_preview(url, [REV_0002], target="base") == ""


def test_at_head_nothing_is_pending_and_the_preview_is_empty(project, sample_db):
    url = sample_db("head")
    assert current_of(project, url) == [REV_0003]
    assert project.pending([REV_0003]) == []
    assert project.sql_preview(url, [REV_0003]) == ""
    state = state_of(project, url)
    assert state.current == [REV_0003] and state.heads == [REV_0003] and state.pending == []
    assert state.problem is None


def test_unversioned_database_has_no_current_and_everything_pending(project, pg_url):
    # a non-autocommit connection: looking for the missing version table must not
    # leave the caller's transaction aborted
    with psycopg.connect(pg_url) as conn:
        assert project.current(conn) == []
        assert conn.execute("SELECT 1").fetchone() == (1,)
        state = project.state(conn)
    assert state.current == []
    assert [r.revision for r in state.pending] == list(REVISIONS)
    assert [r.revision for r in project.pending([])] == list(REVISIONS)

    sql = project.sql_preview(pg_url, [])
    assert "CREATE TABLE alembic_version" in sql       # from base, the version table is part of the work
    assert "CREATE TABLE expenses" in sql and "CREATE TABLE categories" in sql


def test_unknown_current_revision_is_a_problem_not_a_crash(project, pg_url):
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY)")
        conn.execute("INSERT INTO alembic_version VALUES ('0009_from_the_future')")
        state = project.state(conn)
    assert state.current == ["0009_from_the_future"]
    assert state.pending == []
    assert "0009_from_the_future" in state.problem and "do not contain" in state.problem
    with pytest.raises(RevisionError, match="0009_from_the_future"):
        project.pending(["0009_from_the_future"])
    with pytest.raises(RevisionError, match="0009_from_the_future"):
        project.sql_preview(SECRET_URL, ["0009_from_the_future"])


def test_version_table_in_another_schema(pg_url):
    project = AlembicProject(APP_DIR, ALEMBIC_ARGV, version_table="versions", version_table_schema="Ops")
    with psycopg.connect(pg_url, autocommit=True) as conn:
        assert project.current(conn) == []
        conn.execute('CREATE SCHEMA "Ops"')
        conn.execute('CREATE TABLE "Ops".versions (version_num varchar(32) PRIMARY KEY)')
        conn.execute(f"INSERT INTO \"Ops\".versions VALUES ('{REV_0002}')")
        assert project.current(conn) == [REV_0002]


def test_downgrades_lists_what_a_downgrade_would_undo(project):
    assert [r.revision for r in project.downgrades([REV_0003])] == [REV_0003]
    undo = project.downgrades([REV_0003], "0001")
    assert [r.revision for r in undo] == [REV_0003, REV_0002]
    assert [r.reversible for r in undo] == [False, True]
    assert [r.revision for r in project.downgrades([REV_0003], "base")] == [REV_0003, REV_0002, REV_0001]


# ---------------------------------------------------------------------------
# resolve()


def test_resolve_accepts_ids_prefixes_keywords_and_relative_steps(project):
    assert project.resolve(REV_0002) == REV_0002
    assert project.resolve("0002") == REV_0002
    assert project.resolve("0003_back") == REV_0003
    assert project.resolve("head") == REV_0003
    assert project.resolve("heads") == REV_0003
    assert project.resolve("base") == "base"
    assert project.resolve("+1", [REV_0001]) == REV_0002
    assert project.resolve("+2", [REV_0001]) == REV_0003
    assert project.resolve("+1", []) == REV_0001
    assert project.resolve("-1", [REV_0003]) == REV_0002
    assert project.resolve("-1", [REV_0001]) == "base"
    assert project.resolve("head-1") == REV_0002
    assert project.resolve("0001+2") == REV_0003
    assert project.get("0002").message == "add categories table and expenses.category_id"
    assert list(project.scripts()) == list(REVISIONS)


def test_resolve_rejects_unknown_ambiguous_and_out_of_range(project):
    with pytest.raises(RevisionError) as info:
        project.resolve("0009")
    text = str(info.value)
    assert text.startswith("unknown revision '0009'")
    assert all(rev in text for rev in REVISIONS) and f"{REV_0003} (head)" in text
    with pytest.raises(RevisionError, match="ambiguous: it matches 0001_expenses_incomes, 0002_categories"):
        project.resolve("000")
    with pytest.raises(RevisionError, match="past the head"):
        project.resolve("+1", [REV_0003])
    with pytest.raises(RevisionError, match="below base"):
        project.resolve("-2", [REV_0001])
    with pytest.raises(RevisionError, match="relative to the current revision"):
        project.resolve("+1")
    with pytest.raises(RevisionError, match="no revision given"):
        project.resolve("  ")
    with pytest.raises(RevisionError, match="unknown revision"):
        project.pending([REV_0001], target="nope")


# ---------------------------------------------------------------------------
# The AST reader on throwaway apps


def write_app(root: Path, files: dict[str, str], ini_extra: str = "") -> Path:
    (root / "alembic" / "versions").mkdir(parents=True)
    (root / "alembic.ini").write_text(f"[alembic]\nscript_location = alembic\n{ini_extra}")
    for name, body in files.items():
        (root / "alembic" / "versions" / name).write_text(textwrap.dedent(body))
    return root


def rev_file(rev: str, down, downgrade_body: str, doc: str = "a message") -> str:
    body = textwrap.indent(textwrap.dedent(downgrade_body).strip("\n"), "    ")
    return (f'"""{doc}\n\nRevision ID: {rev}\nRevises: {down}\n"""\n'
            "from alembic import op\n\n"
            f"revision = {rev!r}\ndown_revision = {down!r}\n\n\n"
            "def upgrade():\n    op.create_table('t')\n\n\n"
            f"def downgrade():\n{body}\n")


def test_ast_reader_detects_irreversible_downgrades(tmp_path):
    cases = {
        "a1_pass.py": rev_file("a1", None, "pass"),
        "a2_docstring.py": rev_file("a2", "a1", '"""Nothing to undo."""'),
        "a3_ellipsis.py": rev_file("a3", "a2", '"""Doc."""\n...'),
        "a4_raise.py": rev_file("a4", "a3", 'raise NotImplementedError("data migration: restore the backup")'),
        "a5_conditional_raise.py": rev_file("a5", "a4", "if op.get_context().as_sql:\n    raise RuntimeError\n"
                                                        "op.drop_table('u')"),
        "a6_drop.py": rev_file("a6", "a5", "op.drop_table('t')"),
        "a7_commented.py": rev_file("a7", "a6", "# op.drop_table('t')\npass"),
    }
    (tmp_path / "a8_nodowngrade.py").write_text('"""no downgrade"""\nrevision = "a8"\ndown_revision = "a7"\n'
                                                "def upgrade():\n    pass\n")
    app = write_app(tmp_path / "app", cases)
    shutil.copy(tmp_path / "a8_nodowngrade.py", app / "alembic" / "versions")
    found = {r.revision: r for r in AlembicProject(app).revisions()}
    expected = {
        "a1": "downgrade() does nothing (only pass)",
        "a2": "downgrade() is empty (docstring only)",
        "a3": "downgrade() does nothing (only ...)",
        "a4": "downgrade() raises NotImplementedError: data migration: restore the backup",
        "a5": "downgrade() raises RuntimeError",
        "a6": None,
        "a7": "downgrade() does nothing (only pass)",
        "a8": "no downgrade() function",
    }
    assert {rev: r.irreversible_reason for rev, r in found.items()} == expected
    assert {rev for rev, r in found.items() if r.reversible} == {"a6"}
    assert list(found) == [f"a{i}" for i in range(1, 9)]


def test_ast_reader_reads_annotated_ids_tuples_docstrings_and_skips_non_revisions(tmp_path):
    app = write_app(tmp_path, {
        "r1.py": '"""first\n\nRevision ID: r1\n"""\nrevision: str = "r1"\ndown_revision = None\n'
                 'def downgrade():\n    op.drop_table("x")\n',
        "r2.py": '"""second line one\ncontinued\n\nRevision ID: r2"""\nrevision = "r2"\n'
                 'down_revision: tuple[str, ...] | None = ("r1",)\ndepends_on = None\nbranch_labels = ["main"]\n'
                 'def downgrade() -> None:\n    op.drop_table("y")\n',
        "__init__.py": "raise SystemExit('never imported')\n",
        ".#r3.py": "not python at all (an editor lock file)",
        "notes.txt": "ignored",
    })
    (app / "alembic" / "versions" / "__pycache__").mkdir()
    (app / "alembic" / "versions" / "__pycache__" / "r9.py").write_text("revision = 'r9'\n")
    project = AlembicProject(app)
    r1, r2 = project.revisions()
    assert (r1.revision, r1.down_revisions, r1.message, r1.reversible) == ("r1", (), "first", True)
    assert (r2.revision, r2.down_revisions, r2.message) == ("r2", ("r1",), "second line one continued")
    assert r2.branch_labels == ("main",)
    assert project.resolve("main") == "r2"
    assert project.heads() == ["r2"]


def test_branches_merges_and_several_heads(tmp_path):
    files = {
        "b0.py": rev_file("b0", None, "op.drop_table('t')"),
        "b1.py": rev_file("b1", "b0", "op.drop_table('t')"),
        "b2.py": rev_file("b2", "b0", "op.drop_table('t')"),
    }
    app = write_app(tmp_path, files)
    project = AlembicProject(app)
    assert project.heads() == ["b1", "b2"]
    with pytest.raises(RevisionError, match="several heads: merge needed"):
        project.pending(["b0"])
    with pytest.raises(RevisionError, match="several heads: merge needed"):
        project.resolve("head")
    with pytest.raises(RevisionError, match="several heads: merge needed"):
        project.sql_preview(SECRET_URL, ["b0"])
    assert project.resolve("heads") == "heads"
    assert [r.revision for r in project.pending(["b0"], "heads")] == ["b1", "b2"]
    assert [r.revision for r in project.pending(["b1"], "b2")] == ["b2"]

    # a merge revision makes a single head again; from b1 only b2 and the merge are pending
    (app / "alembic" / "versions" / "m3.py").write_text(rev_file("m3", ("b1", "b2"), "pass"))
    assert project.heads() == ["m3"]
    assert [r.revision for r in project.pending(["b1"])] == ["b2", "m3"]
    assert [r.revision for r in project.pending([])] == ["b0", "b1", "b2", "m3"]
    assert project.get("m3").down_revisions == ("b1", "b2")
    with pytest.raises(RevisionError, match="merges b1, b2"):
        project.resolve("-1", ["m3"])


def test_several_heads_in_state(tmp_path, pg_url):
    app = write_app(tmp_path, {"b0.py": rev_file("b0", None, "pass"), "b1.py": rev_file("b1", "b0", "pass"),
                               "b2.py": rev_file("b2", "b0", "pass")})
    with psycopg.connect(pg_url, autocommit=True) as conn:
        state = AlembicProject(app).state(conn)
    assert state.heads == ["b1", "b2"] and state.current == []
    assert state.problem == "several heads: merge needed (b1, b2)"
    assert [r.revision for r in state.pending] == ["b0", "b1", "b2"]


def test_broken_scripts_give_one_line_errors(tmp_path):
    app = write_app(tmp_path / "dupe", {"x1.py": rev_file("x1", None, "pass"), "x2.py": rev_file("x1", None, "pass")})
    with pytest.raises(RevisionError, match="revision x1 is defined twice"):
        AlembicProject(app).heads()
    app = write_app(tmp_path / "orphan", {"y1.py": rev_file("y1", "nope", "pass")})
    with pytest.raises(RevisionError, match="down_revision 'nope' is not a revision of this app"):
        AlembicProject(app).heads()
    app = write_app(tmp_path / "syntax", {"z1.py": "revision = 'z1'\ndef upgrade(:\n"})
    with pytest.raises(RevisionError, match=r"cannot parse z1.py line 2"):
        AlembicProject(app).heads()
    app = write_app(tmp_path / "computed", {"w1.py": "revision = 'w' + '1'\n"})
    with pytest.raises(RevisionError, match="must be a non-empty string literal"):
        AlembicProject(app).heads()
    with pytest.raises(RevisionError, match="no alembic.ini in"):
        AlembicProject(tmp_path / "nowhere").heads()


def test_ini_version_locations_here_and_config_flag(tmp_path):
    app = tmp_path / "backend"
    (app / "migrations" / "v_main").mkdir(parents=True)
    (app / "migrations" / "v_extra").mkdir(parents=True)
    (app / "migrations" / "v_main" / "c1.py").write_text(rev_file("c1", None, "pass"))
    (app / "migrations" / "v_extra" / "c2.py").write_text(rev_file("c2", "c1", "op.drop_table('t')"))
    (app / "db.ini").write_text(
        "[alembic]\nscript_location = %(here)s/migrations\npath_separator = os\n"
        f"version_locations = %(here)s/migrations/v_main{os.pathsep}migrations/v_extra\n")
    project = AlembicProject(app, ["alembic", "-c", "db.ini"])
    assert [r.revision for r in project.revisions()] == ["c1", "c2"]
    assert project.config_path == app / "db.ini"


# ---------------------------------------------------------------------------
# Cache: a warm project only stats files and never spawns a process


def test_warm_path_reuses_parsed_scripts_and_spawns_nothing(tmp_path, monkeypatch, pg_url):
    app = write_app(tmp_path, {"k1.py": rev_file("k1", None, "pass"), "k2.py": rev_file("k2", "k1", "pass")})
    parsed: list[str] = []
    real_parse = scripts.parse_revision_file

    def counting_parse(path):
        parsed.append(path.name)
        return real_parse(path)

    monkeypatch.setattr(scripts, "parse_revision_file", counting_parse)     # what _cached_parse calls
    assert AlembicProject(app).heads() == ["k2"]
    assert sorted(parsed) == ["k1.py", "k2.py"]

    def no_processes(*args, **kwargs):
        raise AssertionError("the warm path must not spawn a process")

    monkeypatch.setattr(subprocess, "Popen", no_processes)
    parsed.clear()
    fresh = AlembicProject(app)          # a new instance shares the process-wide cache
    with psycopg.connect(pg_url, autocommit=True) as conn:
        fresh.state(conn)
    fresh.pending([]), fresh.resolve("k1"), fresh.heads(), fresh.sql_preview(SECRET_URL, ["k2"])
    assert parsed == []

    # a changed file is parsed again, and only that one
    (app / "alembic" / "versions" / "k2.py").write_text(rev_file("k2", "k1", "op.drop_table('t')", doc="changed"))
    assert fresh.get("k2").message == "changed" and fresh.get("k2").reversible
    assert parsed == ["k2.py"]
    # a new file appears without restarting
    (app / "alembic" / "versions" / "k3.py").write_text(rev_file("k3", "k2", "pass"))
    assert fresh.heads() == ["k3"]

    started = time.perf_counter()
    for _ in range(100):
        fresh.pending(["k1"])
    assert (time.perf_counter() - started) / 100 < 0.01      # generous: measured well under 1 ms


# ---------------------------------------------------------------------------
# Subprocess failures: one line, redacted


def broken_copy(tmp_path: Path, env_py: str) -> Path:
    app = tmp_path / "home_budget"
    shutil.copytree(APP_DIR, app, ignore=shutil.ignore_patterns("__pycache__"))
    (app / "alembic" / "env.py").write_text(textwrap.dedent(env_py))
    return app


def test_alembic_syntax_error_is_one_redacted_line(tmp_path):
    app = broken_copy(tmp_path, "import os\nfrom alembic import context\ndef broken(:\n    pass\n")
    project = AlembicProject(app, ALEMBIC_ARGV)
    with pytest.raises(RevisionError) as info:
        project.sql_preview(SECRET_URL, [REV_0001])
    text = str(info.value)
    assert "\n" not in text
    assert "S3cretPw" not in text
    assert text.startswith(f"alembic upgrade {REV_0001}:{REV_0003} --sql failed (exit 1): SyntaxError")
    assert "alembic/env.py line 3" in text


def test_error_echoing_the_url_is_redacted(tmp_path):
    app = broken_copy(tmp_path, """\
        import os
        url = os.environ["DATABASE_URL"]
        raise RuntimeError(f"cannot use {url} (password S3cretPw)")
        """)
    with pytest.raises(RevisionError) as info:
        AlembicProject(app, ALEMBIC_ARGV).sql_preview(SECRET_URL, [])
    text = str(info.value)
    assert "S3cretPw" not in text and "\n" not in text
    assert "RuntimeError: cannot use postgresql://u:***@127.0.0.1:1/x (password ***)" in text


def test_wrong_url_env_reports_alembics_message(tmp_path, monkeypatch):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    project = AlembicProject(APP_DIR, ALEMBIC_ARGV, url_env="APP_DB_URL")
    with pytest.raises(RevisionError) as info:
        project.sql_preview(SECRET_URL, [REV_0001])
    text = str(info.value)
    assert "DATABASE_URL is not set" in text and "S3cretPw" not in text and "\n" not in text


def test_missing_command_and_timeout(tmp_path):
    with pytest.raises(RevisionError, match="cannot run '/nonexistent/alembic': not found"):
        AlembicProject(APP_DIR, ["/nonexistent/alembic"]).sql_preview(SECRET_URL, [REV_0001])
    sleeper = AlembicProject(APP_DIR, [sys.executable, "-c", "import time; time.sleep(60)"])
    started = time.monotonic()
    with pytest.raises(RevisionError, match="did not finish within 0.5 s"):
        sleeper.sql_preview(SECRET_URL, [REV_0001], timeout=0.5)
    assert time.monotonic() - started < 10


def test_preview_passes_the_url_only_through_the_environment(tmp_path):
    app = broken_copy(tmp_path, """\
        import json, os, sys
        print(json.dumps({"argv": sys.argv, "url": os.environ.get("TARGET_URL")}))
        """)
    out = AlembicProject(app, ALEMBIC_ARGV, url_env="TARGET_URL").sql_preview(SECRET_URL, [REV_0002])
    seen = json.loads(out.strip().splitlines()[-1])
    assert seen["url"] == SECRET_URL
    assert "S3cretPw" not in " ".join(seen["argv"])
    assert seen["argv"][-3:] == ["upgrade", f"{REV_0002}:{REV_0003}", "--sql"]


# ---------------------------------------------------------------------------
# seed()


def test_seed_inserts_realistic_rows_and_0003_backfills_them(pg_url):
    upgrade(pg_url, "0001")
    assert seed(pg_url, rows=120) == {"expenses": 120, "incomes": 15}
    with psycopg.connect(pg_url, autocommit=True) as conn:
        assert conn.execute("SELECT count(*), min(amount) > 0, count(DISTINCT description) > 20 "
                            "FROM expenses").fetchone() == (120, True, True)
        assert conn.execute("SELECT count(*) FROM incomes WHERE source = 'Salary'").fetchone()[0] >= 5
    upgrade(pg_url, "head")
    assert seed(pg_url, rows=10)["expenses"] == 10          # still works at head
    with psycopg.connect(pg_url, autocommit=True) as conn:
        # the 120 rows seeded before 0003 got categories, the 10 added after did not
        assert conn.execute("SELECT count(*) FILTER (WHERE category_id IS NULL), count(*) "
                            "FROM expenses").fetchone() == (10, 130)


def test_seed_script_runs_from_the_command_line(pg_url):
    upgrade(pg_url, "0001")
    result = subprocess.run([sys.executable, "seed.py", "--rows", "16"], cwd=APP_DIR, capture_output=True,
                            text=True, env={**os.environ, "DATABASE_URL": pg_url}, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "inserted 16 expenses and 2 incomes"


def test_sample_app_0002_is_really_reversible_and_0003_really_is_not(pg_url):
    # 0002: up, down, up again (a "stairway" step) on a seeded database
    upgrade(pg_url, "0001")
    seed(pg_url, rows=20)
    upgrade(pg_url, "0002")
    alembic(pg_url, "downgrade", "0001")
    with psycopg.connect(pg_url, autocommit=True) as conn:
        assert conn.execute("SELECT to_regclass('categories')").fetchone() == (None,)
        assert conn.execute("SELECT count(*) FROM expenses").fetchone() == (20,)
    upgrade(pg_url, "head")
    result = alembic(pg_url, "downgrade", "-1", check=False)
    assert result.returncode != 0
    assert "NotImplementedError" in result.stderr
    with psycopg.connect(pg_url, autocommit=True) as conn:
        assert AlembicProject(APP_DIR).current(conn) == [REV_0003]


def test_sql_preview_is_reused_until_a_script_changes(tmp_path):
    """The rendering is cached on disk by the scripts' stamps: a fresh process reuses it,
    an edited revision renders again."""
    app = tmp_path / "app"
    shutil.copytree(APP_DIR, app, ignore=shutil.ignore_patterns("__pycache__"))
    cache = tmp_path / "cache"
    dsn = "postgresql://u:S3cretPw@127.0.0.1:1/x"
    first = AlembicProject(app, ALEMBIC_ARGV, preview_cache_dir=cache).sql_preview(dsn, [REV_0001])
    assert "CREATE TABLE categories" in first
    [cached_file] = list(cache.glob("*.sql"))
    assert cached_file.read_text() == first and "S3cretPw" not in first
    cached_file.write_text(first + "-- served from the cache\n")
    preview._PREVIEW_CACHE.clear()            # as in a new process
    again = AlembicProject(app, ALEMBIC_ARGV, preview_cache_dir=cache).sql_preview(dsn, [REV_0001])
    assert again.endswith("-- served from the cache\n")
    script = app / "alembic" / "versions" / f"{REV_0002}.py"
    script.write_text(script.read_text().replace("categories", "categories", 1) + "\n# reviewed\n")
    os.utime(script, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    fresh = AlembicProject(app, ALEMBIC_ARGV, preview_cache_dir=cache).sql_preview(dsn, [REV_0001])
    assert "served from the cache" not in fresh and "CREATE TABLE categories" in fresh


# ---------------------------------------------------------------------------
# One render of a range, cut into its steps (the risk review's input)


def test_a_range_render_cuts_into_exactly_what_each_step_renders(tmp_path):
    from tests.support.migrations import app_copy

    app = app_copy(tmp_path, [("0004_incomes_note", "op.add_column('incomes', sa.Column('note', sa.Text()))",
                               "op.drop_column('incomes', 'note')")])
    project = AlembicProject(app, ALEMBIC_ARGV, preview_cache_dir=tmp_path / "cache")
    steps = [(REV_0001, REV_0002), (REV_0002, REV_0003), (REV_0003, "0004_incomes_note")]
    whole = project.sql_preview(SECRET_URL, [REV_0001], "0004_incomes_note")
    parts = revisions.per_revision_sql(whole, steps)
    assert parts is not None and list(parts) == [up for _, up in steps]
    for down, up in steps:
        assert parts[up] == project.sql_preview(SECRET_URL, [down], up), up
    assert "ADD COLUMN note TEXT" in parts["0004_incomes_note"] and "CREATE TABLE" not in parts["0004_incomes_note"]


def test_a_range_from_base_cuts_into_what_each_step_renders(tmp_path):
    """From base the range's render creates the version table first: the first step's own render
    does too, the later ones do not. So a fresh database's precheck still runs Alembic once."""
    project = AlembicProject(APP_DIR, ALEMBIC_ARGV, preview_cache_dir=tmp_path / "cache")
    whole = project.sql_preview(SECRET_URL, [], REV_0003)
    steps = [("", REV_0001), (REV_0001, REV_0002), (REV_0002, REV_0003)]
    parts = revisions.per_revision_sql(whole, steps)
    assert parts is not None
    assert parts[REV_0001] == project.sql_preview(SECRET_URL, [], REV_0001)
    assert "CREATE TABLE alembic_version" in parts[REV_0001]
    for down, up in steps[1:]:
        assert parts[up] == project.sql_preview(SECRET_URL, [down], up), up
        assert "CREATE TABLE alembic_version" not in parts[up]


def test_a_render_that_is_not_one_plain_transaction_is_not_cut(tmp_path):
    steps = [(REV_0001, REV_0002), (REV_0002, REV_0003)]
    project = AlembicProject(APP_DIR, ALEMBIC_ARGV)
    whole = project.sql_preview(SECRET_URL, [REV_0001])
    assert revisions.per_revision_sql(whole, steps) is not None
    assert revisions.per_revision_sql(whole, steps[:1]) is None                  # markers not the steps asked
    assert revisions.per_revision_sql(whole, list(reversed(steps))) is None
    from_base = project.sql_preview(SECRET_URL, [], REV_0002)                    # creates the version table first
    assert revisions.per_revision_sql(from_base, [("base", REV_0001), (REV_0001, REV_0002)]) is None
    from_0001 = project.sql_preview(SECRET_URL, [REV_0001], REV_0003)
    assert "CREATE TABLE alembic_version" not in from_0001
    assert revisions.per_revision_sql(from_0001.replace("BEGIN;\n", "BEGIN;\n\nCREATE TABLE alembic_version (\n"
                                                        "    version_num VARCHAR(32) NOT NULL\n);\n", 1),
                                      steps) is None     # a version table created mid-range is not cut

    app = tmp_path / "app"                                                       # a transaction per migration
    shutil.copytree(APP_DIR, app, ignore=shutil.ignore_patterns("__pycache__"))
    env_py = app / "alembic" / "env.py"
    env_py.write_text(env_py.read_text().replace("literal_binds=True,", "literal_binds=True, "
                                                 "transaction_per_migration=True,", 1))
    per_migration = AlembicProject(app, ALEMBIC_ARGV).sql_preview(SECRET_URL, [REV_0001])
    assert per_migration.count("BEGIN;") == 2
    assert revisions.per_revision_sql(per_migration, steps) is None


def test_sample_app_models_match_its_revisions(sample_db):
    """The sample app's env.py imports its models (target_metadata), as real apps do; `alembic
    check` (autogenerate) finds nothing to do at head, so the models and the revisions agree, and
    they import with only the environment the bot gives the app's alembic."""
    url = sample_db(REV_0003, seed_rows=0)
    result = alembic(url, "check")
    assert "No new upgrade operations detected" in result.stdout + result.stderr
    # Alembic applies the models' naming convention to the revisions' operations too: the names the
    # revisions give must come out as written (a convention on %(constraint_name)s would double them).
    sql = alembic(url, "upgrade", f"base:{REV_0003}", "--sql").stdout
    for name in ("ck_expenses_amount_not_negative", "ck_incomes_amount_not_negative", "uq_categories_name",
                 "fk_expenses_category_id_categories", "ix_expenses_category_id", "ix_expenses_date"):
        assert len(re.findall(rf"\b{name}\b", sql)) == 1, name


def test_one_render_is_shared_by_every_caller_and_a_cancelled_one_is_stopped(tmp_path):
    """The precheck starts the app's Alembic and the risk review asks for the same preview while it
    runs: they share one process. A render nobody wants any more (an early start that guessed the
    wrong range) is killed."""
    from tests.support.migrations import alembic_runs, counting_alembic

    argv, log = counting_alembic(tmp_path)
    project = AlembicProject(APP_DIR, argv, preview_cache_dir=tmp_path / "cache")
    first = project.start_sql_preview(SECRET_URL, [REV_0001])
    again = AlembicProject(APP_DIR, argv, preview_cache_dir=tmp_path / "cache").start_sql_preview(
        SECRET_URL, [REV_0001], REV_0003)
    assert again is first and first.started_process
    assert project.sql_preview(SECRET_URL, [REV_0001]) == first.result() == again.result()
    assert "CREATE TABLE categories" in first.result()
    assert alembic_runs(log) == [f"upgrade {REV_0001}:{REV_0003} --sql"]
    assert not project.start_sql_preview(SECRET_URL, [REV_0001]).started_process       # cached now

    other = AlembicProject(APP_DIR, argv, preview_cache_dir=tmp_path / "cache")
    wanted = other.start_sql_preview(SECRET_URL, [REV_0002])
    shared = other.start_sql_preview(SECRET_URL, [REV_0002])
    assert shared is wanted
    shared.cancel()                  # one of its two callers gave up: it goes on for the other
    assert f"Running upgrade {REV_0002} -> {REV_0003}" in wanted.result()

    guess = other.start_sql_preview(SECRET_URL, [], REV_0002)
    guess.cancel()
    started = time.monotonic()
    with pytest.raises(RevisionError) as info:
        guess.result()
    assert time.monotonic() - started < 10 and "S3cretPw" not in str(info.value)
    assert "cancelled" in str(info.value) and guess._process.returncode == -signal.SIGKILL
    assert other.start_sql_preview(SECRET_URL, [], REV_0002) is not guess     # not shared once cancelled
