"""A Slack Web API on loopback, for the tests and the console demo.

    with LocalSlack() as slack:
        client = WebClient(token="xoxb-local", base_url=slack.url)
        client.chat_postMessage(channel="C0LOCAL", text="hi")
        call = slack.wait_for_call("chat.postMessage")

`LocalSlack` serves the methods the bot calls on 127.0.0.1 (port 0), records every
call (method, headers, parsed body) and answers like Slack would. Scripted faults
(`fail_next`) give 429 with Retry-After, 500, or `ok: false`; `rate_limits` make it
answer 429 as Slack does when a method is called too often for one channel. `/response/<id>`
stands for `response_url`s, `/upload/<file id>` for files_upload_v2 upload URLs,
and an attached `LocalSocketMode` makes `apps.connections.open` hand out a ws://
URL on loopback. Nothing here touches the network beyond 127.0.0.1.

It is as strict as Slack where the bot could go wrong:
- channel membership: the bot posts, updates, uploads and sends ephemerals only in
  channels it has joined (`join`, or `joined=` at construction). A public channel it
  has not joined answers `not_in_channel`; a private one (`add_channel(private=True)`),
  a DM between people (`add_dm`) or an unknown id answers `channel_not_found`; an
  ephemeral in the bot's own DM without the Messages tab answers `messages_tab_disabled`;
- blocks: more than 50, an unknown type (`invalid_blocks`), more than 12,000 characters of
  block text in all (`msg_blocks_too_long`);
- a response_url takes 5 posts within 30 minutes, then answers 404 `used_url`.
"""
from __future__ import annotations

import email.parser
import email.policy
import itertools
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qsl, urlsplit

LOCAL_TEAM_ID = "T0LOCAL"
LOCAL_BOT_USER_ID = "U0RUNBOOK"
LOCAL_BOT_ID = "B0RUNBOOK"
LOCAL_APP_ID = "A0RUNBOOK"

# form fields the SDK sends as JSON strings; decoded so tests can read them directly
_JSON_FIELDS = ("blocks", "attachments", "files", "metadata")

# What Slack refuses in blocks (see bot/blocks.py for the bot's own, tighter, budget).
SLACK_MAX_BLOCKS = 50
SLACK_MAX_TOTAL_TEXT = 12000
SLACK_BLOCK_TYPES = frozenset({"section", "divider", "header", "context", "actions", "image", "input", "rich_text",
                               "file", "video", "markdown", "table", "context_actions"})
RESPONSE_URL_USES = 5
RESPONSE_URL_WINDOW = 30 * 60.0


def _block_text(block: Any) -> int:
    if not isinstance(block, dict):
        return 0
    parts = [block.get("text"), *(block.get("fields") or [])]
    if block.get("type") == "context":
        parts += list(block.get("elements") or [])
    return sum(len(p.get("text") or "") for p in parts if isinstance(p, dict) and isinstance(p.get("text"), str))


def blocks_refusal(blocks: Any) -> str | None:
    """Slack's error for blocks it would refuse, else None."""
    if blocks in (None, "", []):
        return None
    if not isinstance(blocks, list) or len(blocks) > SLACK_MAX_BLOCKS:
        return "invalid_blocks"
    if any(not isinstance(b, dict) or b.get("type") not in SLACK_BLOCK_TYPES for b in blocks):
        return "invalid_blocks"
    if sum(_block_text(b) for b in blocks) > SLACK_MAX_TOTAL_TEXT:
        return "msg_blocks_too_long"
    return None


@dataclass
class Channel:
    """A conversation as the local Slack knows it."""

    id: str
    private: bool = False
    joined: bool = False            # the bot is a member
    dm: bool = False                # an IM: with the bot (`with_bot`) or between people
    with_bot: bool = False
    messages_tab: bool = True       # for the bot's own DM: the App Home's Messages tab is on
    name: str | None = None         # what conversations.info calls it (default: the id in lower case)


class _MappingAccess:
    """`obj["text"]` / `obj.get("text")` as well as attributes (handy in the console demo)."""

    def __getitem__(self, key: str) -> Any:
        try:
            return getattr(self, key)
        except AttributeError:
            raise KeyError(key) from None

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default)


