"""What `/migrate` answers about itself: the help, a one-line error reply, the working ack."""
from __future__ import annotations

import re
from typing import Any, Mapping

from bot.commands import ACTIONS
from bot.render.core import Message, Mrkdwn, bounded_lines, code, context, escape, header, one_line, section, validate


def help_message(actions_spec: Mapping[str, Any] | None = None) -> Message:
    """What `/migrate` can do, from bot.commands.ACTIONS."""
    if actions_spec is None:
        actions_spec = ACTIONS
    lines = []
    for spec in actions_spec.values():
        where = f" ({escape(spec.section)})" if getattr(spec, "section", "") else ""
        lines.append(f"{code(spec.usage, 120)} — {escape(spec.summary)}{where}")
    blocks = [
        header("runbook-bot: /migrate"),
        section(bounded_lines(lines)),
        context("The environment may be left out when only one is configured. "
                "Long output arrives as a file; stateful steps ask for approval."),
    ]
    names = ", ".join(escape(name) for name in actions_spec)
    return validate(Message(text=f"/migrate commands: {names}", blocks=blocks))


# An engine text names a command as the CLI spells it (`backups production`); in Slack it is `/migrate ...`.
_BARE_COMMAND = re.compile(r"`((?:" + "|".join(re.escape(a) for a in ACTIONS) + r")(?: [^`\n]*)?)`")


def slack_wording(text: str) -> str:
    """An engine message as Slack shows it: every command it names gets its `/migrate ` prefix."""
    return _BARE_COMMAND.sub(lambda m: f"`/migrate {m.group(1)}`", text)


def error_message(text: str) -> Message:
    """One line for an ephemeral reply: escaped, unless it is Mrkdwn (built by `mrkdwn()`, whose
    mentions must stay mentions; it is only flattened, never cut inside a mention). Commands the
    engine names the CLI way are named as Slack spells them (slack_wording)."""
    if isinstance(text, Mrkdwn):
        line = " ".join(text.split())
        if len(line) > 1000:
            cut = line.rfind(" ", 0, 999)          # mentions hold no spaces: never cut inside one
            line = line[:cut if cut > 0 else 999] + " …"
    else:
        line = escape(one_line(slack_wording(text), 500))
    line = line or "Something went wrong."
    return validate(Message(text=f":warning: {line}", blocks=[section(f":warning: {line}")]))


def working_text(command_text: str) -> str:
    """The immediate ack of a command that runs in the background."""
    return f"Working on {code(command_text, 200)}…"


__all__ = ["help_message", "error_message", "working_text"]
