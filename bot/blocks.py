"""Block Kit builders and the one validator every message passes (design rule 7).

Everything here is pure: dataclasses in, `Message` out. Untrusted text (queries,
revision messages, errors, anything typed by a user) goes through `escape()`;
mentions are only ever built by `user()`, `usergroup()`, `mention()` and `here()`.

Limits (reference/slack.md §2.1): 50 blocks per message, section text 3000,
header 150, 10 section fields of 2000, button value 2000, unique action_id and
block_id, known block types, and a non-empty top-level `text` fallback. Renderers
keep inside them whatever the input size by truncating lists with "… and N more".
A message's block text in all stays within MAX_TOTAL_TEXT: `validate` moves the
blocks past it into an attached file, with a line saying so (`fit_text_budget`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping, NamedTuple, Sequence

from bot.commands import ACTIONS
from runbook.units import human_size, shorten

MAX_BLOCKS = 50
MAX_SECTION_TEXT = 3000
MAX_HEADER_TEXT = 150
MAX_FIELDS = 10
MAX_FIELD_TEXT = 2000
MAX_CONTEXT_ELEMENTS = 10
MAX_CONTEXT_TEXT = 3000
MAX_ACTIONS_ELEMENTS = 25
MAX_BUTTON_TEXT = 75
MAX_BUTTON_VALUE = 2000
MAX_URL = 3000
MAX_ID = 255
MAX_FALLBACK_TEXT = 40000      # Slack truncates above this; renderers keep it to a few hundred
# Slack refuses a message whose blocks hold more than about 12,000 characters of text in all
# (`msg_blocks_too_long`, undocumented: bolt-js #2867, #2509), each block within its own limit.
# Our budget keeps a margin; what does not fit goes into an attached file (design rule 19).
MAX_TOTAL_TEXT = 11000
# Block types Slack knows; anything else is `invalid_blocks`.
BLOCK_TYPES = frozenset({"section", "divider", "header", "context", "actions", "image", "input", "rich_text",
                         "file", "video", "markdown"})
OVERFLOW_FILENAME = "rest-of-message.txt"

# An inline SQL preview must leave room in its section for the fences and a title.
SQL_INLINE_LIMIT = 2500
# Longest query snippet shown per session (the full text never goes to Slack).
QUERY_SNIPPET = 240


class BlockError(ValueError):
    """A message that Slack would reject (or that breaks our own rules)."""


class FileUpload(NamedTuple):
    """A file that goes up with the message (files_upload_v2)."""

    title: str
    filename: str
    content: str | bytes


@dataclass
class Message:
    """What every surface posts: a text fallback, blocks, and optional files."""

    text: str
    blocks: list[dict[str, Any]] = field(default_factory=list)
    files: list[FileUpload] = field(default_factory=list)

    def as_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for chat_postMessage / chat_update / respond / ack."""
        out: dict[str, Any] = {"text": self.text}
        if self.blocks:
            out["blocks"] = self.blocks
        return out


# --------------------------------------------------------------------------
# text helpers

class Mrkdwn(str):
    """Text that is Slack mrkdwn already: a mention built by the helpers below, or a line put
    together by `mrkdwn()` from escaped pieces. `escape()` leaves it as it is, so a mention is
    never escaped a second time (which shows `&lt;@U…&gt;` instead of the person)."""

    __slots__ = ()


def escape(text: Any) -> str:
    """Neutralise mrkdwn control characters; only &, < and > (Slack's rule). Mrkdwn is left alone."""
    if isinstance(text, Mrkdwn):
        return text
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def mrkdwn(template: str, *args: Any, **kwargs: Any) -> Mrkdwn:
    """`template.format(...)` with every argument escaped unless it is Mrkdwn (a mention, or a
    line built here): the one way to write a line that mixes mentions with untrusted text.
    `template` is the program's own text, never a user's."""
    return Mrkdwn(template.format(*(escape(a) for a in args), **{k: escape(v) for k, v in kwargs.items()}))


