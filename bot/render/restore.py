"""Restore (§6.2–6.3): what an approval request shows, and the result."""
from __future__ import annotations

from typing import Any, Mapping

from bot.render.core import (
    titled_section,
    MAX_SECTION_TEXT,
    _when,
    bounded_lines,
    code,
    duration,
    escape,
    one_line,
    section,
    size,
    truncate,
)
from bot.render.status import _revs


def _rows(n: Any) -> str:
    return f"{n:,} row{'s' if n != 1 else ''}" if isinstance(n, int) else "no table"


def restore_summary(params: Mapping[str, Any], environment: str) -> str:
    """One line: what the restore does (text fallback, confirm dialog, audit)."""
    tables = params.get("tables") or []
    what = (f"{len(tables)} table{'s' if len(tables) != 1 else ''} ({', '.join(str(t) for t in tables[:5])}"
            f"{' …' if len(tables) > 5 else ''})") if params.get("mode") == "tables" else "the whole database"
    return f"Restore {what} of {environment} from backup #{params.get('backup_id')}"


# Request states after which nothing more happens: their messages speak in the past.
FINISHED_STATES = frozenset({"done", "failed", "rejected", "expired", "cancelled"})


def restore_request_blocks(params: Mapping[str, Any], state: str = "pending") -> list[dict[str, Any]]:
    """What will be replaced (rows now vs in the backup), the backup's facts, the revision guard;
    once the request is finished, what was replaced (done) or would have been (anything else)."""
    backup = params.get("backup") or {}
    changes = params.get("changes") or []
    verb = {"replace": "replaced", "create": "created", "drop": ":warning: *dropped* (not in the backup)"}
    then = {"done": "before"}.get(state, "then" if state in FINISHED_STATES else "now")
    lines = [f"• {code(c.get('table'), 80)}: {_rows(c.get('rows_now'))} {then} → "
             f"{_rows(c.get('rows_in_backup'))} in the backup — {verb.get(c.get('action'), escape(c.get('action')))}"
             for c in changes[:300]]
    what = ("What was replaced" if state == "done" else "What would have been replaced" if state in FINISHED_STATES
            else "What will be replaced")
    title = f"*{what}* ({'chosen tables' if params.get('mode') == 'tables' else 'full restore'})"
    out = [titled_section(title, lines, total=len(changes))]
    revision = backup.get("revision")
    facts = [f"*Backup* #{escape(params.get('backup_id'))} {code(backup.get('name', '?'), 80)}",
             f"{escape(backup.get('kind', '?'))}, {size(backup.get('size_bytes'))}, taken {_when(backup.get('finished_at'))}",
             f"verified to level {code(backup.get('level', '?'), 20)}, sha256 {code(str(backup.get('sha256') or '?')[:16] + '…', 24)}",
             f"taken at revision {_revs(revision) if revision else '_unknown_'}"]
    out.append(section(" · ".join(facts)))
    current = params.get("expected_revision") or []
    target, at = code(params.get('target', '?'), 80), _revs(current) if current else '_none_'
    if state == "done":
        out.append(section(f"*Target* {target} was at revision {at} when approved. A safety backup of it was "
                           "taken first, and the restore applied in one transaction."))
    elif state in FINISHED_STATES:
        out.append(section(f"*Target* {target} was at revision {at} when this was asked for."))
    else:
        out.append(section(f"*Target* {target} is at revision {at}: the restore stops if that changes before "
                           "it runs. A safety backup of the current state is taken first, and the restore applies "
                           "in one transaction: completely or not at all."))
    warnings = [f":warning: {escape(one_line(w, 400))}" for w in (params.get("warnings") or [])[:20]]
    if warnings:
        out.append(section(bounded_lines(warnings)))
    return out


def restore_result_blocks(result: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """After the restore: the revision and the row counts, mismatches against the backup flagged."""
    if not result:
        return []
    counts = result.get("row_counts_after") or {}
    mismatches = result.get("mismatches") or {}
    lines = []
    for table, n in list(counts.items())[:300]:
        flag = ""
        if table in mismatches:
            flag = f" :warning: the backup had {_rows(mismatches[table][0])}"
        lines.append(f"• {code(table, 80)}: {_rows(n)}{flag}")
    before, after = result.get("revision_before") or [], result.get("revision_after") or []
    head = (f"*Revision* {_revs(before) if before else '_none_'} → {_revs(after) if after else '_none_'}"
            + (f" · safety backup #{escape(result['safety_backup_id'])}" if result.get("safety_backup_id") else "")
            + (f" · took {duration(result.get('duration_seconds'))}" if result.get("duration_seconds") is not None else ""))
    out = [section(truncate(head, MAX_SECTION_TEXT))]
    if lines:
        title = "*Row counts after*"
        out.append(titled_section(title, lines, total=len(counts)))
    return out


__all__ = ["restore_summary", "restore_request_blocks", "restore_result_blocks"]