@dataclass(frozen=True)
class Call:
    """One request the local Slack received."""

    method: str                 # "chat.postMessage", "upload", "response", or whatever unknown name was called
    path: str
    headers: dict[str, str]     # lower-case names
    body: dict[str, Any]        # query string + form / JSON / multipart fields, JSON fields decoded
    raw: bytes
    status: int
    response: Any               # the JSON answer (dict) or text
    at: float                   # time.monotonic() when recorded
    fault: str | None = None    # the scripted fault that answered, if any

    @property
    def token(self) -> str | None:
        auth = self.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:]
        return self.body.get("token")


@dataclass
class PostedMessage(_MappingAccess):
    """A message as the local Slack stores it (chat.postMessage, postEphemeral, response_url, a file)."""

    kind: str                   # "message", "ephemeral", "response" or "file" (a file shared on its own)
    channel: str | None
    ts: str
    text: str
    blocks: list[dict[str, Any]]
    thread_ts: str | None = None
    user: str | None = None      # the one user who sees an ephemeral message
    response_id: str | None = None
    versions: list[dict[str, Any]] = field(default_factory=list)   # earlier (text, blocks), oldest first
    files: list["UploadedFile"] = field(default_factory=list)      # uploaded into this message's thread

    @property
    def updates(self) -> int:
        return len(self.versions)

    @property
    def ephemeral(self) -> bool:
        return self.kind in ("ephemeral", "response")


@dataclass
class UploadedFile(_MappingAccess):
    id: str
    filename: str
    title: str | None = None
    length: int | None = None
    content: bytes | None = None
    channel_id: str | None = None
    initial_comment: str | None = None
    thread_ts: str | None = None
    completed: bool = False

    @property
    def text(self) -> str:
        return (self.content or b"").decode("utf-8", "replace")


@dataclass
class _Fault:
    status: int
    error: str | None
    retry_after: int | None
    times: int
    match: dict[str, Any] | None = None      # only calls whose body holds these items

    def applies(self, body: dict[str, Any] | None) -> bool:
        return not self.match or all((body or {}).get(k) == v for k, v in self.match.items())

    def describe(self) -> str:
        if self.status == 429:
            return "429 ratelimited"
        if self.status != 200:
            return f"{self.status}"
        return f"ok:false {self.error}"


Listener = Callable[[str, PostedMessage], None]


