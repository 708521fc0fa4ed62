"""§1 as a message: verdict, health, activity, Alembic state, risk review, checklist, SQL preview."""
from __future__ import annotations

import re
from typing import Any, Sequence

from bot.render.activity import _activity_blocks
from bot.render.core import (
    titled_section,
    MAX_CONTEXT_TEXT,
    MAX_SECTION_TEXT,
    SQL_INLINE_LIMIT,
    FileUpload,
    Message,
    bounded_lines,
    code,
    code_block,
    context,
    divider,
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
from bot.render.status import _alembic_blocks
from bot.review_blocks import risk_blocks
from runbook.review import review_to_json


STATUS_EMOJI = {"ok": ":white_check_mark:", "warn": ":warning:", "fail": ":x:"}
HUMAN_TODO = ":white_large_square:"


def _check_line(check: Any) -> str:
    emoji = STATUS_EMOJI.get(check.status, ":grey_question:")
    detail = f" — {escape(one_line(check.detail, 400))}" if check.detail else ""
    return f"{emoji} *{escape(one_line(check.name, 120))}*{detail}"


def _sql_blocks(sql: str, environment: str) -> tuple[list[dict[str, Any]], list[FileUpload]]:
    if not sql or not sql.strip():
        return [section("*SQL preview*: nothing to run")], []
    fenced = code_block(sql.strip("\n"))
    title = "*SQL preview* (pending revisions only)"
    if len(fenced) + len(title) + 1 <= SQL_INLINE_LIMIT and sql.count("\n") < 60:
        return [section(f"{title}\n{fenced}")], []
    lines = sql.count("\n") + 1
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", environment)[:40] or "env"
    upload = FileUpload(f"SQL preview — {environment}", f"sql-preview-{name}.sql", sql)
    note = f"{title}: {lines} lines, {len(sql)} characters, attached as a file :page_facing_up:"
    return [section(note)], [upload]


def _checklist_blocks(checks: Sequence[Any]) -> list[dict[str, Any]]:
    auto = [c for c in checks if c.automatic and str(c.section).startswith("1.3")]
    human = [c for c in checks if not c.automatic]
    if not auto and not human:
        return []
    blocks = []
    if auto:
        title = "*§1.3 Checklist — checked automatically*"
        blocks.append(section(title + "\n" + bounded_lines([_check_line(c) for c in auto[:200]],
                                                           MAX_SECTION_TEXT - len(title) - 1, total=len(auto))))
    if human:
        title = "*§1.3 Checklist — left for a human* (not checked by the bot)"
        lines = [f"{HUMAN_TODO} {escape(one_line(c.name, 160))}"
                 + (f" — {escape(one_line(c.detail, 300))}" if c.detail else "") for c in human[:200]]
        blocks.append(titled_section(title, lines, total=len(human)))
    return blocks


def _checks_section(title: str, checks: Sequence[Any]) -> dict[str, Any]:
    counts = {s: sum(1 for c in checks if c.status == s) for s in ("ok", "warn", "fail")}
    title += f" ({counts['ok']} ok, {counts['warn']} warn, {counts['fail']} fail)"
    # failures first, then warnings: a cut never hides a problem
    order = {"fail": 0, "warn": 1, "ok": 2}
    ordered = sorted(checks, key=lambda c: order.get(c.status, 3))
    return section(title + "\n" + bounded_lines([_check_line(c) for c in ordered[:200]],
                                                MAX_SECTION_TEXT - len(title) - 1, total=len(checks)))


def precheck_message(report: Any) -> Message:
    """§1 as a message: verdict, health, activity, Alembic state, checklist, SQL preview."""
    env = one_line(report.environment, 60)
    go = report.verdict == "go"
    verdict = "GO" if go else "NO-GO"
    blocks: list[dict[str, Any]] = [
        header(f"{':white_check_mark:' if go else ':no_entry:'} Precheck {env}: {verdict}"),
    ]
    facts = [f"target {code(report.target, 80)}"]
    if report.server_version:
        facts.append(f"PostgreSQL {escape(one_line(report.server_version, 40))}")
    if report.database_size_bytes is not None:
        facts.append(f"size {size(report.database_size_bytes)}")
    facts.append(f"{slack_time(report.started_at)}, took {duration(report.duration_seconds)}")
    blocks.append(context(truncate(" · ".join(facts), MAX_CONTEXT_TEXT)))

    reasons = [f"• {escape(one_line(r, 400))}" for r in report.reasons[:200]]
    if go:
        head = "*GO*: every automatic check passed."
        if reasons:
            head = "*GO*, with notes:"
    else:
        head = f"*NO-GO*: {len(report.reasons)} reason{'s' if len(report.reasons) != 1 else ''}"
    body = bounded_lines(reasons, MAX_SECTION_TEXT - len(head) - 1, total=len(report.reasons)) if reasons else ""
    blocks.append(section(head + ("\n" + body if body else "")))
    if report.errors:
        title = ":x: *Errors while checking*"
        lines = [f"• {escape(one_line(e, 400))}" for e in report.errors[:100]]
        blocks.append(titled_section(title, lines, total=len(report.errors)))

    health = [c for c in report.checks if c.automatic and str(c.section) == "1.1"]
    if health:
        blocks.append(divider())
        blocks.append(_checks_section("*§1.1 Health*", health))
    blocks.extend(_activity_blocks(report.activity))

    blocks.append(divider())
    blocks.extend(_alembic_blocks(report.alembic))
    alembic_checks = [c for c in report.checks if c.automatic and str(c.section) == "1.2"]
    if alembic_checks:
        blocks.append(_checks_section("*§1.2 checks*", alembic_checks))
    if getattr(report, "risk", None) is not None:
        blocks.extend(risk_blocks(review_to_json(report.risk), environment=report.environment))
    sql_blocks, files = _sql_blocks(report.sql_preview, report.environment)
    blocks.extend(sql_blocks)

    checklist = _checklist_blocks(report.checks)
    if checklist:
        blocks.append(divider())
        blocks.extend(checklist)
    blocks.append(context("Runbook §1 · nothing was changed by this check"))

    text = f"Precheck {escape(env)}: {verdict}"
    if report.reasons:
        text += " — " + escape(one_line(report.reasons[0], 200))
        if len(report.reasons) > 1:
            text += f" (+{len(report.reasons) - 1} more)"
    return validate(Message(text=text, blocks=blocks, files=files))


__all__ = ["precheck_message"]
