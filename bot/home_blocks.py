"""The App Home tab (issue 14 §4): where each environment stands, as the blocks of a `home` view.

Pure: runbook.home.EnvironmentHome in, a `bot.render.core.Message` out whose blocks go to views.publish
(its `text` is only the summary the bot logs). It passes the one validator in view mode
(`validate(..., view=True)`: 100 blocks, the same per-block limits and text budget);
every list is bounded, so any number of environments, requests and alerts fits.
"""
from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any, Sequence

from bot.render.approvals import APPROVAL_STATE
from bot.render.backup import BACKUP_LEVELS
from bot.render.core import (MAX_FIELD_TEXT, MAX_TOTAL_TEXT, MAX_VIEW_BLOCKS, Message, bounded_lines, code, context,
                             divider, escape, header, mentions, one_line, section, size, slack_time, text_length,
                             truncate, validate)
from bot.render.restore import restore_summary
from bot.render.watch import ALERT_TITLES, actor_text, alert_line, link

# Blocks one environment takes: divider, header, facts, requests, alerts.
BLOCKS_PER_ENVIRONMENT = 5
# Shown per environment; the rest is counted ("… and N more").
LISTED = 10
# The Home's total text stays within the validator's budget (MAX_TOTAL_TEXT): each
# environment's lists (pending revisions, requests, alerts) get a share of it, at most this much each.
LIST_TEXT = 900
MIN_LIST_TEXT = 250

_ARCHIVE_TS = re.compile(r"^\d{1,12}\.\d{1,9}$")
_CHANNEL = re.compile(r"^[CGD][A-Z0-9]{2,}$")


def message_link(channel: str | None, ts: str | None) -> str | None:
    """`https://slack.com/archives/<channel>/p<ts without the dot>`: Slack opens it at the message in
    the reader's own workspace (no chat.getPermalink call needed). None when the message is unknown."""
    if not channel or not ts or not _CHANNEL.match(channel) or not _ARCHIVE_TS.match(ts):
        return None
    return f"https://slack.com/archives/{channel}/p{ts.replace('.', '')}"


def _revisions_field(home: Any) -> str:
    if home.current is None:
        return f"*Revision*\n:x: cannot read the target: {code(home.revisions_error or '?', 300)}"
    current = ", ".join(code(r, 40) for r in home.current) if home.current else "_none (unversioned)_"
    text = f"*Revision*\n{current}"
    if home.revisions_problem:
        text += f"\n:warning: {escape(one_line(home.revisions_problem, 300))}"
    return truncate(text, MAX_FIELD_TEXT)


def _pending_field(home: Any, limit: int) -> str:
    if home.current is None:
        return "*Pending*\n_unknown_"
    if not home.pending:
        return "*Pending*\nnone: up to date"
    lines = []
    for rev in home.pending:
        note = "" if rev.reversible else " :warning: irreversible"
        message = f" {escape(one_line(rev.message, 60))}" if rev.message else ""
        lines.append(f"{code(rev.revision, 40)}{message}{note}")
    title = f"*Pending* ({len(home.pending)})"
    return title + "\n" + bounded_lines(lines[:LISTED], limit - len(title) - 1, total=len(lines))


def _run_field(run: Any) -> str:
    if run is None:
        return "*Latest run*\nnone yet"
    emoji = {"succeeded": ":white_check_mark:", "failed": ":x:", "running": ":hourglass_flowing_sand:",
             "interrupted": ":warning:"}.get(run.state, "")
    state = f"{emoji} *{escape(run.state)}*".strip()
    if run.state in ("running", "interrupted") and run.step:
        state += f" (step {code(run.step, 60)})"
    when = slack_time(run.finished_at or run.started_at)
    target = f" → {code(run.target_revision, 40)}" if run.target_revision else ""
    return truncate(f"*Latest run*\n{escape(run.kind)}{target} {code(run.id, 20)} {state} · {when}", MAX_FIELD_TEXT)


def _watch_field(home: Any) -> str:
    watch = home.watch
    if watch.paused:
        who = f" by {actor_text(watch.changed_by)}" if watch.changed_by else ""
        since = f" {slack_time(watch.changed_at)}" if watch.changed_at else ""
        return truncate(f"*Watch*\n:double_vertical_bar: off (paused{who}{since})", MAX_FIELD_TEXT)
    text = f"*Watch*\n:eye: on, every {home.watch_every_seconds} s"
    if watch.last_poll_at is not None and watch.last_poll_ok is False:
        text += f"\nlast poll failed: {code(watch.last_error or '?', 200)}"
    return truncate(text, MAX_FIELD_TEXT)


def _backup_field(backup: Any) -> str:
    if backup is None:
        return "*Latest verified backup*\nnone"
    finished = backup.finished_at or backup.started_at
    revision = ", ".join(backup.revision) if backup.revision else "unknown revision"
    level = BACKUP_LEVELS.get(backup.level, backup.level)
    return truncate(f"*Latest verified backup*\n#{backup.id} {code(backup.name, 80)} · {escape(level)} · "
                    f"{size(backup.size_bytes)} · at {code(revision, 60)} · {slack_time(finished)}",
                    MAX_FIELD_TEXT)


