"""The review of pending revisions: render, lint and parse them side by side, read the live facts
once, then rate each revision and attach its acknowledgement."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence

import psycopg

from runbook.config import Environment
from runbook.review.acks import attach_acknowledgement
from runbook.review.files import file_sha256, read_allowlist, relative_path
from runbook.review.lint_cache import LintCache
from runbook.review.live import live_facts
from runbook.review.model import Acknowledgement, AllowlistError, ReviewError, RevisionReview, RiskReview
from runbook.review.rating import weigh
from runbook.review.render import Rendered, render_each, start_range
from runbook.review.squawk import run_squawk, squawk_argv
from runbook.revisions import AlembicProject, Revision, one_line
from runbook.sqlscan import Statement, statements


def _entry(rev: Revision, app_dir: Path) -> RevisionReview:
    """A revision's review before its SQL is known: the file's hash and its allowlist."""
    entry = RevisionReview(rev.revision, relative_path(rev.path, app_dir), file_sha256(rev.path), "reviewed", "low",
                           "")
    try:
        entry.allowlist = read_allowlist(rev.path)
    except AllowlistError as exc:
        entry.status, entry.problem = "error", str(exc)
    return entry


def _load_parser() -> None:
    """Import pglast (the SQL parser) ahead of need: a fresh process pays for it while Alembic runs."""
    import pglast  # noqa: F401


def review(name: str, env: Environment, conn, *, project: AlembicProject, revisions: Sequence[Revision],
           acknowledgements: Sequence[Acknowledgement] | Callable[[], Sequence[Acknowledgement]] = ()
           ) -> RiskReview:
    """Review `revisions` (oldest first, all pending on `conn`'s database); never raises for a
    revision's own problems: they are in its status. ReviewError when squawk cannot run at all.

    `acknowledgements` may be a callable: it is asked only once squawk has run, so a caller reading
    them from another process (the CLI's state sidecar) has the whole review's time to answer."""
    clock = time.monotonic()
    server_major = conn.info.server_version // 10000 if conn is not None else None
    out = RiskReview(name, [], server_major=server_major)
    if not revisions:
        return out
    argv = squawk_argv(env)
    timeout = env.review.squawk_timeout_seconds
    lints = LintCache(argv, server_major, env.review.exclude_rules, project.preview_cache_dir)
    with ThreadPoolExecutor(max_workers=4, thread_name_prefix="review") as pool:
        # While the app's Alembic renders (the caller has usually started it already): squawk's
        # version, the SQL parser's import, the files' hashes and allowlists.
        version = pool.submit(lints.squawk_version, timeout)
        whole_range = start_range(project, env.dsn, revisions, max(60.0, timeout))
        if whole_range is None or whole_range.started_process:
            pool.submit(_load_parser)        # not when the SQL is known already: it may all be linted
        entries = {rev.revision: _entry(rev, project.app_dir) for rev in revisions}
        rendered = render_each(project, env.dsn, revisions, max(60.0, timeout), whole_range)
        out.render_seconds = sum(r.seconds for r in rendered)

        def lint(item: Rendered) -> tuple[list[dict[str, Any]], float]:
            started = time.monotonic()
            return (run_squawk(item.sql or "", argv, pg_major=server_major, exclude=env.review.exclude_rules,
                               cwd=project.app_dir, timeout=timeout), time.monotonic() - started)

        # squawk for every revision not linted before, all at once (separate processes); the SQL is
        # parsed here meanwhile
        known = {item.revision.revision: lints.get(item.sql) for item in rendered if item.sql is not None}
        linting = {item.revision.revision: pool.submit(lint, item) for item in rendered
                   if item.sql is not None and known[item.revision.revision] is None}
        drafts: list[tuple[RevisionReview, list[dict[str, Any]], list[Statement], str]] = []
        for item in rendered:
            entry = entries[item.revision.revision]
            if item.sql is None:
                if entry.status != "error":
                    entry.status, entry.problem = "not reviewable offline", item.problem
                drafts.append((entry, [], [], ""))
                continue
            entry.sql_lines = item.sql.count("\n") + 1
            hit = known[entry.revision]
            drafts.append((entry, hit[0], hit[1], item.sql) if hit else (entry, [], statements(item.sql), item.sql))
        for index, (entry, _, stmts, sql) in enumerate(drafts):
            if entry.revision in linting:
                raw, seconds = linting[entry.revision].result()     # a ReviewError is raised here
                out.squawk_seconds += seconds
                drafts[index] = (entry, raw, stmts, sql)
                lints.put(sql, raw, stmts)
        out.squawk_version = version.result()

    # Every relation the SQL names, and the indexes it drops: read from the database once.
    names: set[str] = set()
    for entry, raw, stmts, _ in drafts:
        for stmt in stmts:
            names.update(rel for rel, _ in stmt.locks)
            names.update(stmt.indexes)
    names.discard(project.version_table)
    try:
        facts = live_facts(conn, names) if conn is not None else {}
    except psycopg.Error as exc:
        raise ReviewError(f"cannot read the sizes and locks of {', '.join(sorted(names))}: "
                          f"{one_line(str(exc), 200)}") from None
    index_tables = {n: f.name for n, f in facts.items() if f.exists}

    acks = acknowledgements() if callable(acknowledgements) else acknowledgements
    for entry, raw, stmts, sql in drafts:
        weigh(env, entry, raw, stmts, sql, facts, index_tables, project.version_table)
        attach_acknowledgement(entry, name, acks)
        out.revisions.append(entry)
    out.seconds = time.monotonic() - clock
    return out