def mentions(slack_ids: Sequence[str], limit: int = 10, *, none: str = "nobody") -> Mrkdwn:
    """Users and user groups as real mentions, comma-separated, at most `limit` of them."""
    shown = [mention(i) for i in slack_ids[:limit]]
    more = f" and {len(slack_ids) - limit} more" if len(slack_ids) > limit else ""
    return Mrkdwn(", ".join(shown) + more) if shown else Mrkdwn(escape(none))


def truncate(text: str, limit: int) -> str:
    """At most `limit` characters, cut at a word boundary with an ellipsis (runbook.units.shorten)."""
    return shorten(text, limit)


def code(text: Any, limit: int = 200) -> str:
    """Inline code of untrusted text: escaped, one line, no backticks to break out."""
    flat = " ".join(str(text).split())
    flat = truncate(flat, limit).replace("`", "ˋ")
    return f"`{escape(flat)}`" if flat else "` `"


def code_block(text: Any) -> str:
    """A fenced block of untrusted text: escaped, fences inside cannot close it."""
    body = escape(str(text)).replace("```", "`\u200b``")
    return f"```{body}```"


def one_line(text: Any, limit: int = 300) -> str:
    """The first line of `text`, whitespace collapsed, truncated (not escaped)."""
    first = str(text).strip().splitlines()[0] if str(text).strip() else ""
    return truncate(" ".join(first.split()), limit)


_USER_ID = re.compile(r"^[UW][A-Z0-9]{2,}$")
_GROUP_ID = re.compile(r"^S[A-Z0-9]{2,}$")
_CHANNEL_ID = re.compile(r"^[CGD][A-Z0-9]{2,}$")


def user(user_id: str) -> str:
    """`<@U…>`: the only way a user mention is written."""
    if not isinstance(user_id, str) or not _USER_ID.match(user_id):
        raise BlockError(f"not a Slack user ID: {user_id!r:.40}")
    return Mrkdwn(f"<@{user_id}>")


def usergroup(group_id: str) -> str:
    """`<!subteam^S…>`: the only way a user-group mention is written."""
    if not isinstance(group_id, str) or not _GROUP_ID.match(group_id):
        raise BlockError(f"not a Slack user group ID: {group_id!r:.40}")
    return Mrkdwn(f"<!subteam^{group_id}>")


def mention(slack_id: str) -> Mrkdwn:
    """A user or a user group, chosen by the ID's prefix (approvers lists hold both)."""
    if isinstance(slack_id, str) and slack_id.startswith("S"):
        return usergroup(slack_id)
    return user(slack_id)


def here() -> Mrkdwn:
    return Mrkdwn("<!here>")


def channel(channel_id: str) -> str:
    """`<#C…>`: a link to a channel."""
    if not isinstance(channel_id, str) or not _CHANNEL_ID.match(channel_id):
        raise BlockError(f"not a Slack channel ID: {channel_id!r:.40}")
    return Mrkdwn(f"<#{channel_id}>")


def is_user_id(value: Any) -> bool:
    return isinstance(value, str) and bool(_USER_ID.match(value))


