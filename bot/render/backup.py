"""Backups (§2): the progress message, the result, the catalogue."""
from __future__ import annotations

from typing import Any, Sequence

from bot.render.core import (
    titled_section,
    MAX_CONTEXT_TEXT,
    MAX_SECTION_TEXT,
    Message,
    bounded_lines,
    code,
    context,
    duration,
    escape,
    header,
    one_line,
    section,
    size,
    slack_time,
    truncate,
    validate,
)
from bot.render.help import slack_wording
from bot.render.status import _revs


BACKUP_KINDS = {"full": "Full backup", "schema": "Schema-only backup", "tables": "Table backup"}
BACKUP_LEVELS = {"none": "not verified", "toc": "TOC read", "full": "full read",
                 "restore": "restored into a scratch database, row counts compared"}
BACKUP_STATUS = {"verified": ":white_check_mark:", "failed": ":x:", "running": ":hourglass_flowing_sand:",
                 "expired": ":wastebasket:"}


def _table_names(tables: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(code(t[len("public."):] if t.startswith("public.") else t, 60) for t in tables[:limit])
    return shown + (f" … and {len(tables) - limit} more" if len(tables) > limit else "")


def backup_progress_message(environment: str, kind: str, tables: Sequence[str], progress: Any) -> Message:
    """Posted once when a backup takes more than a few seconds, then updated in place (rule 6).
    `progress`: runbook.backup.Progress (elapsed, bytes_written, phase)."""
    env = one_line(environment, 60)
    what = BACKUP_KINDS.get(kind, escape(kind)) + (f" of {_table_names(tables)}" if tables else "")
    phase = escape(one_line(getattr(progress, "phase", "dump"), 40))
    line = (f":hourglass_flowing_sand: {what} of {escape(env)} running: {phase}, "
            f"{size(getattr(progress, 'bytes_written', 0))} written, {duration(getattr(progress, 'elapsed', 0))}")
    return validate(Message(text=line, blocks=[section(truncate(line, MAX_SECTION_TEXT))]))


def backup_message(environment: str, backup: Any) -> Message:
    """A finished backup, verified or failed. `backup`: runbook.backup.Backup."""
    env = one_line(environment, 60)
    ok = backup.status == "verified"
    kind = BACKUP_KINDS.get(backup.kind, escape(backup.kind))
    blocks: list[dict[str, Any]] = [header(f"{BACKUP_STATUS.get(backup.status, '')} {kind} {env}: "
                                           f"{'verified' if ok else backup.status} (#{backup.id})")]
    if not ok:
        blocks.append(section(truncate(f":x: *{escape(one_line(slack_wording(backup.error or 'failed'), 2000))}*\n"
                                       "Nothing was kept, and this backup is never offered for restore.",
                                       MAX_SECTION_TEXT)))
    revision = backup.revision
    fields = [
        f"*Verified to*\n{escape(BACKUP_LEVELS.get(backup.level, backup.level))}",
        f"*Size*\n{size(backup.size_bytes) if ok else '—'}",
        f"*Revision at dump time*\n{_revs(revision) if revision else '_unknown_'}",
        f"*Took*\n{duration(backup.duration_seconds)}",
        f"*Format*\n{escape(backup.format)}" + (f", {backup.details.get('jobs')} jobs" if backup.format == "directory"
                                                else ""),
        f"*PostgreSQL*\nserver {escape(backup.server_version or '?')}, pg_dump {escape(backup.tool_version or '?')}",
    ]
    blocks.append(section("", fields=fields))
    if ok:
        blocks.append(section(truncate(f"*Location* {code(backup.location, 400)}\n*sha256* {code(backup.sha256, 80)}",
                                       MAX_SECTION_TEXT)))
        counts = backup.row_counts or {}
        if counts:
            lines = [f"• {code(t[len('public.'):] if t.startswith('public.') else t, 80)}: {n:,} row{'s' if n != 1 else ''}"
                     for t, n in list(counts.items())[:300]]
            title = "*Rows at dump time*"
            blocks.append(titled_section(title, lines, total=len(counts)))
        expired = backup.details.get("expired") or []
        note = (f"Retention removed backup{'s' if len(expired) != 1 else ''} "
                + ", ".join(f"#{i}" for i in expired[:20]) + " · ") if expired else ""
        note += "".join(f"Retention kept #{i}: {escape(why)} · "
                        for i, why in list((backup.details.get("retention_kept") or {}).items())[:5])
        how = "" if backup.kind == "schema" else f"restore with `/migrate restore {env} {backup.id}` · "
        blocks.append(context(truncate(f"{note}{how}Runbook §2", MAX_CONTEXT_TEXT)))
    text = (f"{kind} {escape(env)} #{backup.id}: "
            + (f"verified ({escape(BACKUP_LEVELS.get(backup.level, backup.level))}), {size(backup.size_bytes)}, "
               f"sha256 {escape((backup.sha256 or '')[:12])}…" if ok
               else f"{escape(backup.status)}: {escape(one_line(backup.error or '', 300))}"))
    return validate(Message(text=text, blocks=blocks))


def _catalogue_line(b: Any) -> str:
    mark = BACKUP_STATUS.get(b.status, ":grey_question:")
    kind = {"full": "full", "schema": "schema", "tables": "tables " + _table_names(b.tables, 3)}.get(b.kind, b.kind)
    bits = [f"{mark} *#{b.id}* {code(b.name, 80)}", kind + (" (safety)" if b.reason == "safety" else ""),
            slack_time(b.finished_at or b.started_at)]
    if b.status == "verified":
        bits += [size(b.size_bytes), escape(BACKUP_LEVELS.get(b.level, b.level).split(",")[0]),
                 f"rev {_revs(b.revision)}" if b.revision else "rev _unknown_"]
    elif b.status == "failed":
        bits.append(f"failed: {escape(one_line(b.error or '?', 160))}")
    else:
        bits.append(escape(b.status))
    return "• " + " · ".join(bits)


def backups_message(environment: str, backups: Sequence[Any]) -> Message:
    """`/migrate backups`: the catalogue, newest first; only verified ones can be restored."""
    env = one_line(environment, 60)
    verified = [b for b in backups if b.status == "verified"]
    blocks: list[dict[str, Any]] = [header(f"Backups {env}")]
    if not backups:
        blocks.append(section(f"No backups yet. Take one with `/migrate backup {env}`."))
    else:
        title = (f"*{len(verified)} verified* of the {len(backups)} most recent "
                 f"(restore one with `/migrate restore {env} ID`)")
        blocks.append(section(title + "\n" + bounded_lines([_catalogue_line(b) for b in backups[:300]],
                                                           MAX_SECTION_TEXT - len(title) - 1, total=len(backups))))
    text = f"Backups {escape(env)}: {len(verified)} verified" + (
        f", newest #{verified[0].id} {escape(verified[0].name)}" if verified else "")
    return validate(Message(text=text, blocks=blocks))


__all__ = ["backup_progress_message", "backup_message", "backups_message"]
