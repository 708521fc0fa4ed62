"""Approvals (bot/approvals.py): one message per request, updated in place; the pointers and the result reply."""
from __future__ import annotations

from typing import Any, Sequence

from bot.render.core import (
    MAX_BLOCKS,
    MAX_CONTEXT_TEXT,
    MAX_SECTION_TEXT,
    Message,
    _who,
    actions,
    button,
    channel,
    code,
    context,
    escape,
    header,
    mention,
    one_line,
    section,
    slack_time,
    truncate,
    validate,
)


APPROVAL_STATE = {
    "pending": (":lock:", "approval needed"),
    "approved": (":hourglass_flowing_sand:", "approved, starting"),
    "executing": (":hourglass_flowing_sand:", "running"),
    "done": (":white_check_mark:", "done"),
    "failed": (":x:", "failed"),
    "rejected": (":no_entry:", "rejected"),
    "expired": (":warning:", "expired"),
    "cancelled": (":no_entry:", "cancelled"),
}


def approval_message(request: Any, *, title: str, summary: str, what: Sequence[dict[str, Any]],
                     result: Sequence[dict[str, Any]], approvers: Sequence[str], allow_self_approval: bool,
                     production: bool, action_ids: tuple[str, str], ask_again: str = "") -> Message:
    """An approval request as it stands: who asked, where, what will happen, the decisions so
    far, and Approve/Reject buttons while it is pending (their value: the request id only).

    `request`: runbook.state.approvals.ApprovalRequest. `action_ids`: (approve, reject).
    `ask_again`: the `/migrate` command that asks for the same again (shown when it never started).
    """
    emoji, state_text = APPROVAL_STATE.get(request.state, (":grey_question:", request.state))
    # a failed request whose run was interrupted (its process died) says so (bot.approvals.interrupted);
    # one whose execution never started too (runbook.state.approvals.ApprovalStore.reap_not_started)
    outcome = (getattr(request, "result", None) or {}).get("outcome") if request.state == "failed" else None
    interrupted = outcome == "interrupted"
    not_started = outcome == "not_started"
    if interrupted:
        emoji, state_text = ":warning:", "interrupted"
    elif not_started:
        emoji, state_text = ":warning:", "never started"
    env = one_line(request.environment, 40)
    approved = list(request.approvers)
    blocks: list[dict[str, Any]] = [header(f"{emoji} {one_line(title, 40)} {env}: {state_text}")]
    facts = [f"*Requested by*\n{_who(request.requester)}",
             f"*Environment*\n{code(env, 40)}" + (" :rotating_light: production" if production else ""),
             f"*Approvals*\n{len(approved)} of {request.required}",
             f"*Expires*\n{slack_time(request.expires_at)}" if request.state == "pending"
             else f"*Requested*\n{slack_time(request.created_at)}"]
    blocks.append(section(f"*{escape(one_line(summary, 400))}*", fields=facts))
    blocks.extend(list(what)[: MAX_BLOCKS - 12])
    decided = []
    for d in request.decisions:
        mark = {"approve": ":white_check_mark: approved", "yes": ":white_check_mark: approved with `--yes`",
                "reject": ":no_entry: rejected"}.get(d.decision, escape(d.decision))
        decided.append(f"{mark} by {_who(d.approver)} {slack_time(d.at, '{time}')}")
    if decided:
        blocks.append(context(truncate(" · ".join(decided), MAX_CONTEXT_TEXT)))
    if request.state == "pending":
        still = [a for a in approvers if a not in approved and (allow_self_approval or a != request.requester)]
        who = ", ".join(mention(a) for a in still[:20]) or "_nobody left who may approve_"
        left = max(0, request.required - len(approved))
        rule = "" if allow_self_approval else " The requester cannot approve their own request."
        blocks.append(section(f"Needs {left} more approval{'s' if left != 1 else ''} from {who}.{rule} "
                              "Reject by the requester withdraws the request."))
        confirm = {
            "title": {"type": "plain_text", "text": truncate(f"Approve this {title.lower()}?", 100)},
            "text": {"type": "mrkdwn", "text": truncate(f"{escape(one_line(summary, 300))} on {escape(env)}.", 300)},
            "confirm": {"type": "plain_text", "text": "Approve"},
            "deny": {"type": "plain_text", "text": "Cancel"},
        }
        blocks.append(actions(
            button("Approve", action_ids[0], request.id, style="primary", confirm=confirm),
            button("Reject", action_ids[1], request.id, style="danger"),
            block_id="approval_buttons"))
    elif request.state in ("approved", "executing"):
        progress = f": {escape(one_line(request.result_summary, 300))}" if request.result_summary else "…"
        blocks.append(section(f"{emoji} *{'Approved; starting' if request.state == 'approved' else 'Running'}*"
                              f"{progress}"))
    else:
        ending = {
            "done": "Done",
            "failed": "Stopped before it finished" if interrupted else "Never started" if not_started else "Failed",
            "rejected": f"Rejected by {_who(request.rejected_by) if request.rejected_by else 'an approver'}; "
                        "nothing was done",
            "expired": "Expired without enough approvals; nothing was done. Ask again to retry",
            "cancelled": "Cancelled; nothing was done",
        }.get(request.state, escape(request.state))
        detail = f": {escape(one_line(request.result_summary, 1500))}" if request.result_summary else ""
        blocks.append(section(truncate(f"{emoji} *{ending}*{detail}", MAX_SECTION_TEXT)))
        if not_started:
            blocks.append(section(truncate(
                ":point_right: Nothing was changed: the approval lapsed with it. To go ahead, ask again"
                + (f" with {code(ask_again, 300)}" if ask_again else "")
                + " and have it approved again.", MAX_SECTION_TEXT)))
        else:
            blocks.extend(list(result)[: MAX_BLOCKS - len(blocks) - 1])
    blocks.append(context(f"request `{request.id[:8]}` · every click is checked and audited by the bot"))
    text = (f"{title} {escape(env)}: {state_text} — {escape(one_line(summary, 200))} "
            f"(requested by {_who(request.requester)})")
    return validate(Message(text=text, blocks=blocks[:MAX_BLOCKS]))


