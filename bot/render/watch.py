"""The watch (issue 5): alerts, escalation of an alert, `/migrate activity`, `/migrate watch`."""
from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any, Mapping, Sequence

from bot.render.activity import _activity_blocks
from bot.render.core import (
    titled_section,
    MAX_BLOCKS,
    MAX_SECTION_TEXT,
    MAX_URL,
    QUERY_SNIPPET,
    BlockError,
    Message,
    _actor,
    bounded_lines,
    code,
    context,
    duration,
    escape,
    header,
    mention,
    one_line,
    section,
    slack_time,
    truncate,
    validate,
)


ALERT_TITLES = {
    "lock_wait": ":lock: Lock wait",
    "long_query": ":hourglass_flowing_sand: Long query",
    "idle_in_transaction": ":zzz: Idle in transaction",
    "prepared_transaction": ":ghost: Old prepared transaction",
    "unreachable": ":electric_plug: Cannot reach",
}
_URL = re.compile(r"^https?://[^\s<>|]+$")


def link(url: str, label: str) -> str:
    """`<url|label>` for a configured http(s) URL; the label is escaped and cannot close the link."""
    if not isinstance(url, str) or not _URL.match(url) or len(url) > MAX_URL:
        raise BlockError("not an http(s) URL that can be linked")
    return f"<{url}|{escape(one_line(label, 80)).replace('|', '/')}>"


def _session_who(d: Mapping[str, Any]) -> str:
    bits = [f"user {code(d['user'], 40)}" if d.get("user") else "",
            f"app {code(d['application'], 40)}" if d.get("application") else ""]
    return " · ".join(b for b in bits if b)


def _session_text(d: Mapping[str, Any], doing: str) -> str:
    who = _session_who(d)
    return (f"pid {int(d.get('pid') or 0)}{' · ' + who if who else ''} · {doing} {duration(d.get('seconds'))}\n"
            f"{code(d.get('query') or '', QUERY_SNIPPET)}")


def _waiter_line(w: Mapping[str, Any], label: str = "") -> str:
    what = ""
    if w.get("mode") or w.get("relation"):
        # a row lock is waited on as the other transaction's id (or the tuple): say it is a row
        on = "on a row of" if w.get("locktype") in ("transactionid", "tuple") else "on"
        what = f" for {escape(w.get('mode') or 'a lock')}" + (f" {on} {code(w['relation'], 60)}" if w.get("relation") else "")
    who = _session_who(w)
    return (f"• {label}pid {int(w.get('pid') or 0)}{' · ' + who if who else ''} · waiting {duration(w.get('seconds'))}"
            f"{what}\n    {code(w.get('query') or '', QUERY_SNIPPET)}")


def _alert_summary(alert: Any) -> tuple[str, list[dict[str, Any]]]:
    """(one line for the header and text fallback, the blocks that describe the condition)."""
    d, env = alert.details, one_line(alert.environment, 40)
    if alert.kind == "lock_wait":
        root, n = d.get("root") or {}, int(d.get("queue_length") or 0)
        if root.get("prepared_gid") or not root.get("pid"):
            holder = f"prepared transaction {one_line(root.get('prepared_gid') or '?', 60)}"
            root_text = f"*Root blocker*: prepared transaction {code(root.get('prepared_gid') or '?', 80)} (no session: COMMIT PREPARED or ROLLBACK PREPARED it)"
        else:
            holder = f"pid {int(root['pid'])}"
            doing = "running for" if root.get("state") == "active" else f"{escape(root.get('state') or 'idle')} for"
            root_text = "*Root blocker*: " + _session_text(root, doing)
        line = f"{env}: root blocker {holder} holds up {n} session{'s' if n != 1 else ''}, longest wait {duration(d.get('longest_wait_seconds'))}"
        earlier = [one_line(str(r), 80) for r in d.get("earlier_roots") or []]
        if earlier:   # the root handed over while the same sessions kept waiting (one incident)
            root_text += "\n_Root blocker before: " + ", ".join(
                code(r, 90) if r.startswith("prepared:") else f"pid {escape(r)}" for r in earlier) + "_"
        queue = d.get("queue") or []
        lines = [_waiter_line(w, "queue head: " if i == 0 else "") for i, w in enumerate(queue)]
        title = f"*Queue behind it* ({n} waiting, head first)"
        body = bounded_lines(lines, MAX_SECTION_TEXT - len(title) - 1, total=max(n, len(lines)))
        return line, [section(truncate(root_text, MAX_SECTION_TEXT)), section(title + "\n" + body)]
    if alert.kind == "unreachable":
        line = f"{env} ({one_line(d.get('target') or alert.subject, 80)})"
        return line, [section(f"The watch cannot read the target: {code(d.get('error') or '?', 400)}")]
    if alert.kind == "prepared_transaction":
        line = f"{env}: {one_line(d.get('gid') or alert.subject, 60)} prepared {duration(d.get('seconds'))} ago"
        return line, [section(f"Prepared transaction {code(d.get('gid') or alert.subject, 80)} · owner "
                              f"{code(d.get('owner') or '?', 40)} · open {duration(d.get('seconds'))}\n"
                              "It holds its locks with no session behind it: COMMIT PREPARED or ROLLBACK PREPARED it.")]
    doing = "running for" if alert.kind == "long_query" else "idle in transaction for"
    line = f"{env}: pid {int(d.get('pid') or 0)} {doing} {duration(d.get('seconds'))}"
    return line, [section(truncate(_session_text(d, doing), MAX_SECTION_TEXT))]