class LocalSlack:
    """The Slack Web API on 127.0.0.1; a context manager, or start()/stop()."""

    def __init__(self, *, socket_mode: bool = False, usergroups: dict[str, list[str]] | None = None,
                 host: str = "127.0.0.1", joined: tuple[str, ...] | list[str] = (),
                 rate_limits: dict[str, tuple[int, float]] | None = None) -> None:
        """`joined`: the channels the bot is a member of. `rate_limits`: {method: (calls, per_seconds)}
        allowed per channel, as Slack enforces them (chat.postMessage about 1 per second per channel,
        chat.update about 50 per minute); a call over the limit gets 429 with Retry-After and is
        recorded like any call."""
        self._host = host
        self._channels: dict[str, Channel] = {c: Channel(c, joined=True) for c in joined}
        self._response_uses: dict[str, list[float]] = {}
        self._rate_limits = dict(rate_limits or {})
        self._rate_windows: dict[tuple[str, str], list[float]] = {}
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._calls: list[Call] = []
        self._messages: list[PostedMessage] = []
        self._files: dict[str, UploadedFile] = {}
        self._faults: dict[str, list[_Fault]] = {}
        self._usergroups: dict[str, list[str]] = {k: list(v) for k, v in (usergroups or {}).items()}
        self._listeners: list[Listener] = []
        self._seq = itertools.count(1)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._own_socket_mode = socket_mode
        self.socket_mode: LocalSocketMode | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> "LocalSlack":
        if self._server is not None:
            return self
        handler = type("Handler", (_Handler,), {"slack": self})
        self._server = _Server((self._host, 0), handler)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="localslack-http", daemon=True)
        self._thread.start()
        if self._own_socket_mode and self.socket_mode is None:
            self.attach_socket_mode(LocalSocketMode().start())
        return self

    def stop(self) -> None:
        if self.socket_mode is not None and self._own_socket_mode:
            self.socket_mode.stop()
            self.socket_mode = None
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> "LocalSlack":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("LocalSlack is not started")
        return self._server.server_address[1]

    @property
    def root(self) -> str:
        return f"http://{self._host}:{self.port}"

    @property
    def url(self) -> str:
        """Base URL for `WebClient(base_url=...)` (ends with /api/)."""
        return f"{self.root}/api/"

    def attach_socket_mode(self, server: "LocalSocketMode") -> "LocalSocketMode":
        """apps.connections.open will answer with this server's ws:// URL."""
        self.socket_mode = server
        return server

    # ------------------------------------------------------------------ scripting

    def fail_next(self, method: str, *, status: int | None = None, error: str | None = None,
                  retry_after: int | None = 0, times: int = 1, match: dict[str, Any] | None = None) -> None:
        """Script the next `times` calls of `method` to fail.

        Default is 429 with `Retry-After: retry_after`; `status=500` answers a bare
        500; `error="channel_not_found"` answers 200 `{"ok": false, "error": ...}`.
        `match`: only calls whose body holds these items (e.g. {"ts": ...}: one message's
        updates). `method` "upload" fails the files_upload_v2 upload URL (status only).
        """
        if status is None:
            status = 200 if error else 429
        if status == 200 and not error:
            raise ValueError("fail_next with status 200 needs an error")
        with self._lock:
            self._faults.setdefault(method, []).append(_Fault(status, error, retry_after, times, match))

    def clear_faults(self, method: str | None = None) -> None:
        """Slack answers again: drop the faults still scripted (for `method`, or all)."""
        with self._lock:
            if method is None:
                self._faults.clear()
            else:
                self._faults.pop(method, None)

    def join(self, *channels: str) -> None:
        """The bot joins these (public unless added as private before): it may now post in them."""
        with self._lock:
            for channel in channels:
                self._channels.setdefault(channel, Channel(channel)).joined = True

    def leave(self, channel: str) -> None:
        with self._lock:
            self._channels.setdefault(channel, Channel(channel)).joined = False

    def add_channel(self, channel: str, *, private: bool = False, joined: bool = False,
                    name: str | None = None) -> None:
        """A channel that exists (a public one the bot has not joined answers `not_in_channel`;
        conversations.info says is_member false)."""
        with self._lock:
            self._channels[channel] = Channel(channel, private=private, joined=joined, name=name)

    def add_dm(self, channel: str, *, with_bot: bool = False, messages_tab: bool = True) -> None:
        """A direct message: the bot's own (it may post there; an ephemeral needs the Messages tab)
        or between people (the bot cannot see it at all)."""
        with self._lock:
            self._channels[channel] = Channel(channel, private=True, joined=with_bot, dm=True, with_bot=with_bot,
                                              messages_tab=messages_tab)

    def refusal(self, channel: str | None, *, ephemeral: bool = False) -> str | None:
        """Slack's error for the bot posting in `channel`, else None."""
        with self._lock:
            known = self._channels.get(channel or "")
        if known is None:
            return "channel_not_found"
        if known.dm and known.with_bot and ephemeral and not known.messages_tab:
            return "messages_tab_disabled"
        if known.joined:
            return None
        return "channel_not_found" if known.private else "not_in_channel"

    def set_usergroup(self, group_id: str, users: list[str]) -> None:
        with self._lock:
            self._usergroups[group_id] = list(users)

    def response_url(self, response_id: str | None = None) -> str:
        """Mint a response_url; posts to it are recorded as method "response"."""
        return f"{self.root}/response/{response_id or uuid.uuid4().hex[:12]}"

    def add_listener(self, listener: Listener) -> None:
        """`listener(event, message)` for every posted / updated / ephemeral / response message.

        event is "posted", "updated", "ephemeral", "response" or "file" (the message now
        holding the file: its thread parent, or a new "file" message). Called on the server
        thread, outside the lock; exceptions are swallowed.
        """
        with self._lock:
            self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    # ------------------------------------------------------------------ reading

    def calls(self, method: str | None = None) -> list[Call]:
        with self._lock:
            return [c for c in self._calls if method is None or c.method == method]

    def methods(self) -> list[str]:
        with self._lock:
            return [c.method for c in self._calls]

    def messages(self, channel: str | None = None, *, kind: str | None = None) -> list[PostedMessage]:
        """Everything shown to users, oldest first; `kind` narrows to "message", "ephemeral", ..."""
        with self._lock:
            return [m for m in self._messages
                    if (kind is None or m.kind == kind) and (channel is None or m.channel == channel)]

    def message(self, channel: str, ts: str) -> PostedMessage | None:
        with self._lock:
            for m in self._messages:
                if m.channel == channel and m.ts == ts and m.kind == "message":
                    return m
        return None

    def responses(self, response_id: str | None = None) -> list[PostedMessage]:
        with self._lock:
            return [m for m in self._messages
                    if m.kind == "response" and (response_id is None or m.response_id == response_id)]

    def files(self) -> list[UploadedFile]:
        """Files whose upload was completed (files.completeUploadExternal)."""
        with self._lock:
            return [f for f in self._files.values() if f.completed]

    def file(self, file_id: str) -> UploadedFile | None:
        with self._lock:
            return self._files.get(file_id)

    def clear(self) -> None:
        """Forget calls and messages (faults and user groups stay)."""
        with self._lock:
            self._calls.clear()
            self._messages.clear()
            self._files.clear()

    def wait_for_call(self, method: str, predicate: Callable[[Call], bool] | None = None,
                      timeout: float = 5.0) -> Call:
        """The first recorded call of `method` matching `predicate`; waits up to `timeout`."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for c in self._calls:
                    if c.method == method and (predicate is None or predicate(c)):
                        return c
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = ", ".join(c.method for c in self._calls[-20:]) or "none"
                    raise TimeoutError(f"no {method} call within {timeout} s (last calls: {seen})")
                self._changed.wait(left)

    def wait_for_message(self, predicate: Callable[[PostedMessage], bool] | None = None, *,
                         kind: str | None = None, timeout: float = 5.0) -> PostedMessage:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for m in self._messages:
                    if (kind is None or m.kind == kind) and (predicate is None or predicate(m)):
                        return m
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no matching message within {timeout} s ({len(self._messages)} stored)")
                self._changed.wait(left)

    # ------------------------------------------------------------------ internals

    def _next_ts(self) -> str:
        return f"{int(time.time())}.{next(self._seq):06d}"

    def _over_rate_limit(self, method: str, body: dict[str, Any]) -> int | None:
        """Seconds to wait when this call would go over the channel's limit, else None (and counted)."""
        limit = self._rate_limits.get(method)
        if limit is None:
            return None
        calls, per = limit
        now = time.monotonic()
        with self._lock:
            window = self._rate_windows.setdefault((method, str(body.get("channel") or "")), [])
            window[:] = [t for t in window if now - t < per]
            if len(window) >= calls:
                return max(1, int(per - (now - window[0]) + 0.999))
            window.append(now)
            return None

    def _take_fault(self, method: str, body: dict[str, Any] | None = None) -> _Fault | None:
        with self._lock:
            fault = next((f for f in self._faults.get(method) or [] if f.applies(body)), None)
            if fault is None:
                return None
            fault.times -= 1
            if fault.times <= 0:
                self._faults[method].remove(fault)
            return fault

    def _record(self, call: Call, events: list[tuple[str, PostedMessage]]) -> None:
        with self._changed:
            self._calls.append(call)
            listeners = list(self._listeners)
            self._changed.notify_all()
        for event, message in events:
            for listener in listeners:
                try:
                    listener(event, message)
                except Exception:  # a printing hook must never break the fake
                    pass

    # each answer: (status, headers, json-or-text, events)
    def _api(self, method: str, body: dict[str, Any], headers: dict[str, str]):
        """(status, headers, answer, events, fault description) for one Web API call."""
        fault = self._take_fault(method, body)
        if fault is not None:
            if fault.status == 429:
                return (429, {"Retry-After": str(fault.retry_after or 0)}, {"ok": False, "error": "ratelimited"},
                        [], fault.describe())
            if fault.status != 200:
                return fault.status, {}, "Internal Server Error", [], fault.describe()
            return 200, {}, {"ok": False, "error": fault.error}, [], fault.describe()
        retry_after = self._over_rate_limit(method, body)
        if retry_after is not None:
            return (429, {"Retry-After": str(retry_after)}, {"ok": False, "error": "ratelimited"}, [],
                    f"429 over the {method} rate limit of the channel")
        token = body.get("token")
        auth = headers.get("authorization", "")
        if not token and not auth.lower().startswith("bearer "):
            return 200, {}, {"ok": False, "error": "not_authed"}, [], None
        handler = _METHODS.get(method)
        if handler is None:
            return 200, {}, {"ok": False, "error": "unknown_method"}, [], None
        answer, events = handler(self, body)
        return 200, {}, answer, events, None

    # --- methods

    def _auth_test(self, body: dict[str, Any]):
        return {"ok": True, "url": self.root + "/", "team": "Local Workspace", "user": "runbook-bot",
                "team_id": LOCAL_TEAM_ID, "user_id": LOCAL_BOT_USER_ID, "bot_id": LOCAL_BOT_ID,
                "is_enterprise_install": False}, []

    def _conversations_info(self, body: dict[str, Any]):
        """As Slack answers a bot with channels:read: a public channel it is not in is found
        (is_member false); a private one it is not in, like an unknown id, is channel_not_found."""
        with self._lock:
            known = self._channels.get(body.get("channel") or "")
        if known is None or (known.private and not known.joined):
            return {"ok": False, "error": "channel_not_found"}, []
        return {"ok": True, "channel": {"id": known.id, "name": known.name or known.id.lower(), "is_channel": True,
                                        "is_private": known.private, "is_member": known.joined}}, []

    def _post_message(self, body: dict[str, Any]):
        channel = body.get("channel")
        refused = self.refusal(channel) or blocks_refusal(body.get("blocks"))
        if refused:
            return {"ok": False, "error": refused}, []
        text, blocks = body.get("text") or "", body.get("blocks") or []
        if not text and not blocks:
            return {"ok": False, "error": "no_text"}, []
        with self._lock:
            msg = PostedMessage("message", channel, self._next_ts(), text, list(blocks),
                                thread_ts=body.get("thread_ts") or None)
            self._messages.append(msg)
        return ({"ok": True, "channel": channel, "ts": msg.ts,
                 "message": {"type": "message", "text": text, "blocks": blocks, "ts": msg.ts,
                             "bot_id": LOCAL_BOT_ID, "user": LOCAL_BOT_USER_ID,
                             **({"thread_ts": msg.thread_ts} if msg.thread_ts else {})}},
                [("posted", msg)])

    def _update(self, body: dict[str, Any]):
        channel, ts = body.get("channel"), body.get("ts")
        refused = self.refusal(channel) or blocks_refusal(body.get("blocks"))
        if refused:
            return {"ok": False, "error": refused}, []
        with self._lock:
            msg = self.message(channel, ts) if channel and ts else None
            if msg is None:
                return {"ok": False, "error": "message_not_found"}, []
            msg.versions.append({"text": msg.text, "blocks": msg.blocks})
            if "text" in body:
                msg.text = body.get("text") or ""
            if "blocks" in body:
                msg.blocks = list(body.get("blocks") or [])
        return ({"ok": True, "channel": channel, "ts": ts, "text": msg.text,
                 "message": {"text": msg.text, "blocks": msg.blocks}}, [("updated", msg)])

    def _post_ephemeral(self, body: dict[str, Any]):
        channel, user = body.get("channel"), body.get("user")
        refused = self.refusal(channel, ephemeral=True) or blocks_refusal(body.get("blocks"))
        if refused:
            return {"ok": False, "error": refused}, []
        if not user:
            return {"ok": False, "error": "user_not_in_channel"}, []
        with self._lock:
            msg = PostedMessage("ephemeral", channel, self._next_ts(), body.get("text") or "",
                                list(body.get("blocks") or []), thread_ts=body.get("thread_ts") or None, user=user)
            self._messages.append(msg)
        return {"ok": True, "message_ts": msg.ts}, [("ephemeral", msg)]

    def _usergroup_users(self, body: dict[str, Any]):
        group = body.get("usergroup")
        with self._lock:
            users = self._usergroups.get(group)
        if users is None:
            return {"ok": False, "error": "no_such_subteam"}, []
        return {"ok": True, "users": list(users)}, []

    def _get_upload_url(self, body: dict[str, Any]):
        filename = body.get("filename")
        if not filename:
            return {"ok": False, "error": "invalid_arguments"}, []
        file_id = f"F{next(self._seq):08d}"
        length = body.get("length")
        with self._lock:
            self._files[file_id] = UploadedFile(file_id, filename,
                                                length=int(length) if str(length or "").isdigit() else None)
        return {"ok": True, "upload_url": f"{self.root}/upload/{file_id}", "file_id": file_id}, []

    def _complete_upload(self, body: dict[str, Any]):
        files = body.get("files")
        if not isinstance(files, list) or not files:
            return {"ok": False, "error": "invalid_arguments"}, []
        out = []
        with self._lock:
            for entry in files:
                f = self._files.get(entry.get("id")) if isinstance(entry, dict) else None
                if f is None or f.content is None:
                    return {"ok": False, "error": "file_not_found"}, []
            refused = self.refusal(body.get("channel_id")) if body.get("channel_id") else None
            if refused:
                return {"ok": False, "error": refused}, []
            for entry in files:
                f = self._files[entry["id"]]
                f.title = entry.get("title") or f.filename
                f.channel_id = body.get("channel_id") or None
                f.initial_comment = body.get("initial_comment") or None
                f.thread_ts = body.get("thread_ts") or None
                f.completed = True
                out.append({"id": f.id, "title": f.title, "name": f.filename, "size": len(f.content or b"")})
            completed = [self._files[entry["id"]] for entry in files]
            parent = self.message(completed[0].channel_id, completed[0].thread_ts) \
                if completed[0].channel_id and completed[0].thread_ts else None
            if parent is not None:
                parent.files.extend(completed)
                event = ("file", parent)
            else:
                shared = PostedMessage("file", completed[0].channel_id, self._next_ts(),
                                       completed[0].initial_comment or "", [], files=completed)
                self._messages.append(shared)
                event = ("file", shared)
        return {"ok": True, "files": out}, [event]

    def _connections_open(self, body: dict[str, Any]):
        if self.socket_mode is None:
            return {"ok": False, "error": "socket_mode_not_attached"}, []
        return {"ok": True, "url": self.socket_mode.url}, []

    def _upload(self, file_id: str, raw: bytes) -> tuple[int, str]:
        with self._lock:
            f = self._files.get(file_id)
            if f is None:
                return 404, "file not found"
            f.content = raw
        return 200, f"OK - {len(raw)}"

    def _response_refusal(self, response_id: str, body: dict[str, Any]) -> str | None:
        """Why Slack would refuse this response_url post (counting it as a use when not), else None."""
        refused = blocks_refusal(body.get("blocks"))
        if refused:
            return refused
        now = time.monotonic()
        with self._lock:
            uses = [t for t in self._response_uses.get(response_id, []) if now - t < RESPONSE_URL_WINDOW]
            if len(uses) >= RESPONSE_URL_USES:
                self._response_uses[response_id] = uses
                return "used_url"
            self._response_uses[response_id] = uses + [now]
        return None

    def _response(self, response_id: str, body: dict[str, Any]):
        with self._lock:
            msg = PostedMessage("response", None, self._next_ts(), body.get("text") or "",
                                list(body.get("blocks") or []), response_id=response_id)
            msg.versions = []
            self._messages.append(msg)
        return msg


