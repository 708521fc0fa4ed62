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

The renderers, one module per domain, are its siblings in bot/render/ and build only from here.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping, NamedTuple, Sequence

from runbook.units import human_size, shorten

MAX_BLOCKS = 50
MAX_VIEW_BLOCKS = 100          # a view (the App Home tab, a modal) holds up to 100 blocks
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


def titled_section(title: str, lines: Sequence[str], *, total: int | None = None) -> dict[str, Any]:
    """A section of a title line and as many of `lines` as fit under it ("… and N more" after)."""
    return section(title + "\n" + bounded_lines(lines, MAX_SECTION_TEXT - len(title) - 1, total=total))


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


def fit_text_budget(message: Message, *, budget: int = MAX_TOTAL_TEXT, attach: bool = True,
                    max_blocks: int = MAX_BLOCKS) -> Message:
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
    return Message(text=message.text, blocks=kept[:max_blocks], files=files)


def validate(message: Message, *, view: bool = False) -> Message:
    """Raise BlockError with a clear reason if Slack would reject the message; else return it, within
    the total text budget (the blocks past it moved into an attached file: `fit_text_budget`).

    `view`: the blocks of a view (the App Home tab, views.publish): up to MAX_VIEW_BLOCKS blocks, no
    files; `text` is only the summary the bot logs (a view has no fallback text). The same total text
    budget applies, the rest cut with a line saying so."""
    if not isinstance(message, Message):
        raise BlockError("not a Message")
    if not view and (not isinstance(message.text, str) or not message.text.strip()):
        raise BlockError("the text fallback is missing (every message needs one)")
    if len(message.text) > MAX_FALLBACK_TEXT:
        raise BlockError(f"the text fallback is {len(message.text)} characters; the limit is {MAX_FALLBACK_TEXT}")
    blocks = message.blocks
    if not isinstance(blocks, list):
        raise BlockError("blocks must be a list")
    max_blocks = MAX_VIEW_BLOCKS if view else MAX_BLOCKS
    if len(blocks) > max_blocks:
        raise BlockError(f"{len(blocks)} blocks; a {'view' if view else 'message'} holds at most {max_blocks}")
    if view and message.files:
        raise BlockError("a view carries no files")
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
        return validate(fit_text_budget(message, attach=not view, max_blocks=max_blocks), view=view)
    return message


def _actor(actor: Any) -> str:
    if actor is None or actor == "":
        return "someone"
    if is_user_id(actor):
        return user(actor)
    return code(actor, 60)


def _who(actor: str) -> str:
    """A Slack user as a mention; anything else (cli:<user>) as code."""
    return user(actor) if is_user_id(actor) else code(actor, 60)


def _when(iso: Any) -> str:
    try:
        return slack_time(datetime.fromisoformat(str(iso)))
    except ValueError:
        return "at an unknown time"


__all__ = ["BlockError", "FileUpload", "Message", "validate", "MAX_VIEW_BLOCKS", "fit_text_budget", "text_length", "MAX_TOTAL_TEXT", "escape", "truncate", "code", "code_block", "one_line", "Mrkdwn", "mrkdwn", "mentions", "user", "usergroup", "mention", "here", "channel", "is_user_id", "slack_time", "duration", "size", "header", "section", "context", "divider", "button", "actions", "bounded_lines", "titled_section"]