def _approvers_field(home: Any) -> str:
    if not home.approvers:
        return ("*Who may approve*\n_nobody: approvals.approvers is empty, so nothing that needs approval "
                "can run from Slack_")
    rule = "" if home.allow_self_approval else ", never their own request"
    return truncate(f"*Who may approve*\n{mentions(list(home.approvers), limit=10)} · "
                    f"{home.required_approvals} needed{rule}", MAX_FIELD_TEXT)


def _request_summary(request: Any) -> str:
    if request.kind in ("migrate", "rollback"):
        from bot.migration_blocks import migration_summary

        return migration_summary(request.params, request.environment)
    if request.kind == "restore":
        return restore_summary(request.params, request.environment)
    return request.kind


def _request_line(request: Any) -> str:
    summary = escape(one_line(_request_summary(request), 120))
    url = message_link(request.channel, request.message_ts)
    shown = link(url, one_line(_request_summary(request), 80)) if url else summary
    emoji, state = APPROVAL_STATE.get(request.state, (":grey_question:", request.state))
    tail = (f"{len(request.approvers)} of {request.required} approvals, expires {slack_time(request.expires_at)}"
            if request.state == "pending" else escape(state))
    return f"• {emoji} {shown} · by {actor_text(request.requester)} · {tail}"


def _listed_section(title: str, items: list[Any], line: Any, limit: int) -> dict[str, Any]:
    """A titled list within `limit` characters: the first LISTED items, then how many more."""
    if not items:
        return section(f"*{title}*: none")
    heading = f"*{title}* ({len(items)})"
    return section(heading + "\n" + bounded_lines([line(i) for i in items[:LISTED]], limit - len(heading) - 1,
                                                  total=len(items)))


def _requests_section(home: Any, limit: int) -> dict[str, Any]:
    return _listed_section("Open approval requests", home.open_requests, _request_line, limit)


def _alert_line(alert: Any) -> str:
    what = escape(alert_line(alert))
    url = message_link(alert.channel, alert.ts)
    title = ALERT_TITLES.get(alert.kind, escape(alert.kind))
    shown = f"{title}: {what}" + (f" ({link(url, 'message')})" if url else "")
    return f"• {shown} · open since {slack_time(alert.opened_at)}"


def _alerts_section(home: Any, limit: int) -> dict[str, Any]:
    return _listed_section("Open alerts", home.open_alerts, _alert_line, limit)


def environment_blocks(home: Any, *, list_text: int = LIST_TEXT) -> list[dict[str, Any]]:
    """One environment: its name, six facts, its open requests and alerts (each list within
    `list_text` characters)."""
    name = one_line(home.environment, 60)
    title = f"{name}{'  :rotating_light: production' if home.production else ''}"
    facts = [_revisions_field(home), _pending_field(home, list_text), _run_field(home.latest_run),
             _watch_field(home), _backup_field(home.latest_backup), _approvers_field(home)]
    return [divider(), header(title), section("", fields=facts), _requests_section(home, list_text),
            _alerts_section(home, list_text)]


def home_view(homes: Sequence[Any], *, now: datetime | None = None) -> Message:
    """The Home tab's blocks for every environment (runbook.home.home), validated as a view."""
    now = now or datetime.now(timezone.utc)
    out: list[dict[str, Any]] = [
        header(":house: runbook-bot: where things stand"),
        context(f"Updated {slack_time(now)} · reopen this tab to refresh · type `/migrate help` for the commands"),
    ]
    room = (MAX_VIEW_BLOCKS - len(out) - 1) // BLOCKS_PER_ENVIRONMENT
    # the facts take about 1,200 characters an environment; the three lists share the rest
    share = (MAX_TOTAL_TEXT - 600) // max(1, min(len(homes), room)) - 1200
    list_text = max(MIN_LIST_TEXT, min(LIST_TEXT, share // 3))
    shown = 0
    for home in homes[:room]:
        more = environment_blocks(home, list_text=list_text)
        # whole environments only: one that would overflow the text budget is counted, not cut in half
        if shown and text_length(out + more) > MAX_TOTAL_TEXT - 300:
            break
        out.extend(more)
        shown += 1
    if len(homes) > shown:
        out.append(context(f"… and {len(homes) - shown} more environments: `/migrate status ENV` shows each."))
    if not homes:
        out.append(section("No environment is configured."))
    pending = sum(len(h.pending) for h in homes)
    requests = sum(len(h.open_requests) for h in homes)
    alerts = sum(len(h.open_alerts) for h in homes)
    text = (f"Home: {len(homes)} environment{'s' if len(homes) != 1 else ''}, {pending} pending revisions, "
            f"{requests} open requests, {alerts} open alerts")
    return validate(Message(text=text, blocks=out), view=True)


__all__ = ["home_view", "environment_blocks", "message_link"]
