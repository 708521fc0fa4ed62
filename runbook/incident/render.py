"""An incident (and an escalation) rendered with the Jinja2 templates in runbook/templates/: Markdown
for files, the CLI and GitHub issues, mrkdwn sections for Slack; every value printed is scrubbed."""
from __future__ import annotations

from datetime import datetime, timezone
from functools import lru_cache
from typing import Any, Sequence

from jinja2 import Environment, PackageLoader, StrictUndefined

from runbook.incident.model import LEVEL_NAMES, Incident, Scrubber


# A Slack section holds 3000 characters; the log's code block keeps the newest lines that fit.
SLACK_LOG_CHARS = 2500
SECTION_BREAK = "\f"


def when(value: datetime | None) -> str:
    if value is None:
        return "none"
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def revisions(ids: Sequence[str] | None) -> str:
    return ", ".join(ids) if ids else "base"


def _mrkdwn(text: Any) -> str:
    """Slack's three control characters (the only ones it needs escaped)."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _slack_code(text: Any, limit: int = 300) -> str:
    flat = " ".join(str(text).split())
    flat = (flat[: limit - 1] + "…" if len(flat) > limit else flat).replace("`", "ˋ")
    return f"`{_mrkdwn(flat)}`" if flat else "none"


def _md_code(text: Any) -> str:
    """Inline Markdown code that no backtick inside can close."""
    flat = " ".join(str(text).split())
    if not flat:
        return "none"
    longest = max((len(part) for part in _backtick_runs(flat)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if flat.startswith("`") or flat.endswith("`") else ""
    return f"{fence}{pad}{flat}{pad}{fence}"


def _backtick_runs(text: str) -> list[str]:
    runs, current = [], ""
    for char in text:
        if char == "`":
            current += char
        elif current:
            runs.append(current)
            current = ""
    if current:
        runs.append(current)
    return runs


def _md_fence(lines: Sequence[str]) -> str:
    """A fenced block longer than any backtick run inside it."""
    longest = max((len(r) for line in lines for r in _backtick_runs(line)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}\n" + "\n".join(lines) + f"\n{fence}"


def _md_cell(text: Any) -> str:
    return " ".join(str(text).split()).replace("|", "\\|") or "none"


def _md_text(text: Any) -> str:
    """Free text in Markdown: one line; HTML, link syntax and GitHub @mentions defused."""
    flat = " ".join(str(text).split())
    return flat.replace("<", "&lt;").replace("[", "\\[").replace("@", "@\u200b") or "none"


def _people(ids: Sequence[str]) -> str:
    return ", ".join(ids) if ids else "none"


def _tail_fitting(lines: Sequence[str], limit: int) -> list[str]:
    kept: list[str] = []
    size = 0
    for line in reversed(lines):
        size += len(_mrkdwn(line)) + 1
        if size > limit:
            break
        kept.append(line)
    return list(reversed(kept))


@lru_cache(maxsize=1)
def _templates() -> Environment:
    env = Environment(loader=PackageLoader("runbook", "templates"), undefined=StrictUndefined,
                      autoescape=False, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.filters.update(when=when, revisions=revisions, mrkdwn=_mrkdwn, slack_code=_slack_code, md_code=_md_code,
                       md_cell=_md_cell, md_text=_md_text, md_fence=_md_fence, people=_people)
    return env


def render(template: str, secrets: Sequence[str] = (), **context: Any) -> str:
    """Render one of runbook/templates; every value printed passes `redact` with `secrets` too."""
    scrub = Scrubber(secrets)
    env = _templates().overlay(finalize=lambda value: scrub(value) if isinstance(value, str) else
                               ("" if value is None else value))
    return env.get_template(template).render(**context, level_names=LEVEL_NAMES)


def render_markdown(incident: Incident, *, secrets: Sequence[str] = ()) -> str:
    return render("incident.md.j2", secrets, incident=incident)


def render_mrkdwn(incident: Incident, *, secrets: Sequence[str] = ()) -> list[str]:
    """Slack mrkdwn, one string per section (the bot packs them into blocks)."""
    text = render("incident.slack.j2", secrets, incident=incident,
                  slack_log=_tail_fitting(incident.log_lines, SLACK_LOG_CHARS))
    return [part.strip("\n") for part in text.split(SECTION_BREAK) if part.strip()]


def filename(incident: Incident) -> str:
    stamp = incident.generated_at.strftime("%Y%m%d_%H%M%S")
    return f"incident_{incident.environment}_{incident.run_id or 'no-run'}_{stamp}.md"