_METHODS: dict[str, Callable[[LocalSlack, dict[str, Any]], tuple[dict[str, Any], list]]] = {
    "auth.test": LocalSlack._auth_test,
    "conversations.info": LocalSlack._conversations_info,
    "chat.postMessage": LocalSlack._post_message,
    "chat.update": LocalSlack._update,
    "chat.postEphemeral": LocalSlack._post_ephemeral,
    "usergroups.users.list": LocalSlack._usergroup_users,
    "files.getUploadURLExternal": LocalSlack._get_upload_url,
    "files.completeUploadExternal": LocalSlack._complete_upload,
    "apps.connections.open": LocalSlack._connections_open,
}


def _decode_json_fields(body: dict[str, Any]) -> dict[str, Any]:
    for key in _JSON_FIELDS:
        value = body.get(key)
        if isinstance(value, str) and value[:1] in ("[", "{"):
            try:
                body[key] = json.loads(value)
            except ValueError:
                pass
    return body


def parse_body(raw: bytes, content_type: str) -> dict[str, Any]:
    """Form, JSON or multipart into a dict (file parts become bytes)."""
    ctype = (content_type or "").lower()
    if not raw:
        return {}
    if ctype.startswith("application/json"):
        try:
            value = json.loads(raw.decode("utf-8"))
        except ValueError:
            return {"_unparsed": raw}
        return value if isinstance(value, dict) else {"_json": value}
    if ctype.startswith("multipart/form-data"):
        parser = email.parser.BytesParser(policy=email.policy.HTTP)
        msg = parser.parsebytes(b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + raw)
        out: dict[str, Any] = {}
        for part in msg.iter_parts():
            name = part.get_param("name", header="content-disposition")
            if not name:
                continue
            payload = part.get_payload(decode=True) or b""
            if part.get_filename() is not None:
                out[name] = payload
                out.setdefault("_filenames", {})[name] = part.get_filename()
            else:
                out[name] = payload.decode(part.get_content_charset() or "utf-8", "replace")
        return out
    try:
        return dict(parse_qsl(raw.decode("utf-8"), keep_blank_values=True))
    except UnicodeDecodeError:
        return {"_unparsed": raw}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128     # the default 5 resets bursts of concurrent clients


