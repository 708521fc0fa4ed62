"""The console demo: type `/migrate …` as in Slack and see what the bot posts.

Nothing is simulated but Slack itself: the demo starts the embedded PostgreSQL,
builds the sample app's database at its first revision with data, runs the real
Bolt app behind its real HTTP server, and sends it signed slash commands. The
messages the bot posts to the local Slack Web API are rendered here as text.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import shutil
import sys
import tempfile
import textwrap
import time
import urllib.parse
import urllib.request
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable, TextIO

from bot.sample_app import ALEMBIC_ARGV, APP_DIR as SAMPLE_APP
DEMO_USER, DEMO_CHANNEL = "U0DEMO0001", "C0DEMO0001"
DEMO_APPROVER = "U0APPROVER1"      # the demo's configured approver (demo_config): `click approve` acts as them
SCRIPT = ("/migrate help", "/migrate status", "/migrate precheck")

WIDTH = 100


# -- rendering Block Kit as text --------------------------------------------------------

EMOJI = {
    ":white_check_mark:": "✔", ":warning:": "⚠", ":x:": "✘", ":white_large_square:": "☐",
    ":rotating_light:": "‼", ":page_facing_up:": "📄", ":no_entry:": "⛔", ":hourglass_flowing_sand:": "⏳",
    ":lock:": "🔒", ":information_source:": "ℹ", ":large_green_circle:": "●", ":large_yellow_circle:": "◐",
    ":red_circle:": "◉", ":floppy_disk:": "💾", ":floppy_disk:": "💾", ":heavy_minus_sign:": "–",
    ":point_right:": "👉", ":arrow_right:": "→", ":sos:": "🆘",
}


def _mrkdwn(text: str) -> str:
    """Slack mrkdwn to terminal text: links, dates and mentions readable, entities decoded."""
    text = re.sub(r"<!date\^\d+\^[^|>]*\|([^>]*)>", r"\1", text)
    text = re.sub(r":[a-z0-9_+-]+:", lambda m: EMOJI.get(m.group(0), m.group(0)), text)
    text = re.sub(r"<(https?://[^|>]+)\|([^>]+)>", r"\2 (\1)", text)
    text = re.sub(r"<@([UW][A-Z0-9]+)>", r"@\1", text)
    text = re.sub(r"<!subteam\^([A-Z0-9]+)>", r"@group:\1", text)
    text = re.sub(r"<!(here|channel|everyone)>", r"@\1", text)
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def _wrap(text: str, indent: str = "  ", continuation: str | None = None) -> list[str]:
    lines: list[str] = []
    in_code = False
    for raw in _mrkdwn(text).split("\n"):
        if raw.strip().startswith("```"):
            in_code = not in_code
            rest = raw.strip()[3:]
            if rest.endswith("```") and len(rest) >= 3:
                lines.append(indent + "  | " + rest[:-3])
                in_code = False
            elif rest:
                lines.append(indent + "  | " + rest)
            continue
        if in_code:
            lines.append(indent + "  | " + raw)
        else:
            lines.extend(textwrap.wrap(raw, WIDTH, initial_indent=indent,
                                       subsequent_indent=continuation if continuation is not None else indent) or [""])
    return lines


def render_message(message: dict[str, Any]) -> str:
    """A chat.postMessage/update/postEphemeral body as readable text."""
    blocks = message.get("blocks")
    if isinstance(blocks, str):
        blocks = json.loads(blocks)
    out: list[str] = []
    for block in blocks or []:
        kind = block.get("type")
        if kind == "header":
            title = _mrkdwn(block["text"]["text"])
            out += ["", "  " + title, "  " + "=" * min(len(title), WIDTH)]
        elif kind == "section":
            if block.get("text"):
                out += _wrap(block["text"]["text"])
            for field in block.get("fields") or []:
                out += _wrap(field["text"], "    ")
            accessory = block.get("accessory")
            if accessory and accessory.get("type") == "button":
                out.append(f"    [ {accessory['text']['text']} ]")
        elif kind == "context":
            for element in block.get("elements", []):
                out += _wrap(element.get("text", ""), "    · ", "      ")
        elif kind == "divider":
            out.append("  " + "-" * 40)
        elif kind == "actions":
            buttons = [f"[ {e['text']['text']} ]" for e in block.get("elements", []) if e.get("type") == "button"]
            out.append("  " + "  ".join(buttons))
        elif kind == "rich_text":
            for element in block.get("elements", []):
                texts = [e.get("text", "") for e in element.get("elements", [])]
                prefix = "  | " if element.get("type") == "rich_text_preformatted" else "  "
                out += [prefix + line for line in "".join(texts).split("\n")]
    if not out:
        out = _wrap(message.get("text", ""))
    return "\n".join(out)


# -- the demo ---------------------------------------------------------------------------

def _signed(secret: str, body: bytes) -> dict[str, str]:
    ts = str(int(time.time()))
    digest = hmac.new(secret.encode(), f"v0:{ts}:".encode() + body, hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": f"v0={digest}",
            "Content-Type": "application/x-www-form-urlencoded"}


def _slash(url: str, secret: str, text: str, response_url: str) -> tuple[int, str, float]:
    command, _, rest = text.strip().partition(" ")
    body = urllib.parse.urlencode({
        # Slack sends &, < and > in the text HTML-escaped; so does the demo (bot.commands.parse undoes it)
        "command": command, "text": rest.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;"),
        "user_id": DEMO_USER, "user_name": "demo",
        "channel_id": DEMO_CHANNEL, "team_id": "T0DEMO0001", "trigger_id": f"demo.{time.time_ns()}",
        "response_url": response_url,
    }).encode()
    started = time.monotonic()
    request = urllib.request.Request(url, data=body, headers=_signed(secret, body), method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        payload = response.read().decode()
    return response.status, payload, (time.monotonic() - started) * 1000


def _ack_text(payload: str) -> str:
    try:
        data = json.loads(payload)
        return data.get("text") or ""
    except ValueError:
        return payload


def _hands_over(text: str, flows) -> bool:
    """Whether the bot hands this command to its executor (a malformed one is answered in the ack)."""
    from bot.commands import CommandError, parse

    try:
        parse(text.split(None, 1)[1] if " " in text else "", flows.environment_names())
        return True
    except CommandError:
        return False


def _ack_blocks(payload: str) -> list | None:
    try:
        return json.loads(payload).get("blocks")
    except (ValueError, AttributeError):
        return None


class Demo:
    """The running demo: database, local Slack, bot. Usable as a context manager."""

    def __init__(self, out: TextIO = sys.stdout):
        self.out = out
        self._stack = ExitStack()

    def __enter__(self) -> "Demo":
        try:
            self._start()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def _start(self) -> None:
        from bot.localslack import LocalSlack
        from bot.server import Runtime
        from runbook.config import parse_settings
        from bot.embedded import start_server
        from bot.sample_app import REV_0001, sample_db_at

        self.say("Starting the embedded PostgreSQL and the sample app's database (Home Budget, at revision 0001)…")
        server = start_server()
        self._stack.callback(server.stop)
        url = server.create_database("home_budget")
        sample_db_at(url, REV_0001, seed_rows=200)
        work = Path(tempfile.mkdtemp(prefix="runbook-bot-demo-"))
        self._stack.callback(shutil.rmtree, work, True)
        config = work / "runbook-bot.yaml"
        config.write_text(demo_config(url, server.bin_dir))
        settings = parse_settings(config.read_text(), source=config)

        slack = LocalSlack(joined=(DEMO_CHANNEL,))     # the bot was invited to its channel (README)
        slack.start()
        self._stack.callback(slack.stop)
        self.slack = slack
        self.secret = "demo-signing-secret"
        runtime = Runtime.build(settings, bot_token="xoxb-demo-token", api_url=slack.url,
                                signing_secret=self.secret)
        self._stack.callback(runtime.close)
        self.runtime = runtime
        http = runtime.serve_http("127.0.0.1", 0, background=True)
        self._stack.callback(http.close)
        self.url = f"http://127.0.0.1:{http.port}/slack/events"
        self.say(f"Local Slack Web API at {slack.url}; the bot listens at {self.url}.")

    def run(self, text: str) -> int:
        text = text.strip()
        if text.split()[:1] == ["click"]:
            return self.click(text)
        if not text.startswith("/migrate"):
            self.say("  (type a slash command, e.g. /migrate help, `click approve` on an approval request, or 'quit')")
            return 0
        before = self._snapshot()
        submitted = self.runtime.flows.submitted
        status, payload, ms = _slash(self.url, self.secret, text, self.slack.response_url())
        self.say(f"  ack {status} in {ms:.0f} ms: {_mrkdwn(_ack_text(payload))}")
        ack_blocks = _ack_blocks(payload)
        if ack_blocks:
            self.say("\n── bot (reply only visible to you) " + "─" * 40)
            self.say(render_message({"blocks": ack_blocks}))
        self.runtime.flows.wait_idle(timeout=300, after=submitted if _hands_over(text, self.runtime.flows) else None)
        self._show_since(before)
        return status

    def _snapshot(self) -> tuple[list[tuple[Any, int]], int]:
        """What the local Slack holds now: each message with its update count, and the files."""
        return [(m, m.updates) for m in self.slack.messages()], len(self.slack.files())

    def _show_since(self, before: tuple[list[tuple[Any, int]], int]) -> None:
        """Every message the bot updated or posted since `before` (a thread reply marked as one, under
        the message it answers) and every file it uploaded, wherever it went."""
        messages, files = before
        for m, updates in messages:
            if m.updates > updates:
                # Slack shows the message changed in place; the terminal shows its title and what changed.
                was = render_message(m.versions[updates]).splitlines()
                now = render_message(m).splitlines()
                kept = set(was)
                changed = [line for line in now if line not in kept]
                title = next((line for line in now if line.strip()), "")
                self.say(f"\n── bot ({self._where(m, 'updated')}, {len(now) - len(changed)} unchanged lines "
                         "not repeated) " + "─" * 20)
                self.say("\n".join(([title] if title not in changed else []) + changed))
        for m in self.slack.messages()[len(messages):]:
            self.say(f"\n── bot ({self._where(m, 'posted')}) " + "─" * 40)
            self.say(render_message(m))
        for upload in self.slack.files()[files:]:
            parent = self.slack.message(upload.channel_id, upload.thread_ts) if upload.thread_ts else None
            where = (f"in the thread of “{_mrkdwn(_first_line(parent.text))}”" if parent is not None
                     else f"in #{upload.channel_id}")
            self.say(f"    📄 file uploaded {where}: {upload.filename} — {upload.title} "
                     f"({len(upload.content or b'')} bytes)")
        self.say("")

    def _where(self, m: Any, verb: str) -> str:
        if m.ephemeral:
            return "only visible to you"
        if m.thread_ts and m.thread_ts != m.ts:
            parent = self.slack.message(m.channel, m.thread_ts)
            shown = f" “{_mrkdwn(_first_line(parent.text))}”" if parent is not None else ""
            return f"↳ thread reply to{shown}"
        return f"{verb} in #{m.channel}"

    def click(self, text: str) -> int:
        """`click approve|reject [as U…]`: press a button of the newest approval request, as that
        user (by default the demo's configured approver), and show what the bot changed."""
        parts = text.split()
        if len(parts) not in (2, 4) or parts[1] not in ("approve", "reject") or (len(parts) == 4 and parts[2] != "as"):
            self.say("  (usage: click approve|reject [as U0SOMEONE1])")
            return 0
        user = parts[3] if len(parts) == 4 else DEMO_APPROVER
        action_id = f"approval_{parts[1]}"
        message = next((m for m in reversed(self.slack.messages(kind="message"))
                        if any(e.get("action_id") == action_id for b in m.blocks if b.get("type") == "actions"
                               for e in b.get("elements", []))), None)
        if message is None:
            self.say("  (no approval request with buttons to click: ask for one, e.g. /migrate run)")
            return 0
        [button] = [e for b in message.blocks if b.get("type") == "actions" for e in b["elements"]
                    if e.get("action_id") == action_id]
        before = self._snapshot()
        calls = len(self.slack.calls())
        status, ms = _click(self.url, self.secret, user, message.channel, message.ts, action_id, button["value"])
        self.say(f"  {user} clicked {button['text']['text']}: ack {status} in {ms:.0f} ms")
        # The ack comes before the click is decided: wait for its first answer (an update or an ephemeral).
        deadline = time.monotonic() + 30
        while len(self.slack.calls()) == calls and time.monotonic() < deadline:
            time.sleep(0.02)
        self.runtime.flows.wait_idle(timeout=300)
        self._show_since(before)
        return status


def _first_line(text: str, limit: int = 60) -> str:
    from runbook.units import shorten

    return shorten(" ".join((text or "").split()), limit)


def _click(url: str, secret: str, user: str, channel: str, ts: str, action_id: str, value: str) -> tuple[int, float]:
    """A signed block_actions request, as Slack sends it when a button is pressed."""
    payload = {
        "type": "block_actions", "team": {"id": "T0DEMO0001"}, "user": {"id": user, "name": "demo"},
        "channel": {"id": channel}, "container": {"type": "message", "message_ts": ts, "channel_id": channel},
        "message": {"ts": ts}, "trigger_id": f"demo.{time.time_ns()}",
        "actions": [{"type": "button", "action_id": action_id, "value": value, "action_ts": f"{time.time():.6f}"}],
    }
    body = urllib.parse.urlencode({"payload": json.dumps(payload)}).encode()
    started = time.monotonic()
    request = urllib.request.Request(url, data=body, headers=_signed(secret, body), method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()
    return response.status, (time.monotonic() - started) * 1000


def demo_config(url: str, bin_dir: Path) -> str:
    return textwrap.dedent(f"""\
        state_url: sqlite:///state.db
        slack: {{channel: {DEMO_CHANNEL}}}
        environments:
          production:
            database_url: {json.dumps(url)}
            app_dir: {json.dumps(str(SAMPLE_APP))}
            alembic: {json.dumps(ALEMBIC_ARGV)}
            pg_bin_dir: {json.dumps(str(bin_dir))}
            thresholds: {{long_query_seconds: 60, lock_wait_seconds: 10, idle_in_transaction_seconds: 60}}
            validation: {{tables: [expenses, incomes], required_columns: {{expenses: [date, amount]}}}}
            approvals: {{approvers: [{DEMO_APPROVER}], required: 1}}
        escalation:
          owner: {{slack: U0OWNER001, github: zeevbensender}}
        """)


def run_demo(scripted: bool = False, out: TextIO = sys.stdout) -> int:
    try:
        with Demo(out) as demo:
            if scripted:
                for line in SCRIPT:
                    demo.say(f"> {line}")
                    demo.run(line)
                return 0
            demo.say("Type /migrate commands as in Slack (try /migrate help, or /migrate run); `click approve` (or\n"
                     f"reject) presses a button of the newest approval request as the approver {DEMO_APPROVER};\n"
                     "'quit' or Ctrl-D to leave.")
            while True:
                try:
                    line = input("> ")
                except EOFError:
                    break
                if line.strip() in {"quit", "exit"}:
                    break
                if line.strip():
                    demo.run(line)
            return 0
    except KeyboardInterrupt:
        return 130
