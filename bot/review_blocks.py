"""Block Kit renderings of the risk review (issue 7), and the ack-risk replies (the terminal's are in
bot/text.py).

`risk_blocks(risk, environment=...)` takes `runbook.review.review_to_json(...)` (a dict), so the
same renderer serves the precheck (from the report) and the migrate approval request (from the
request's stored params, re-rendered on every update). Pure, built from bot/render/core.py's helpers:
untrusted text through `escape()`/`code()`, actors through `mention()` only when they are Slack IDs.
"""
from __future__ import annotations

from typing import Any, Mapping

from bot.render.core import (
    MAX_CONTEXT_TEXT,
    MAX_SECTION_TEXT,
    Message,
    _when,
    _who,
    bounded_lines,
    code,
    context,
    escape,
    one_line,
    section,
    size,
    truncate,
    validate,
)

RATING_MARK = {"high": ":red_circle: *HIGH*", "medium": ":large_orange_circle: *medium*",
               "low": ":large_green_circle: low"}


def _table_text(table: Mapping[str, Any]) -> str:
    if not table.get("exists"):
        return f"{code(table.get('name'), 60)} (not there yet)"
    rows = table.get("rows")
    return (f"{code(table.get('name'), 60)} {size(table.get('size_bytes'))}"
            + (f", ~{rows:,} rows" if isinstance(rows, int) else ""))


def _revision_lines(rev: Mapping[str, Any], environment: str, low_as_count: bool = False) -> list[str]:
    """The revision's rating line, then its findings, silenced rules, live locks and acknowledgement.
    `low_as_count`: a low-rated revision's findings as one count (the approval request, re-shown at
    every click); `/migrate precheck` lists them."""
    mark = RATING_MARK.get(str(rev.get("rating")), escape(rev.get("rating")))
    lines = [f"{mark} {code(rev.get('revision'), 60)} — {escape(one_line(rev.get('reason'), 400))}"]
    findings = list(rev.get("findings") or [])
    if low_as_count and rev.get("rating") == "low" and findings:
        lines.append(f"      {len(findings)} low finding{'s' if len(findings) != 1 else ''}: "
                     f"`/migrate precheck {escape(environment)}` lists them")
        findings = []
    for finding in findings[:8]:
        lines.append(f"      • {code(finding.get('rule'), 60)} line {finding.get('line')}: "
                     f"{escape(one_line(finding.get('reason'), 240))}")
    for finding in (rev.get("silenced") or [])[:8]:
        lines.append(f"      :mute: {code(finding.get('rule'), 60)} allowed in the file: "
                     f"_{escape(one_line(finding.get('allowed'), 200))}_")
    for rule in (rev.get("unused_allows") or [])[:5]:
        lines.append(f"      :grey_question: {code(rule, 60)} is allowed in the file but squawk did not report it")
    for live in (rev.get("live") or [])[:4]:
        lines.append(f"      :lock: now: {escape(one_line(live, 300))}")
    ack = rev.get("acknowledgement")
    if ack:
        lines.append(f"      :ballot_box_with_check: acknowledged by {_who(ack.get('actor'))} {_when(ack.get('at'))}: "
                     f"_{escape(one_line(ack.get('reason'), 300))}_"
                     + (" — does not cover the lock held now" if rev.get("live") and rev.get("blocking") else ""))
    elif rev.get("stale_acknowledgement"):
        stale = rev["stale_acknowledgement"]
        lines.append(f"      :warning: acknowledged by {_who(stale.get('actor'))} for an earlier version of "
                     f"{code(rev.get('path'), 80)}: review the file again")
    if rev.get("blocking") and not ack and rev.get("status") == "reviewed" and not rev.get("live"):
        lines.append(f"      once reviewed: `/migrate ack-risk {escape(environment)} {escape(rev.get('revision'))} "
                     "REASON` (an approver)")
    return lines


def risk_blocks(risk: Mapping[str, Any] | None, *, environment: str, error: str | None = None,
                low_as_count: bool = False) -> list[dict[str, Any]]:
    """The risk review as at most two blocks: the revisions with their ratings, and where it came from.
    `low_as_count`: low-rated revisions' findings counted, not listed (see _revision_lines)."""
    if error:
        return [section(truncate(f":x: *Risk review*: not reviewed — {escape(one_line(error, 600))}",
                                 MAX_SECTION_TEXT))]
    if not risk or not risk.get("revisions"):
        return []
    revisions = list(risk["revisions"])
    highest = str(risk.get("highest"))
    blocking = list(risk.get("blocking") or [])
    title = f"*Risk review*: highest {RATING_MARK.get(highest, escape(highest))}"
    if blocking:
        title += f" · :no_entry: {len(blocking)} revision{'s' if len(blocking) != 1 else ''} to clear before migrating"
    # high first, so a cut never hides one; within a rating, the order they apply
    order = {"high": 0, "medium": 1, "low": 2}
    ranked = sorted(revisions, key=lambda r: order.get(str(r.get("rating")), 3))
    lines: list[str] = []
    for rev in ranked[:50]:
        lines.extend(_revision_lines(rev, environment, low_as_count))
    body = bounded_lines(lines, MAX_SECTION_TEXT - len(title) - 1,
                         more="… and {n} more lines (see `precheck --json`)")
    squawk = f"squawk {escape(risk.get('squawk_version') or '?')}"
    server = f"PostgreSQL {risk.get('server_major')}" if risk.get("server_major") else "the server's version"
    note = (f"Each revision's own SQL (`alembic upgrade PREV:REV --sql`) linted by {squawk} for {server}, weighed "
            "against the live tables (size, row estimate, locks held now) · silence a reviewed rule with "
            "`squawk_allow = {\"rule\": \"reason\"}` in the revision file")
    return [section(title + "\n" + body), context(truncate(note, MAX_CONTEXT_TEXT))]


def request_risk_blocks(params: Mapping[str, Any], environment: str) -> list[dict[str, Any]]:
    """For a migrate approval request (bot/migrations.py's `describe_risk`): the review kept in the
    request's params by `runbook.review.risk_params(proposal)`, rendered as it was when requested."""
    return risk_blocks(params.get("risk"), environment=environment, error=params.get("risk_error"))


def ack_message(ack: Any) -> Message:
    """The reply to `/migrate ack-risk`: what was recorded, by whom."""
    line = (f":ballot_box_with_check: {_who(ack.actor)} acknowledged the risk of {code(ack.revision, 60)} on "
            f"{escape(one_line(ack.environment, 40))}: _{escape(one_line(ack.reason, 300))}_")
    note = (f"bound to the file as it is now (sha256 {ack.file_sha256[:12]}…): an edit needs a new one · "
            "a lock held at migration time is never covered")
    return validate(Message(text=f"Risk of {escape(ack.revision)} on {escape(ack.environment)} acknowledged",
                            blocks=[section(line), context(note)]))


__all__ = ["RATING_MARK", "ack_message", "request_risk_blocks", "risk_blocks"]