def approval_pointer(channel_id: str, kind: str, environment: str) -> Message:
    """Ephemeral: the request was posted in the approvals channel, not where it was typed."""
    line = f"Approval for {escape(kind)} on {escape(one_line(environment, 40))} requested in {channel(channel_id)}."
    return validate(Message(text=line, blocks=[section(line)]))


def moved_pointer(channel_id: str, what: str) -> Message:
    """Via response_url: the answer is in `channel_id`, because the bot cannot post where the command
    was typed (not invited there, a private channel or a DM)."""
    line = (f":arrow_right: {escape(one_line(what, 150))} — posted in {channel(channel_id)}: the bot cannot post "
            "in this conversation (invite it here to get answers in place).")
    return validate(Message(text=line, blocks=[section(line)]))


def approval_result_reply(request: Any, *, title: str, result: Sequence[dict[str, Any]]) -> Message:
    """The thread reply that tells the requester how an approved request ended."""
    ok = request.state == "done"
    line = (f"{':white_check_mark:' if ok else ':x:'} {_who(request.requester)} {escape(one_line(title, 40))} "
            f"{escape(one_line(request.environment, 40))} {'done' if ok else 'failed'}"
            + (f": {escape(one_line(request.result_summary, 1500))}" if request.result_summary else ""))
    blocks = [section(truncate(line, MAX_SECTION_TEXT)), *list(result)[: MAX_BLOCKS - 1]]
    return validate(Message(text=truncate(line, 500), blocks=blocks))


__all__ = ["moved_pointer", "approval_message", "approval_pointer", "approval_result_reply"]