def slack_time(when: datetime, fmt: str = "{date_short_pretty} {time}") -> str:
    """A timestamp each reader sees in their own time zone, UTC as the fallback."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    utc = when.astimezone(timezone.utc)
    fallback = utc.strftime("%Y-%m-%d %H:%M UTC")
    return f"<!date^{int(utc.timestamp())}^{fmt}|{fallback}>"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = max(0.0, float(seconds))
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    minutes, sec = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {sec} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def size(n: int | None) -> str:
    return human_size(n, unknown="?")


# --------------------------------------------------------------------------
# block builders

def header(text: str) -> dict[str, Any]:
    return {"type": "header", "text": {"type": "plain_text", "text": truncate(text, MAX_HEADER_TEXT), "emoji": True}}


def section(text: str, *, block_id: str | None = None, fields: Sequence[str] | None = None) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "section"}
    if text:
        block["text"] = {"type": "mrkdwn", "text": text}
    if fields:
        block["fields"] = [{"type": "mrkdwn", "text": f} for f in fields]
    if block_id:
        block["block_id"] = block_id
    return block


def context(*texts: str) -> dict[str, Any]:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": t} for t in texts if t]}


def divider() -> dict[str, Any]:
    return {"type": "divider"}


def button(text: str, action_id: str, value: str, *, style: str | None = None,
           confirm: Mapping[str, Any] | None = None) -> dict[str, Any]:
    element: dict[str, Any] = {
        "type": "button",
        "text": {"type": "plain_text", "text": truncate(text, MAX_BUTTON_TEXT), "emoji": True},
        "action_id": action_id,
        "value": value,
    }
    if style:
        element["style"] = style
    if confirm:
        element["confirm"] = dict(confirm)
    return element


def actions(*elements: dict[str, Any], block_id: str | None = None) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "actions", "elements": list(elements)}
    if block_id:
        block["block_id"] = block_id
    return block


def bounded_lines(lines: Sequence[str], limit: int = MAX_SECTION_TEXT, *, total: int | None = None,
                  more: str = "… and {n} more") -> str:
    """Join as many lines as fit in `limit` characters, then "… and N more".

    `total` is the real number of items when `lines` was already cut short.
    """
    return _fit_lines(lines, limit, total=total, more=more)[0]


def _fit_lines(lines: Sequence[str], limit: int, *, total: int | None = None,
               more: str = "… and {n} more") -> tuple[str, int]:
    """(text, how many of `lines` are shown)."""
    total = len(lines) if total is None else total
    if total == len(lines) and sum(len(line) for line in lines) + max(0, len(lines) - 1) <= limit:
        return "\n".join(lines), len(lines)
    out: list[str] = []
    used = 0
    for i, line in enumerate(lines):
        remaining_after = total - (i + 1)
        tail = len(more.format(n=total)) + 1 if remaining_after > 0 else 0
        cost = len(line) + (1 if out else 0)
        if used + cost + tail > limit:
            break
        out.append(line)
        used += cost
    shown = len(out)
    hidden = total - shown
    if hidden > 0:
        out.append(more.format(n=hidden))
    return truncate("\n".join(out), limit), shown


# --------------------------------------------------------------------------
# the validator

def _text_object(obj: Any, where: str, limit: int, *, plain_only: bool = False) -> None:
    if not isinstance(obj, Mapping):
        raise BlockError(f"{where}: must be a text object")
    kind = obj.get("type")
    if kind not in ("plain_text", "mrkdwn") or (plain_only and kind != "plain_text"):
        raise BlockError(f"{where}: text type must be {'plain_text' if plain_only else 'plain_text or mrkdwn'}")
    text = obj.get("text")
    if not isinstance(text, str) or not text.strip():
        raise BlockError(f"{where}: text is empty")
    if len(text) > limit:
        raise BlockError(f"{where}: text is {len(text)} characters; the limit is {limit}")


def _element(element: Any, where: str, action_ids: set[str]) -> None:
    if not isinstance(element, Mapping) or "type" not in element:
        raise BlockError(f"{where}: an element needs a type")
    action_id = element.get("action_id")
    if action_id is not None:
        if not isinstance(action_id, str) or not action_id or len(action_id) > MAX_ID:
            raise BlockError(f"{where}: action_id must be 1–{MAX_ID} characters")
        if action_id in action_ids:
            raise BlockError(f"{where}: duplicate action_id {action_id!r}")
        action_ids.add(action_id)
    if element["type"] == "button":
        _text_object(element.get("text"), f"{where} button text", MAX_BUTTON_TEXT, plain_only=True)
        value = element.get("value")
        if value is not None and (not isinstance(value, str) or len(value) > MAX_BUTTON_VALUE):
            raise BlockError(f"{where}: button value is over {MAX_BUTTON_VALUE} characters")
        url = element.get("url")
        if url is not None and len(str(url)) > MAX_URL:
            raise BlockError(f"{where}: button url is over {MAX_URL} characters")
        if element.get("style") not in (None, "primary", "danger"):
            raise BlockError(f"{where}: button style must be primary or danger")
        confirm = element.get("confirm")
        if confirm is not None:
            for key, limit in (("title", 100), ("text", 300), ("confirm", 30), ("deny", 30)):
                _text_object(confirm.get(key), f"{where} confirm.{key}", limit, plain_only=key != "text")


def block_text_length(block: Any) -> int:
    """The characters of text a block holds as Slack counts them towards a message's total: section
    text and fields, header text, context text elements."""
    if not isinstance(block, Mapping):
        return 0
    texts: list[Any] = []
    if block.get("type") in ("section", "header"):
        texts.append(block.get("text"))
        texts.extend(block.get("fields") or [])
    elif block.get("type") == "context":
        texts.extend(block.get("elements") or [])
    return sum(len(t.get("text") or "") for t in texts
               if isinstance(t, Mapping) and t.get("type") in ("plain_text", "mrkdwn"))


def text_length(blocks: Sequence[Any]) -> int:
    return sum(block_text_length(b) for b in blocks)


def _plain(block: Mapping[str, Any]) -> str:
    """A block's text for the overflow file: mrkdwn escapes undone (a file is not mrkdwn)."""
    parts: list[Any] = [block.get("text"), *(block.get("fields") or []), *(block.get("elements") or [])]
    texts = [p.get("text") for p in parts if isinstance(p, Mapping) and isinstance(p.get("text"), str)]
    return "\n".join(texts).replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def fit_text_budget(message: Message, *, budget: int = MAX_TOTAL_TEXT, attach: bool = True) -> Message:
    """The message within `budget` characters of block text: blocks are kept in order while they fit;
    from the first that does not, the text blocks go into one attached file (`attach`) or are cut
    (chat.update and response_url carry no files), and a context line in their place says so.
    Buttons (actions blocks) stay. A message within the budget is returned as it is."""
    if text_length(message.blocks) <= budget:
        return message
    note_room = 400
    kept: list[dict[str, Any]] = []
    moved: list[str] = []
    at: int | None = None
    total = 0
    for block in message.blocks:
        length = block_text_length(block)
        if at is None and total + length <= budget - note_room:
            kept.append(block)
            total += length
            continue
        if at is None:
            at = len(kept)
        if isinstance(block, Mapping) and block.get("type") == "actions":
            kept.append(block)
        elif length:
            moved.append(_plain(block))
    characters = sum(len(m) for m in moved)
    what = f"{len(moved)} more part{'s' if len(moved) != 1 else ''} of this message ({characters} characters)"
    files = list(message.files)
    if attach:
        files.append(FileUpload(f"The rest of: {truncate(one_line(message.text, 120), 120) or 'the message'}",
                                OVERFLOW_FILENAME, "\n\n".join(moved) + "\n"))
        note = f":page_facing_up: {what} did not fit in one Slack message: they are in the attached file `{OVERFLOW_FILENAME}`."
    else:
        note = f":scissors: {what} did not fit in one Slack message and were left out."
    kept.insert(at if at is not None else len(kept), context(note))
    return Message(text=message.text, blocks=kept[:MAX_BLOCKS], files=files)


