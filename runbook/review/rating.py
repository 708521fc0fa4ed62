"""Rating: each squawk finding weighed against the live table it is about, and a revision rated by
its worst finding, raised by a conflicting lock held right now."""
from __future__ import annotations

import bisect
from typing import Any, Sequence

from runbook.config import Environment
from runbook.review.model import RATINGS, Finding, Rating, RevisionReview, TableFacts
from runbook.review.squawk import SQUAWK_RULES
from runbook.revisions import one_line
from runbook.sqlscan import Statement, conflicts


# Rules whose cost grows with the table: a build, scan or rewrite while a lock is held.
# rule -> what happens, phrased after "<what> on <table>, <size>: ".
SIZE_RULES = {
    "require-concurrent-index-creation": ("CREATE INDEX without CONCURRENTLY", "writes blocked for the build"),
    "adding-not-nullable-field": ("SET NOT NULL", "reads and writes blocked while every row is checked"),
    "constraint-missing-not-valid": ("constraint without NOT VALID", "writes blocked while every row is checked"),
    "adding-foreign-key-constraint": ("FOREIGN KEY without NOT VALID",
                                      "writes to both tables blocked while every row is checked"),
    "disallowed-unique-constraint": ("UNIQUE constraint", "reads and writes blocked while its index is built"),
    "changing-column-type": ("column type change", "reads and writes blocked while the table is rewritten"),
    "adding-field-with-default": ("column with a volatile default",
                                  "reads and writes blocked while the table is rewritten"),
    "adding-serial-primary-key-field": ("serial primary key", "reads and writes blocked while the table is rewritten"),
    "require-concurrent-reindex": ("REINDEX without CONCURRENTLY", "writes blocked for the rebuild"),
    "require-concurrent-index-deletion": ("DROP INDEX without CONCURRENTLY", "reads and writes wait for the lock"),
    "require-concurrent-partition-detach": ("DETACH PARTITION without CONCURRENTLY",
                                            "reads and writes blocked for the detach"),
    "prefer-repack": ("a table rewrite", "reads and writes blocked while it runs"),
}
# Rules that are serious whatever the size: rating and what to tell the reviewer.
FIXED_RULES: dict[str, tuple[Rating, str]] = {
    "ban-drop-table": ("high", "drops a table: its data is gone (only a restore brings it back)"),
    "ban-drop-database": ("high", "drops a database"),
    "ban-truncate-cascade": ("high", "TRUNCATE … CASCADE empties every table that references it"),
    "ban-concurrent-index-creation-in-transaction": (
        "high", "CREATE INDEX CONCURRENTLY inside a transaction fails: wrap it in op.get_context().autocommit_block()"),
    "ban-drop-column": ("medium", "drops a column: its data is gone, and the running app must no longer use it"),
    "renaming-column": ("medium", "renames a column: the running app's queries break until it is deployed"),
    "renaming-table": ("medium", "renames a table: the running app's queries break until it is deployed"),
    "ban-drop-not-null": ("medium", "drops NOT NULL: the running app may not expect NULLs"),
    "ban-duplicate-column-assignments": ("medium", "assigns one column twice in an UPDATE: PostgreSQL refuses it"),
    "ban-uncommitted-transaction": ("medium", "leaves a transaction open"),
    "transaction-nesting": ("medium", "nests transactions: BEGIN inside Alembic's own transaction"),
    "syntax-error": ("medium", "squawk could not parse the SQL: review it by hand"),
}
# Rules about a constraint: the constrained table is scanned, whatever it references.
_CONSTRAINED_TABLE_RULES = {"adding-foreign-key-constraint", "constraint-missing-not-valid"}
# Everything else squawk reports (prefer-*, identifier-too-long, ...) is low; an unknown rule medium.


class _Locator:
    """squawk's (0-based line, column) -> the statement there; bisects, so 5,000 findings stay cheap."""

    def __init__(self, stmts: Sequence[Statement], sql: str):
        self.stmts = list(stmts)
        self.starts = [s.start for s in self.stmts]
        self.lines = sql.split("\n")
        self.line_offsets = [0]
        for text in self.lines:
            self.line_offsets.append(self.line_offsets[-1] + len(text.encode()) + 1)

    def at(self, line0: int, column: int) -> Statement | None:
        if not 0 <= line0 < len(self.lines):
            return None
        offset = self.line_offsets[line0] + len(self.lines[line0][:column].encode())
        index = bisect.bisect_right(self.starts, offset) - 1
        if index >= 0 and self.stmts[index].start <= offset <= self.stmts[index].end:
            return self.stmts[index]
        return None


def _size_rating(env: Environment, facts: TableFacts | None) -> Rating:
    if facts is None:
        return "medium"                       # the size could not be told
    if not facts.exists:
        return "low"                          # created by an earlier pending revision: empty
    size = facts.size_bytes or 0
    if size >= env.review.large_table_bytes:
        return "high"
    if size >= env.review.medium_table_bytes:
        return "medium"
    return "low"


