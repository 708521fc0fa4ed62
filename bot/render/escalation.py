"""Escalation (§7.2) and the incident summary (§7.3), for bot/escalate.py; the pause hook and GitHub issue replies."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from bot.render.core import (
    MAX_BLOCKS,
    MAX_CONTEXT_TEXT,
    MAX_SECTION_TEXT,
    BlockError,
    FileUpload,
    Message,
    _who,
    channel,
    code,
    code_block,
    context,
    divider,
    duration,
    escape,
    header,
    here,
    mention,
    one_line,
    section,
    truncate,
    validate,
)
from bot.render.watch import link, links_line


def notify_mention(target: str) -> str:
    """A level's `notify` entry as a real mention: "here" -> <!here>, U… -> <@U…>, S… -> <!subteam^S…>."""
    return here() if target == "here" else mention(target)


def _runbook_sections(sections: Sequence[tuple[str, str | None]]) -> str:
    shown = []
    for title, url in sections:
        try:
            shown.append(link(url, title) if url else escape(title))
        except BlockError:
            shown.append(escape(title))
    return " · ".join(shown) or "none"


def escalation_level_message(escalation: Any, *, sections: Sequence[tuple[str, str | None]],
                             links: Mapping[str, str] | None, dashboards: Mapping[str, str] | None,
                             summary: Sequence[str] = (), summary_file: FileUpload | None = None,
                             hook: Any = None) -> Message:
    """One escalation (runbook.escalation.Escalation): whom it tags (first, so the notification shows
    it), why, what to do now, the runbook section for the current state, and from level 2 the §7.3
    summary (`summary`: mrkdwn sections) with its Markdown file. `hook`: the configured pause hook."""
    e = escalation
    env = one_line(e.environment, 40)
    name = one_line(e.config.name, 40)
    tagged = " ".join(notify_mention(t) for t in e.notify)
    reason = f": {escape(one_line(e.reason, 300))}" if e.reason else ""
    raised = "raised automatically" if e.automatic else f"raised by {_who(e.actor)}"
    emoji = ":information_source:" if e.level == 1 else ":rotating_light:"
    lead = f"{tagged + ' ' if tagged else ''}*Level {e.level} escalation ({escape(name)}) on {escape(env)}*{reason} ({raised})"
    blocks: list[dict[str, Any]] = [header(f"{emoji} Escalation level {e.level} ({name}): {env}"),
                                    section(truncate(lead, MAX_SECTION_TEXT))]
    if e.config.when:
        blocks.append(context(truncate("This level is for: " + escape("; ".join(e.config.when)), MAX_CONTEXT_TEXT)))
    if e.config.do:
        steps = "\n".join(f"{i}. {escape(item)}" for i, item in enumerate(e.config.do, 1))
        blocks.append(section(truncate(f"*What to do now*\n{steps}", MAX_SECTION_TEXT)))
    if e.config.pause_hook:
        blocks.append(section(
            f":double_vertical_bar: Running the pause hook {code(' '.join(hook.argv), 200)} now (timeout "
            f"{duration(hook.timeout_seconds)}); its outcome follows in this thread." if hook is not None else
            ":warning: No pause hook is configured (`escalation.pause_hook`): pause the application by hand."))
    for missing in e.missing:
        blocks.append(context(f":warning: Not configured: {escape(missing)}"))
    blocks.append(section(truncate(f"*Runbook*: {_runbook_sections(sections)}\n"
                                   f"Current state: {escape(one_line(e.situation.why, 800))}", MAX_SECTION_TEXT)))
    footer = [line for line in (links_line("Links", links), links_line("Dashboards", dashboards)) if line]
    room = MAX_BLOCKS - len(blocks) - 2
    if summary:
        blocks.append(divider())
        blocks.extend(section(truncate(part, MAX_SECTION_TEXT)) for part in list(summary)[:room - 1])
    if footer:
        blocks.append(context(*footer))
    text = f"{tagged + ' ' if tagged else ''}Escalation level {e.level} ({escape(name)}) on {escape(env)}{reason}"
    return validate(Message(text=truncate(text, 3000), blocks=blocks, files=[summary_file] if summary_file else []))


def escalation_pointer(channel_id: str, level: int, environment: str) -> Message:
    """Ephemeral: the escalation went to the escalation channel, not where it was typed."""
    line = f"Level {int(level)} escalation on {escape(one_line(environment, 40))} posted in {channel(channel_id)}."
    return validate(Message(text=line, blocks=[section(line)]))


def incident_message(title: str, summary: Sequence[str], summary_file: FileUpload | None) -> Message:
    """The §7.3 summary in a run's thread: mrkdwn sections, and the full Markdown as a file."""
    blocks: list[dict[str, Any]] = [header(f":page_facing_up: {one_line(title, 140)}")]
    blocks.extend(section(truncate(part, MAX_SECTION_TEXT)) for part in list(summary)[:MAX_BLOCKS - 2])
    blocks.append(context("Runbook §7.3 · the full summary, with the timeline, is in the attached Markdown file"))
    return validate(Message(text=escape(one_line(title, 300)), blocks=blocks,
                            files=[summary_file] if summary_file else []))


def pause_hook_reply(result: Any) -> Message:
    """The pause hook's outcome (runbook.escalation.HookResult): a failure says so, loudly."""
    argv = code(" ".join(result.argv), 200)
    if result.ok:
        line = f":white_check_mark: The pause hook {argv} exited 0 after {duration(result.seconds)}."
    else:
        line = (f":x: *The pause hook {argv} failed*: {escape(one_line(result.error or '?', 300))}. "
                "Pause the application by hand.")
    blocks = [section(line)]
    if result.output.strip():
        tail = result.output[-(MAX_SECTION_TEXT - 200):]
        blocks.append(section(truncate("*Its output* (redacted)\n" + code_block(tail), MAX_SECTION_TEXT)))
    else:
        blocks.append(context("It printed nothing."))
    return validate(Message(text=line, blocks=blocks))


def github_issue_reply(issue: Any, error: str | None) -> Message:
    """The GitHub issue a level opened (runbook.github.Issue), or why it could not."""
    if issue is not None:
        try:
            line = f":memo: GitHub issue {link(issue.url, f'#{issue.number}')} opened with the incident summary."
        except BlockError:
            line = f":memo: GitHub issue #{int(issue.number)} opened with the incident summary."
    else:
        line = f":warning: No GitHub issue: {escape(one_line(error or '?', 400))}"
    return validate(Message(text=line, blocks=[section(line)]))


__all__ = ["escalation_level_message", "escalation_pointer", "github_issue_reply", "incident_message", "notify_mention", "pause_hook_reply"]