def validate(message: Message) -> Message:
    """Raise BlockError with a clear reason if Slack would reject the message; else return it, within
    the total text budget (the blocks past it moved into an attached file: `fit_text_budget`)."""
    if not isinstance(message, Message):
        raise BlockError("not a Message")
    if not isinstance(message.text, str) or not message.text.strip():
        raise BlockError("the text fallback is missing (every message needs one)")
    if len(message.text) > MAX_FALLBACK_TEXT:
        raise BlockError(f"the text fallback is {len(message.text)} characters; the limit is {MAX_FALLBACK_TEXT}")
    blocks = message.blocks
    if not isinstance(blocks, list):
        raise BlockError("blocks must be a list")
    if len(blocks) > MAX_BLOCKS:
        raise BlockError(f"{len(blocks)} blocks; a message holds at most {MAX_BLOCKS}")
    block_ids: set[str] = set()
    action_ids: set[str] = set()
    for i, block in enumerate(blocks):
        kind = block.get("type") if isinstance(block, Mapping) else None
        where = f"block {i} ({kind or '?'})"
        if not kind:
            raise BlockError(f"block {i}: every block needs a type")
        if kind not in BLOCK_TYPES:
            raise BlockError(f"{where}: Slack has no block type {str(kind)[:40]!r}")
        block_id = block.get("block_id")
        if block_id is not None:
            if not isinstance(block_id, str) or not block_id or len(block_id) > MAX_ID:
                raise BlockError(f"{where}: block_id must be 1–{MAX_ID} characters")
            if block_id in block_ids:
                raise BlockError(f"{where}: duplicate block_id {block_id!r}")
            block_ids.add(block_id)
        if kind == "section":
            if "text" not in block and not block.get("fields"):
                raise BlockError(f"{where}: a section needs text or fields")
            if "text" in block:
                _text_object(block["text"], where, MAX_SECTION_TEXT)
            fields = block.get("fields") or []
            if len(fields) > MAX_FIELDS:
                raise BlockError(f"{where}: {len(fields)} fields; the limit is {MAX_FIELDS}")
            for j, f in enumerate(fields):
                _text_object(f, f"{where} field {j}", MAX_FIELD_TEXT)
            if "accessory" in block:
                _element(block["accessory"], f"{where} accessory", action_ids)
        elif kind == "header":
            _text_object(block.get("text"), where, MAX_HEADER_TEXT, plain_only=True)
        elif kind == "context":
            elements = block.get("elements") or []
            if not elements:
                raise BlockError(f"{where}: a context needs elements")
            if len(elements) > MAX_CONTEXT_ELEMENTS:
                raise BlockError(f"{where}: {len(elements)} elements; the limit is {MAX_CONTEXT_ELEMENTS}")
            for j, e in enumerate(elements):
                if isinstance(e, Mapping) and e.get("type") in ("plain_text", "mrkdwn"):
                    _text_object(e, f"{where} element {j}", MAX_CONTEXT_TEXT)
        elif kind == "actions":
            elements = block.get("elements") or []
            if not elements:
                raise BlockError(f"{where}: an actions block needs elements")
            if len(elements) > MAX_ACTIONS_ELEMENTS:
                raise BlockError(f"{where}: {len(elements)} elements; the limit is {MAX_ACTIONS_ELEMENTS}")
            for j, e in enumerate(elements):
                _element(e, f"{where} element {j}", action_ids)
        elif kind == "input":
            if "element" in block:
                _element(block["element"], f"{where} element", action_ids)
    for i, f in enumerate(message.files):
        if not isinstance(f, tuple) or len(f) != 3:
            raise BlockError(f"file {i}: must be (title, filename, content)")
        title, filename, content = f
        if not title or not filename:
            raise BlockError(f"file {i}: title and filename are required")
        if not isinstance(content, (str, bytes)):
            raise BlockError(f"file {i}: content must be str or bytes")
    if text_length(blocks) > MAX_TOTAL_TEXT:
        return validate(fit_text_budget(message))
    return message