class _Handler(BaseHTTPRequestHandler):
    slack: LocalSlack
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        if isinstance(payload, (dict, list)):
            data = json.dumps(payload).encode()
            ctype = "application/json; charset=utf-8"
        else:
            data = str(payload).encode()
            ctype = "text/plain; charset=utf-8"
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _handle(self) -> None:
        slack = self.slack
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        parts = urlsplit(self.path)
        path = parts.path
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        segments = [s for s in path.split("/") if s]
        events: list[tuple[str, PostedMessage]] = []
        fault_desc = None
        if len(segments) == 2 and segments[0] == "upload":
            method = "upload"
            body: dict[str, Any] = {"file_id": segments[1], "length": len(raw)}
            resp_headers: dict[str, str] = {}
            fault = slack._take_fault("upload", body)
            if fault is not None:
                status, answer, fault_desc = (fault.status if fault.status != 200 else 500), "failed", fault.describe()
            else:
                status, answer = slack._upload(segments[1], raw)
        elif len(segments) == 2 and segments[0] == "response":
            method = "response"
            body = _decode_json_fields({**query, **parse_body(raw, headers.get("content-type", ""))})
            fault = slack._take_fault("response", body)
            if fault is not None:
                status = fault.status if fault.status != 200 else 404
                answer, resp_headers = fault.error or "failed", {}
                fault_desc = fault.describe()
            elif (refused := slack._response_refusal(segments[1], body)) is not None:
                status, answer, resp_headers = (404 if refused == "used_url" else 400), refused, {}
            else:
                message = slack._response(segments[1], body)
                events.append(("response", message))
                status, answer, resp_headers = 200, "ok", {}
        elif len(segments) == 2 and segments[0] == "api":
            method = segments[1]
            body = _decode_json_fields({**query, **parse_body(raw, headers.get("content-type", ""))})
            status, resp_headers, answer, events, fault_desc = slack._api(method, body, headers)
        else:
            method = "not_found"
            body = {}
            status, answer, resp_headers = 404, {"ok": False, "error": "not_found"}, {}
        # recorded before answering: a caller that got its answer always finds its call
        slack._record(Call(method, path, headers, body, raw, status, answer, time.monotonic(), fault_desc), events)
        self._send(status, answer, resp_headers)