def rate_finding(env: Environment, rule: str, table: str | None, facts: TableFacts | None,
                 message: str = "") -> tuple[Rating, str]:
    """(rating, one line) for one squawk finding on one table, weighed against the live table."""
    where = f" on {table}" if table else ""
    size = f", {facts.describe()}" if facts is not None else (", size unknown" if table else "")
    if rule in SIZE_RULES:
        what, effect = SIZE_RULES[rule]
        rating = _size_rating(env, facts) if table else "medium"
        return rating, f"{what}{where}{size}: {effect}"
    if rule == "adding-required-field":
        has_rows = facts is not None and facts.exists and (facts.rows or 0) > 0
        if facts is not None and facts.exists and facts.rows is None:
            has_rows = (facts.size_bytes or 0) > 16384      # never analyzed: a few pages may be empty
        return ("high" if has_rows else "low"), (
            f"NOT NULL column without a default{where}{size}: "
            + ("fails on the existing rows" if has_rows else "fine while the table is empty"))
    if rule in FIXED_RULES:
        rating, text = FIXED_RULES[rule]
        return rating, f"{text}{where}{size}" if table else text
    said = f": {one_line(message, 160)}" if message else ""
    if rule in SQUAWK_RULES:
        return "low", f"{rule}{where}{said}"
    return "medium", f"{rule}{where}{said} (a squawk rule runbook-bot does not know: review it)"


def _live_conflicts(stmts: Sequence[Statement], facts: dict[str, TableFacts],
                    index_tables: dict[str, str]) -> list[tuple[Rating, str]]:
    """Locks held (or queued for) now that a statement of the revision would wait behind."""
    out: list[tuple[Rating, str]] = []
    seen: set[tuple[str, int | None, str]] = set()
    for stmt in stmts:
        wanted = list(stmt.locks) + [(index_tables[i], "AccessExclusiveLock") for i in stmt.indexes
                                     if i in index_tables]
        for relation, mode in wanted:
            table = facts.get(relation)
            if table is None or not table.exists:
                continue
            for holder in table.holders:
                if not conflicts(mode, holder.mode):
                    continue
                key = (table.name, holder.pid, holder.mode)
                if key in seen:
                    continue
                seen.add(key)
                verb = stmt.text.split(" ")[0:2]
                what = " ".join(verb) if verb else "the statement"
                if holder.idle:
                    out.append(("high", f"{holder.describe()}: {what} ({mode}) would wait behind it and queue "
                                        f"every query on {table.name}; end that transaction first"))
                else:
                    out.append(("medium", f"{holder.describe()}: {what} ({mode}) would wait until it finishes"))
    return out


def _raise(rating: Rating) -> Rating:
    return RATINGS[min(RATINGS.index(rating) + 1, len(RATINGS) - 1)]


def weigh(env: Environment, entry: RevisionReview, raw: list[dict[str, Any]], stmts: list[Statement], sql: str,
          facts: dict[str, TableFacts], index_tables: dict[str, str], version_table: str) -> None:
    """Rate `entry` (in place): each of squawk's findings `raw` on the statement it is about, weighed
    against the live `facts` of its tables; then the locks held now that those statements would wait
    behind."""
    if entry.status == "not reviewable offline":
        entry.rating = entry.findings_rating = "medium"
        entry.reason = f"{entry.problem}; review its upgrade() by hand"
        return
    if entry.status == "error":
        entry.rating = entry.findings_rating = "high"
        entry.reason = f"{entry.problem}; fix the file"
        return
    reported_rules: set[str] = set()
    locate = _Locator(stmts, sql)
    for item in raw:
        rule = str(item.get("rule_name") or "unknown")
        line0 = int(item.get("line") or 0)
        column = int(item.get("column") or 0)
        stmt = locate.at(line0, column)
        tables = tuple(dict.fromkeys(
            [facts[r].name if r in facts and facts[r].exists else r for r, _ in (stmt.locks if stmt else ())
             if r != version_table]
            + [index_tables[i] for i in (stmt.indexes if stmt else ()) if i in index_tables]))
        worst: tuple[Rating, str] | None = None
        for table in tables or (None,):
            rated = rate_finding(env, rule, table, facts.get(table) if table else None, str(item.get("message") or ""))
            if rule in _CONSTRAINED_TABLE_RULES and worst is not None:
                break        # the constrained table (named first) is the one scanned
            if worst is None or RATINGS.index(rated[0]) > RATINGS.index(worst[0]):
                worst = rated
        assert worst is not None
        finding = Finding(rule, str(item.get("message") or ""), str(item.get("help") or ""), line0 + 1, column,
                          stmt.text[:300] if stmt else "", tables, worst[0], worst[1],
                          entry.allowlist.get(rule))
        reported_rules.add(rule)
        (entry.silenced if finding.allowed is not None else entry.findings).append(finding)
    entry.unused_allows = sorted(set(entry.allowlist) - reported_rules)
    touched = {r for stmt in stmts for r, _ in stmt.locks if r != version_table}
    entry.tables = [facts[r] for r in sorted(touched) if r in facts]

    # the worst finding speaks for the revision; among equals, one about locks and size over a style rule
    top = max(entry.findings, key=lambda f: (RATINGS.index(f.rating), f.rule in SIZE_RULES or f.rule in FIXED_RULES,
                                             f.rule != "constraint-missing-not-valid"), default=None)
    entry.findings_rating = top.rating if top else "low"
    if top is not None:
        more = len(entry.findings) - 1
        entry.reason = top.reason + (f" (+{more} more finding{'s' if more != 1 else ''})" if more else "")
    elif entry.silenced:
        entry.reason = f"no findings left after the allowlist ({len(entry.silenced)} silenced)"
    else:
        entry.reason = "squawk found nothing"
    entry.rating = entry.findings_rating

    live = _live_conflicts(stmts, facts, index_tables)
    if live:
        entry.live = [text for _, text in live]
        live_rating = max((r for r, _ in live), key=RATINGS.index)
        raised = max(live_rating, _raise(entry.findings_rating) if entry.findings else live_rating, key=RATINGS.index)
        if RATINGS.index(raised) > RATINGS.index(entry.rating):
            entry.rating = raised
            entry.reason = live[0][1] + f"; and {entry.reason}" if top is not None else live[0][1]