# --------------------------------------------------------------------------
# renderers

STATUS_EMOJI = {"ok": ":white_check_mark:", "warn": ":warning:", "fail": ":x:"}
HUMAN_TODO = ":white_large_square:"


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


def _check_line(check: Any) -> str:
    emoji = STATUS_EMOJI.get(check.status, ":grey_question:")
    detail = f" — {escape(one_line(check.detail, 400))}" if check.detail else ""
    return f"{emoji} *{escape(one_line(check.name, 120))}*{detail}"


def _session_line(s: Any, *, seconds_label: str = "") -> str:
    who = " · ".join(
        part for part in (
            f"user {code(s.user, 40)}" if s.user else "",
            f"app {code(s.application, 40)}" if s.application else "",
            f"state {escape(s.state)}" if getattr(s, "state", None) else "",
        ) if part
    )
    return (f"• pid {s.pid} · {who + ' · ' if who else ''}{seconds_label}{duration(s.seconds)}\n"
            f"    {code(s.query, QUERY_SNIPPET)}")


def _lock_line(w: Any) -> str:
    what = ""
    if w.mode or w.relation:
        what = f" for {escape(w.mode or 'a lock')}" + (f" on {code(w.relation, 60)}" if w.relation else "")
    blocked = ", ".join(str(p) for p in w.blocked_by[:5]) + (" …" if len(w.blocked_by) > 5 else "")
    root = f" · root blocker {w.root_blocker}" if w.root_blocker is not None else ""
    who = " · ".join(p for p in (
        f"user {code(w.user, 40)}" if w.user else "", f"app {code(w.application, 40)}" if w.application else "") if p)
    return (f"• pid {w.pid}{' · ' + who if who else ''} · waiting {duration(w.seconds)}{what}"
            f" · blocked by {blocked or '?'}{root}\n    {code(w.query, QUERY_SNIPPET)}")


