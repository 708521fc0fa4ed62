"""`/migrate status`: the Alembic state (current, heads, pending revisions), the last event and the last run."""
from __future__ import annotations

from datetime import datetime
from typing import Any, Mapping, Sequence

from bot.render.core import (
    MAX_SECTION_TEXT,
    Message,
    _actor,
    _fit_lines,
    bounded_lines,
    code,
    escape,
    header,
    one_line,
    section,
    slack_time,
    truncate,
    validate,
)


def _revision_line(rev: Any) -> str:
    msg = escape(one_line(rev.message, 120)) if rev.message else "_(no message)_"
    if rev.reversible:
        tail = "reversible"
    else:
        reason = f" ({escape(one_line(rev.irreversible_reason, 160))})" if rev.irreversible_reason else ""
        tail = f":rotating_light: *IRREVERSIBLE*{reason}"
    return f"• {code(rev.revision, 40)} {msg} — {tail}"


def _revs(ids: Sequence[str]) -> str:
    if not ids:
        return "_none_"
    shown = ", ".join(code(r, 40) for r in ids[:10])
    return shown + (f" … and {len(ids) - 10} more" if len(ids) > 10 else "")


def _alembic_blocks(state: Any, title: str = "*§1.2 Alembic*") -> list[dict[str, Any]]:
    if state is None:
        return [section(f"{title}: state unavailable")]
    head = f"{title}: current {_revs(state.current) if state.current else '_unversioned_'} → heads {_revs(state.heads)}"
    if len(state.heads) > 1:
        head += "\n:warning: *several heads*: Alembic would need a merge revision"
    pending = state.pending
    if not pending:
        return [section(truncate(head + "\n:white_check_mark: up to date, nothing pending", MAX_SECTION_TEXT))]
    irreversible = sum(1 for r in pending if not r.reversible)
    count = f"{len(pending)} pending revision{'s' if len(pending) != 1 else ''}"
    if irreversible:
        count += f", :rotating_light: *{irreversible} irreversible*"
    top = truncate(head, 1200) + "\n" + count
    room = MAX_SECTION_TEXT - len(top) - 40
    body, shown = _fit_lines([_revision_line(r) for r in pending[:300]], room, total=len(pending))
    if any(not r.reversible for r in pending[shown:]):
        # the cut would hide an irreversible revision: list those first instead
        ordered = [r for r in pending if not r.reversible] + [r for r in pending if r.reversible]
        body = bounded_lines([_revision_line(r) for r in ordered[:300]], room, total=len(pending))
        top += " (irreversible listed first)"
    else:
        top += " (in the order they apply)" if len(pending) > 1 else ""
    return [section(top + "\n" + body)]


def _event_value(event: Any, key: str) -> Any:
    if event is None:
        return None
    if isinstance(event, Mapping):
        return event.get(key)
    return getattr(event, key, None)


def status_message(environment: str, alembic_state: Any, last_event: Any = None, last_run: Any = None) -> Message:
    """Current and pending revisions, the last run and the last thing that happened.

    `last_event`: None, a mapping, or an object (runbook.state Event) with actor,
    action, time (or `at`), outcome and optionally summary. `last_run`: None or the
    environment's latest runbook.state.runs.Run (migrate, rollback or restore).
    """
    env = one_line(environment, 60)
    blocks: list[dict[str, Any]] = [header(f"Status {env}")]
    blocks.extend(_alembic_blocks(alembic_state, title="*Alembic*"))
    if last_event is None:
        last = "*Last event*: none recorded yet"
    else:
        when = _event_value(last_event, "time") or _event_value(last_event, "at")   # store.Event calls it `at`
        if isinstance(when, datetime):
            when_text = slack_time(when)
        elif when:
            when_text = escape(one_line(when, 60))
        else:
            when_text = "at an unknown time"
        action = _event_value(last_event, "action")
        outcome = _event_value(last_event, "outcome")
        summary = _event_value(last_event, "summary")
        last = (f"*Last event*: {_actor(_event_value(last_event, 'actor'))} ran {code(action or '?', 60)}"
                f" {when_text}" + (f" — *{escape(one_line(outcome, 60))}*" if outcome else "")
                + (f"\n{escape(truncate(str(summary), 1500))}" if summary else ""))
    blocks.append(section(truncate(last, MAX_SECTION_TEXT)))
    if last_run is not None:
        blocks.append(section(truncate(run_status_line(last_run), MAX_SECTION_TEXT)))
    if alembic_state is None:
        summary = "state unavailable"
    elif alembic_state.pending:
        summary = f"{len(alembic_state.pending)} pending"
        irreversible = sum(1 for r in alembic_state.pending if not r.reversible)
        if irreversible:
            summary += f" ({irreversible} irreversible)"
    else:
        summary = "up to date"
    return validate(Message(text=f"Status {escape(env)}: {summary}", blocks=blocks))


def run_status_line(run: Any) -> str:
    """The latest run in one line (mrkdwn): kind, id, state, where it stopped; an interrupted one says
    why (runbook.state.runs.Run)."""
    from runbook.state.runs import interruption

    state = f"*{escape(run.state)}*" + (f" (step {code(run.step, 80)})" if run.state in ("running", "interrupted")
                                        else "")
    when = slack_time(run.finished_at or run.started_at)
    line = f"*Last run*: {escape(run.kind)} {code(run.id, 20)} by {_actor(run.actor)} · {state} · {when}"
    if run.state in ("failed", "interrupted") and run.summary:
        line += f"\n{escape(one_line(interruption(run), 600))}"
    return line


__all__ = ["status_message", "run_status_line"]