# --------------------------------------------------------------------------
# Socket Mode on loopback

@dataclass
class SocketAck:
    envelope_id: str
    payload: dict[str, Any] | None
    raw: dict[str, Any]
    at: float


class LocalSocketMode:
    """A Socket Mode websocket server on 127.0.0.1 (port 0).

    Sends `hello` to every connection, sends envelopes on demand to the newest
    connection (Slack picks one connection per payload), and collects acks.
    """

    def __init__(self, host: str = "127.0.0.1") -> None:
        self._host = host
        self._cond = threading.Condition()
        self._connections: list[Any] = []
        self._acks: dict[str, SocketAck] = {}
        self._received: list[dict[str, Any]] = []
        self._connected_total = 0
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> "LocalSocketMode":
        from websockets.sync.server import serve

        self._server = serve(self._handler, self._host, 0, compression=None, ping_interval=None)
        self._thread = threading.Thread(target=self._server.serve_forever, name="localslack-socket", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> "LocalSocketMode":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._server.socket.getsockname()[1]

    @property
    def url(self) -> str:
        return f"ws://{self._host}:{self.port}/link"

    @property
    def connection_count(self) -> int:
        with self._cond:
            return len(self._connections)

    def _handler(self, connection: Any) -> None:
        with self._cond:
            self._connections.append(connection)
            self._connected_total += 1
            self._cond.notify_all()
        try:
            connection.send(json.dumps({
                "type": "hello", "num_connections": len(self._connections),
                "debug_info": {"host": "localslack", "approximate_connection_time": 3600},
                "connection_info": {"app_id": LOCAL_APP_ID},
            }))
            for raw in connection:
                try:
                    data = json.loads(raw)
                except (TypeError, ValueError):
                    continue
                with self._cond:
                    self._received.append(data)
                    envelope_id = data.get("envelope_id") if isinstance(data, dict) else None
                    if envelope_id:
                        self._acks[envelope_id] = SocketAck(envelope_id, data.get("payload"), data, time.monotonic())
                    self._cond.notify_all()
        except Exception:
            pass
        finally:
            with self._cond:
                if connection in self._connections:
                    self._connections.remove(connection)
                self._cond.notify_all()

    def wait_for_connection(self, count: int = 1, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self._connections) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no Socket Mode connection within {timeout} s")
                self._cond.wait(left)

    def send(self, envelope: dict[str, Any]) -> str:
        """Send an envelope (an envelope_id is added if missing) to the newest connection."""
        envelope = dict(envelope)
        envelope.setdefault("envelope_id", str(uuid.uuid4()))
        with self._cond:
            if not self._connections:
                raise RuntimeError("no Socket Mode client is connected")
            connection = self._connections[-1]
        connection.send(json.dumps(envelope))
        return envelope["envelope_id"]

    def send_slash_command(self, payload: dict[str, Any], *, retry_attempt: int = 0) -> str:
        return self.send({"type": "slash_commands", "payload": payload, "accepts_response_payload": True,
                          "retry_attempt": retry_attempt, "retry_reason": ""})

    def send_interactive(self, payload: dict[str, Any]) -> str:
        return self.send({"type": "interactive", "payload": payload,
                          "accepts_response_payload": payload.get("type") != "block_actions"})

    def send_disconnect(self, reason: str = "refresh_requested") -> None:
        with self._cond:
            connections = list(self._connections)
        for connection in connections:
            connection.send(json.dumps({"type": "disconnect", "reason": reason,
                                        "debug_info": {"host": "localslack"}}))

    def drop_connections(self) -> int:
        """Close every connection from this side without a word, as a network failure would; the
        client is expected to notice and reconnect. Returns how many were dropped."""
        with self._cond:
            connections = list(self._connections)
        for connection in connections:
            connection.close()
        return len(connections)

    def acks(self) -> dict[str, SocketAck]:
        with self._cond:
            return dict(self._acks)

    def wait_for_ack(self, envelope_id: str, timeout: float = 5.0) -> SocketAck:
        deadline = time.monotonic() + timeout
        with self._cond:
            while envelope_id not in self._acks:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no ack for envelope {envelope_id} within {timeout} s")
                self._cond.wait(left)
            return self._acks[envelope_id]


__all__ = ["LocalSlack", "LocalSocketMode", "Call", "Channel", "blocks_refusal", "PostedMessage", "UploadedFile", "SocketAck", "parse_body",
           "LOCAL_TEAM_ID", "LOCAL_BOT_USER_ID", "LOCAL_BOT_ID", "LOCAL_APP_ID"]