def _root_line(root: Any) -> str:
    if root.pid == 0 or root.prepared_gid:
        holder = f"prepared transaction {code(root.prepared_gid or '?', 80)}"
    else:
        holder = f"pid {root.pid}"
    s = root.session
    about = ""
    if s is not None:
        bits = [f"user {code(s.user, 40)}" if s.user else "", f"app {code(s.application, 40)}" if s.application else "",
                escape(s.state) if s.state else "", f"running {duration(s.seconds)}"]
        about = " (" + ", ".join(b for b in bits if b) + ")"
    head = root.head
    head_text = ""
    if head is not None:
        head_text = (f"\n    queue head: pid {head.pid} waiting {duration(head.seconds)}"
                     + (f" for {escape(head.mode)}" if head.mode else "")
                     + (f" on {code(head.relation, 60)}" if head.relation else ""))
    query = f"\n    {code(s.query, QUERY_SNIPPET)}" if s is not None and s.query else ""
    n = len(root.queue)
    return f"• *root blocker* {holder}{about} holds up {n} session{'s' if n != 1 else ''}{head_text}{query}"


def _activity_blocks(activity: Any) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    if activity is None:
        return blocks
    summary = (f"*Activity*: {activity.active_count} active session{'s' if activity.active_count != 1 else ''}, "
               f"{len(activity.long_queries)} long quer{'ies' if len(activity.long_queries) != 1 else 'y'}, "
               f"{len(activity.idle_in_transaction)} idle in transaction, "
               f"{len(activity.lock_waits)} waiting on locks")
    if activity.prepared:
        summary += f", {len(activity.prepared)} prepared transaction{'s' if len(activity.prepared) != 1 else ''}"
    blocks.append(section(truncate(summary, MAX_SECTION_TEXT)))
    if activity.long_queries:
        title = f"*Long queries* ({len(activity.long_queries)})"
        lines = [_session_line(s) for s in activity.long_queries[:200]]
        blocks.append(section(title + "\n" + bounded_lines(lines, MAX_SECTION_TEXT - len(title) - 1,
                                                           total=len(activity.long_queries))))
    if activity.idle_in_transaction:
        title = f"*Idle in transaction* ({len(activity.idle_in_transaction)})"
        lines = [_session_line(s, seconds_label="idle ") for s in activity.idle_in_transaction[:200]]
        blocks.append(section(title + "\n" + bounded_lines(lines, MAX_SECTION_TEXT - len(title) - 1,
                                                           total=len(activity.idle_in_transaction))))
    if activity.roots:
        title = f"*Blocking* ({len(activity.roots)} root blocker{'s' if len(activity.roots) != 1 else ''})"
        lines = [_root_line(r) for r in activity.roots[:200]]
        blocks.append(section(title + "\n" + bounded_lines(lines, MAX_SECTION_TEXT - len(title) - 1,
                                                           total=len(activity.roots))))
    if activity.lock_waits:
        title = f"*Lock waits* ({len(activity.lock_waits)})"
        lines = [_lock_line(w) for w in activity.lock_waits[:200]]
        blocks.append(section(title + "\n" + bounded_lines(lines, MAX_SECTION_TEXT - len(title) - 1,
                                                           total=len(activity.lock_waits))))
    if activity.prepared:
        title = f"*Prepared transactions* ({len(activity.prepared)})"
        lines = [f"• {code(p.gid, 80)} owner {code(p.owner or '?', 40)} · {duration(p.seconds)}"
                 for p in activity.prepared[:200]]
        blocks.append(section(title + "\n" + bounded_lines(lines, MAX_SECTION_TEXT - len(title) - 1,
                                                           total=len(activity.prepared))))
    return blocks


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
        blocks.append(section(title + "\n" + bounded_lines(lines, MAX_SECTION_TEXT - len(title) - 1,
                                                           total=len(human))))
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
        blocks.append(section(title + "\n" + bounded_lines(lines, MAX_SECTION_TEXT - len(title) - 1,
                                                           total=len(report.errors))))

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
        from bot.review_blocks import risk_blocks
        from runbook.review import review_to_json

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