def alert_line(alert: Any) -> str:
    """An alert in one line, unescaped (the App Home lists open alerts with it)."""
    return _alert_summary(alert)[0]


def actor_text(actor: Any) -> str:
    """Who did something, as mrkdwn: a Slack user as a mention, anything else (cli:<user>) as code."""
    return _actor(actor)


def links_line(title: str, urls: Mapping[str, str] | None) -> str:
    """`Title: <url|name> · …` for the configured http(s) URLs; any other value is left out."""
    links = []
    for name, url in (urls or {}).items():
        try:
            links.append(link(url, name))
        except BlockError:
            continue
    return (f"{title}: " + " · ".join(links)) if links else ""


def _dashboard_links(dashboards: Mapping[str, str] | None) -> str:
    return links_line("Dashboards", dashboards)


def alert_message(alert: Any, *, dashboards: Mapping[str, str] | None = None) -> Message:
    """One alert's message, open or resolved; posted once, then updated by ts (rule 6)."""
    line, body = _alert_summary(alert)
    title = ALERT_TITLES.get(alert.kind, escape(alert.kind))
    if alert.is_open:
        head = header(f"{title}: {line}" if alert.kind != "unreachable" else f"{title} {line}")
        when = f"open since {slack_time(alert.opened_at)} · last checked {slack_time(alert.last_seen_at)}"
        if alert.cleared_at is not None:
            when += " · not seen in the last check"
        text = f"{title}: {escape(line)}" if alert.kind != "unreachable" else f"{title} {escape(line)}"
    else:
        # the condition's age when last seen: it ended somewhere before the next poll
        lasted = "at least " + duration(alert.peak_seconds)
        verb = "reachable again" if alert.kind == "unreachable" else "resolved"
        head = header(f":white_check_mark: {verb.capitalize()}: {title.split(' ', 1)[1].lower()} · {line}"
                      f" · lasted {lasted}")
        when = f"opened {slack_time(alert.opened_at)} · {verb} {slack_time(alert.resolved_at or alert.last_seen_at)}"
        text = f"{verb.upper()}: {title.split(' ', 1)[1]} {escape(line)} (lasted {lasted})"
        body = [context(truncate("Last seen: " + " ".join(b.get("text", {}).get("text", "") for b in body), 2000))]
    if alert.reopened:
        when += f" · came back {alert.reopened} time{'s' if alert.reopened != 1 else ''}"
    blocks = [head, *body, context(when, _dashboard_links(dashboards))]
    return validate(Message(text=truncate(text, 3000), blocks=blocks))


_GROUP_NOUNS = {"lock_wait": "lock queue", "prepared_transaction": "prepared transaction", "unreachable": "target"}


def _counted(n: int, kind: str) -> str:
    noun = _GROUP_NOUNS.get(kind, "session")
    return f"{n} {noun}{'s' if n != 1 else ''}"


def _alert_seconds(alert: Any) -> float:
    d = alert.details
    return float(d.get("longest_wait_seconds") or d.get("seconds") or alert.peak_seconds or 0.0)


def _group_line(alert: Any) -> str:
    """One alert inside a grouped message: its summary without the environment, and its query."""
    line = _alert_summary(alert)[0].split(": ", 1)[-1]
    query = alert.details.get("query") or (alert.details.get("head") or {}).get("query")
    return f"• {escape(line)}" + (f" · {code(query, 80)}" if query else "")


