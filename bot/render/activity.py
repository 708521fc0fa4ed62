"""The §4 picture's lines: sessions, lock waits, root blockers, and the activity section built from them
(shared by the precheck, `/migrate activity`, the watch and bot/migration_blocks.py)."""
from __future__ import annotations

from typing import Any

from bot.render.core import (MAX_SECTION_TEXT, QUERY_SNIPPET, bounded_lines, code, duration, escape, section,
                             titled_section, truncate)


def _session_line(s: Any, *, seconds_label: str = "") -> str:
    who = " · ".join(
        part for part in (
            f"user {code(s.user, 40)}" if s.user else "",
            f"app {code(s.application, 40)}" if s.application else "",
            f"state {escape(s.state)}" if getattr(s, "state", None) else "",
        ) if part
    )
    return (f"• pid {s.pid} · {who + ' · ' if who else ''}{seconds_label}{duration(s.seconds)}\n"
            f"    {code(s.query, QUERY_SNIPPET)}")


def _lock_line(w: Any) -> str:
    what = ""
    if w.mode or w.relation:
        what = f" for {escape(w.mode or 'a lock')}" + (f" on {code(w.relation, 60)}" if w.relation else "")
    blocked = ", ".join(str(p) for p in w.blocked_by[:5]) + (" …" if len(w.blocked_by) > 5 else "")
    root = f" · root blocker {w.root_blocker}" if w.root_blocker is not None else ""
    who = " · ".join(p for p in (
        f"user {code(w.user, 40)}" if w.user else "", f"app {code(w.application, 40)}" if w.application else "") if p)
    return (f"• pid {w.pid}{' · ' + who if who else ''} · waiting {duration(w.seconds)}{what}"
            f" · blocked by {blocked or '?'}{root}\n    {code(w.query, QUERY_SNIPPET)}")


def _root_line(root: Any) -> str:
    if root.pid == 0 or root.prepared_gid:
        holder = f"prepared transaction {code(root.prepared_gid or '?', 80)}"
    else:
        holder = f"pid {root.pid}"
    s = root.session
    about = ""
    if s is not None:
        bits = [f"user {code(s.user, 40)}" if s.user else "", f"app {code(s.application, 40)}" if s.application else "",
                escape(s.state) if s.state else "", f"running {duration(s.seconds)}"]
        about = " (" + ", ".join(b for b in bits if b) + ")"
    head = root.head
    head_text = ""
    if head is not None:
        head_text = (f"\n    queue head: pid {head.pid} waiting {duration(head.seconds)}"
                     + (f" for {escape(head.mode)}" if head.mode else "")
                     + (f" on {code(head.relation, 60)}" if head.relation else ""))
    query = f"\n    {code(s.query, QUERY_SNIPPET)}" if s is not None and s.query else ""
    n = len(root.queue)
    return f"• *root blocker* {holder}{about} holds up {n} session{'s' if n != 1 else ''}{head_text}{query}"


def _activity_blocks(activity: Any) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    if activity is None:
        return blocks
    summary = (f"*Activity*: {activity.active_count} active session{'s' if activity.active_count != 1 else ''}, "
               f"{len(activity.long_queries)} long quer{'ies' if len(activity.long_queries) != 1 else 'y'}, "
               f"{len(activity.idle_in_transaction)} idle in transaction, "
               f"{len(activity.lock_waits)} waiting on locks")
    if activity.prepared:
        summary += f", {len(activity.prepared)} prepared transaction{'s' if len(activity.prepared) != 1 else ''}"
    blocks.append(section(truncate(summary, MAX_SECTION_TEXT)))
    if activity.long_queries:
        title = f"*Long queries* ({len(activity.long_queries)})"
        lines = [_session_line(s) for s in activity.long_queries[:200]]
        blocks.append(titled_section(title, lines, total=len(activity.long_queries)))
    if activity.idle_in_transaction:
        title = f"*Idle in transaction* ({len(activity.idle_in_transaction)})"
        lines = [_session_line(s, seconds_label="idle ") for s in activity.idle_in_transaction[:200]]
        blocks.append(titled_section(title, lines, total=len(activity.idle_in_transaction)))
    if activity.roots:
        title = f"*Blocking* ({len(activity.roots)} root blocker{'s' if len(activity.roots) != 1 else ''})"
        lines = [_root_line(r) for r in activity.roots[:200]]
        blocks.append(titled_section(title, lines, total=len(activity.roots)))
    if activity.lock_waits:
        title = f"*Lock waits* ({len(activity.lock_waits)})"
        lines = [_lock_line(w) for w in activity.lock_waits[:200]]
        blocks.append(titled_section(title, lines, total=len(activity.lock_waits)))
    if activity.prepared:
        title = f"*Prepared transactions* ({len(activity.prepared)})"
        lines = [f"• {code(p.gid, 80)} owner {code(p.owner or '?', 40)} · {duration(p.seconds)}"
                 for p in activity.prepared[:200]]
        blocks.append(titled_section(title, lines, total=len(activity.prepared)))
    return blocks