def _event_value(event: Any, key: str) -> Any:
    if event is None:
        return None
    if isinstance(event, Mapping):
        return event.get(key)
    return getattr(event, key, None)


def _actor(actor: Any) -> str:
    if actor is None or actor == "":
        return "someone"
    if is_user_id(actor):
        return user(actor)
    return code(actor, 60)


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


def working_text(command_text: str) -> str:
    """The immediate ack of a command that runs in the background."""
    return f"Working on {code(command_text, 200)}…"


__all__ = [
    "BlockError", "FileUpload", "Message", "validate", "fit_text_budget", "text_length", "moved_pointer",
    "MAX_TOTAL_TEXT", "escape", "truncate", "code", "code_block", "one_line",
    "Mrkdwn", "mrkdwn", "mentions", "user", "usergroup", "mention", "here", "channel", "is_user_id", "slack_time",
    "duration", "size",
    "header", "section", "context", "divider", "button", "actions", "bounded_lines",
    "help_message", "error_message", "precheck_message", "status_message", "run_status_line", "working_text",
]


# --------------------------------------------------------------------------
# approvals (bot/approvals.py): one message per request, updated in place

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


def _who(actor: str) -> str:
    """A Slack user as a mention; anything else (cli:<user>) as code."""
    return user(actor) if is_user_id(actor) else code(actor, 60)


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


__all__ += ["approval_message", "approval_pointer", "approval_result_reply"]


# --------------------------------------------------------------------------
# the watch (issue 5): alerts, escalation, /migrate activity, /migrate watch

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
        blocks.append(section(title + "\n" + bounded_lines(lines, MAX_SECTION_TEXT - len(title) - 1, total=len(alerts))))
    else:
        blocks.append(section("No open alerts."))
    text = f"Watch {escape(env)}: {status}, {len(alerts)} open alert{'s' if len(alerts) != 1 else ''}"
    return validate(Message(text=text, blocks=blocks))


__all__ += ["link", "alert_message", "alert_group_message", "escalation_message", "activity_message", "watch_message"]


# --------------------------------------------------------------------------
# restore (§6.2–6.3): what an approval request shows, and the result

def _rows(n: Any) -> str:
    return f"{n:,} row{'s' if n != 1 else ''}" if isinstance(n, int) else "no table"


def _when(iso: Any) -> str:
    try:
        return slack_time(datetime.fromisoformat(str(iso)))
    except ValueError:
        return "at an unknown time"


def restore_summary(params: Mapping[str, Any], environment: str) -> str:
    """One line: what the restore does (text fallback, confirm dialog, audit)."""
    tables = params.get("tables") or []
    what = (f"{len(tables)} table{'s' if len(tables) != 1 else ''} ({', '.join(str(t) for t in tables[:5])}"
            f"{' …' if len(tables) > 5 else ''})") if params.get("mode") == "tables" else "the whole database"
    return f"Restore {what} of {environment} from backup #{params.get('backup_id')}"


# Request states after which nothing more happens: their messages speak in the past.
FINISHED_STATES = frozenset({"done", "failed", "rejected", "expired", "cancelled"})