def alert_group_message(alerts: Sequence[Any], *, dashboards: Mapping[str, str] | None = None) -> Message:
    """The alerts of one kind in one environment that share a message (one incident, one message):
    a single alert as alert_message shows it; several as a list, longest first, within Slack's
    text budget and with a count of the rest."""
    if len(alerts) == 1:
        return alert_message(alerts[0], dashboards=dashboards)
    first = alerts[0]
    env = one_line(first.environment, 40)
    title = ALERT_TITLES.get(first.kind, escape(first.kind))
    name = title.split(" ", 1)[1]
    now_open = sorted((a for a in alerts if a.is_open), key=lambda a: (-_alert_seconds(a), a.id))
    opened = min(a.opened_at for a in alerts)
    gone = len(alerts) - len(now_open)
    if now_open:
        line = f"{env}: {_counted(len(now_open), first.kind)}, longest {duration(_alert_seconds(now_open[0]))}"
        head = header(f"{title}: {line}")
        text = f"{title}: {escape(line)}"
        heading = f"*Now* ({len(now_open)}, longest first)"
        lines = [_group_line(a) for a in now_open[:200]]
        body = [section(heading + "\n" + bounded_lines(lines, MAX_SECTION_TEXT - len(heading) - 1, total=len(now_open)))]
        when = f"open since {slack_time(opened)} · last checked {slack_time(max(a.last_seen_at for a in alerts))}"
        if gone:
            when += f" · {gone} more cleared since"
    else:
        lasted = "at least " + duration(max(a.peak_seconds for a in alerts))
        line = f"{env}: {_counted(len(alerts), first.kind)}"
        head = header(f":white_check_mark: Resolved: {name.lower()} · {line} · lasted {lasted}")
        text = f"RESOLVED: {name} {escape(line)} (lasted {lasted})"
        lines = [_group_line(a) for a in sorted(alerts, key=lambda a: (-_alert_seconds(a), a.id))[:100]]
        body = [context("Last seen:\n" + bounded_lines(lines, 2000 - 11, total=len(alerts)))]
        resolved = max((a.resolved_at or a.last_seen_at) for a in alerts)
        when = f"opened {slack_time(opened)} · resolved {slack_time(resolved)}"
    blocks = [head, *body, context(when, _dashboard_links(dashboards))]
    return validate(Message(text=truncate(text, 3000), blocks=blocks))


def escalation_message(alert: Any, owner: str, open_seconds: float, *, sessions: int = 1) -> Message:
    """The thread reply that tags the escalation owner (a user or a user group) once (runbook §7.2);
    `sessions` > 1 for a grouped message, which is tagged once for all it holds."""
    line, _ = _alert_summary(alert)
    if sessions > 1:
        line = f"{one_line(alert.environment, 40)}: {_counted(sessions, alert.kind)}"
    title = ALERT_TITLES.get(alert.kind, escape(alert.kind)).split(" ", 1)[1]
    text = (f"{mention(owner)} escalation: {escape(title.lower())} alert open for {duration(open_seconds)} — "
            f"{escape(line)} (runbook §7.2)")
    return validate(Message(text=truncate(text, 3000), blocks=[section(truncate(text, MAX_SECTION_TEXT))]))


def activity_message(environment: str, activity: Any, target: str) -> Message:
    """`/migrate activity`: the live picture (§4) against the environment's thresholds."""
    env = one_line(environment, 60)
    blocks: list[dict[str, Any]] = [header(f"Activity {env}"),
                                    context(f"target {code(target, 80)} · {slack_time(datetime.now(timezone.utc))}")]
    body = _activity_blocks(activity)
    quiet = not (activity.long_queries or activity.idle_in_transaction or activity.lock_waits or activity.prepared)
    if quiet:
        body.append(section(":white_check_mark: Nothing over the thresholds: no long queries, no sessions idle "
                            "in transaction, nobody waiting on a lock."))
    blocks.extend(body[:MAX_BLOCKS - len(blocks)])
    text = (f"Activity {escape(env)}: {len(activity.long_queries)} long, {len(activity.idle_in_transaction)} idle "
            f"in transaction, {len(activity.lock_waits)} waiting on locks")
    return validate(Message(text=text, blocks=blocks))


def watch_message(environment: str, state: Any, alerts: Sequence[Any], every_seconds: int, *,
                  changed: bool | None = None) -> Message:
    """`/migrate watch [env] on|off|status`: the switch, the last poll, the open alerts."""
    env = one_line(environment, 60)
    status = "paused" if state.paused else "on"
    blocks: list[dict[str, Any]] = [header(f"Watch {env}: {status}")]
    facts = [f"every {every_seconds} s"]
    if state.changed_at is not None:
        facts.append(f"{'paused' if state.paused else 'resumed'} by {_actor(state.changed_by)} {slack_time(state.changed_at)}")
    if changed is False:
        facts.append("(it already was)")
    if state.last_poll_at is None:
        facts.append("no poll yet")
    elif state.last_poll_ok:
        facts.append(f"last poll {slack_time(state.last_poll_at)} ok in {duration(state.last_poll_seconds)}")
    else:
        facts.append(f"last poll {slack_time(state.last_poll_at)} failed: {code(state.last_error or '?', 300)}")
    blocks.append(section(truncate(" · ".join(facts), MAX_SECTION_TEXT)))
    if alerts:
        lines = [f"• {ALERT_TITLES.get(a.kind, escape(a.kind))}: {escape(_alert_summary(a)[0])} · open since "
                 f"{slack_time(a.opened_at)}" for a in alerts[:100]]
        title = f"*Open alerts* ({len(alerts)})"
        blocks.append(titled_section(title, lines, total=len(alerts)))
    else:
        blocks.append(section("No open alerts."))
    text = f"Watch {escape(env)}: {status}, {len(alerts)} open alert{'s' if len(alerts) != 1 else ''}"
    return validate(Message(text=text, blocks=blocks))


__all__ = ["link", "alert_line", "actor_text", "alert_message", "alert_group_message", "escalation_message", "activity_message", "watch_message", "links_line"]