def restore_request_blocks(params: Mapping[str, Any], state: str = "pending") -> list[dict[str, Any]]:
    """What will be replaced (rows now vs in the backup), the backup's facts, the revision guard;
    once the request is finished, what was replaced (done) or would have been (anything else)."""
    backup = params.get("backup") or {}
    changes = params.get("changes") or []
    verb = {"replace": "replaced", "create": "created", "drop": ":warning: *dropped* (not in the backup)"}
    then = {"done": "before"}.get(state, "then" if state in FINISHED_STATES else "now")
    lines = [f"• {code(c.get('table'), 80)}: {_rows(c.get('rows_now'))} {then} → "
             f"{_rows(c.get('rows_in_backup'))} in the backup — {verb.get(c.get('action'), escape(c.get('action')))}"
             for c in changes[:300]]
    what = ("What was replaced" if state == "done" else "What would have been replaced" if state in FINISHED_STATES
            else "What will be replaced")
    title = f"*{what}* ({'chosen tables' if params.get('mode') == 'tables' else 'full restore'})"
    out = [section(title + "\n" + bounded_lines(lines, MAX_SECTION_TEXT - len(title) - 1, total=len(changes)))]
    revision = backup.get("revision")
    facts = [f"*Backup* #{escape(params.get('backup_id'))} {code(backup.get('name', '?'), 80)}",
             f"{escape(backup.get('kind', '?'))}, {size(backup.get('size_bytes'))}, taken {_when(backup.get('finished_at'))}",
             f"verified to level {code(backup.get('level', '?'), 20)}, sha256 {code(str(backup.get('sha256') or '?')[:16] + '…', 24)}",
             f"taken at revision {_revs(revision) if revision else '_unknown_'}"]
    out.append(section(" · ".join(facts)))
    current = params.get("expected_revision") or []
    target, at = code(params.get('target', '?'), 80), _revs(current) if current else '_none_'
    if state == "done":
        out.append(section(f"*Target* {target} was at revision {at} when approved. A safety backup of it was "
                           "taken first, and the restore applied in one transaction."))
    elif state in FINISHED_STATES:
        out.append(section(f"*Target* {target} was at revision {at} when this was asked for."))
    else:
        out.append(section(f"*Target* {target} is at revision {at}: the restore stops if that changes before "
                           "it runs. A safety backup of the current state is taken first, and the restore applies "
                           "in one transaction: completely or not at all."))
    warnings = [f":warning: {escape(one_line(w, 400))}" for w in (params.get("warnings") or [])[:20]]
    if warnings:
        out.append(section(bounded_lines(warnings)))
    return out


def restore_result_blocks(result: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """After the restore: the revision and the row counts, mismatches against the backup flagged."""
    if not result:
        return []
    counts = result.get("row_counts_after") or {}
    mismatches = result.get("mismatches") or {}
    lines = []
    for table, n in list(counts.items())[:300]:
        flag = ""
        if table in mismatches:
            flag = f" :warning: the backup had {_rows(mismatches[table][0])}"
        lines.append(f"• {code(table, 80)}: {_rows(n)}{flag}")
    before, after = result.get("revision_before") or [], result.get("revision_after") or []
    head = (f"*Revision* {_revs(before) if before else '_none_'} → {_revs(after) if after else '_none_'}"
            + (f" · safety backup #{escape(result['safety_backup_id'])}" if result.get("safety_backup_id") else "")
            + (f" · took {duration(result.get('duration_seconds'))}" if result.get("duration_seconds") is not None else ""))
    out = [section(truncate(head, MAX_SECTION_TEXT))]
    if lines:
        title = "*Row counts after*"
        out.append(section(title + "\n" + bounded_lines(lines, MAX_SECTION_TEXT - len(title) - 1, total=len(counts))))
    return out


__all__ += ["restore_summary", "restore_request_blocks", "restore_result_blocks"]


# --------------------------------------------------------------------------
# backups (§2): the progress message, the result, the catalogue

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
            blocks.append(section(title + "\n" + bounded_lines(lines, MAX_SECTION_TEXT - len(title) - 1,
                                                               total=len(counts))))
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


__all__ += ["backup_progress_message", "backup_message", "backups_message"]


# --------------------------------------------------------------------------
# escalation (§7.2) and the incident summary (§7.3): bot/escalate.py

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


__all__ += ["escalation_level_message", "escalation_pointer", "github_issue_reply", "incident_message",
            "links_line", "notify_mention", "pause_hook_reply"]
