"""The console demo: type `/migrate …` as in Slack and see what the bot posts.

Nothing is simulated but Slack itself: the demo starts the embedded PostgreSQL,
builds the sample app's database at its first revision with data, runs the real
Bolt app behind its real HTTP server, and sends it signed slash commands. The
messages the bot posts to the local Slack Web API are rendered here as text.
"""
from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
import re
import shutil
import sys
import tempfile
import textwrap
import threading
import time
import urllib.parse
import urllib.request
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable, Iterable, TextIO

from bot.sample_app import ALEMBIC_ARGV, APP_DIR as SAMPLE_APP

WIDTH = 100


# -- rendering Block Kit as text --------------------------------------------------------

EMOJI = {
    ":white_check_mark:": "✔", ":warning:": "⚠", ":x:": "✘", ":white_large_square:": "☐",
    ":rotating_light:": "‼", ":page_facing_up:": "📄", ":no_entry:": "⛔", ":hourglass_flowing_sand:": "⏳",
    ":lock:": "🔒", ":information_source:": "ℹ", ":large_green_circle:": "●", ":large_yellow_circle:": "◐",
    ":red_circle:": "◉", ":floppy_disk:": "💾", ":heavy_minus_sign:": "–",
    ":point_right:": "👉", ":arrow_right:": "→", ":sos:": "🆘", ":grey_question:": "?",
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


def _wrap(text: str, indent: str = "  ", continuation: str | None = None, code_lines: int | None = None,
          rewrite: Callable[[str], str] | None = None) -> list[str]:
    """mrkdwn as wrapped lines; a code block as `| ` lines, its first `code_lines` only when given
    (the console shows the start of a SQL preview or a log, the file or thread has it all);
    `rewrite` changes the text before it is wrapped (Demo's steady transcript)."""
    lines: list[str] = []
    code: list[str] = []

    def end_code() -> None:
        shown = code if code_lines is None or len(code) <= code_lines + 1 else code[:code_lines]
        lines.extend(indent + "  | " + line for line in shown)
        if len(shown) < len(code):
            lines.append(indent + f"  | … {len(code) - len(shown)} more lines")
        code.clear()

    in_code = False
    text = _mrkdwn(text)
    for raw in (rewrite(text) if rewrite else text).split("\n"):
        stripped = raw.strip()
        if not in_code and stripped.startswith("```"):
            rest = stripped[3:]
            if rest.endswith("```") and len(rest) >= 3:     # a one-line block
                code.append(rest[:-3])
                end_code()
            else:
                in_code = True
                if rest:
                    code.append(rest)
            continue
        if in_code:
            if stripped.endswith("```"):                     # the block ends, maybe after text
                in_code = False
                if stripped[:-3]:
                    code.append(raw.rstrip()[:-3])
                end_code()
            else:
                code.append(raw)
            continue
        lines.extend(textwrap.wrap(raw, WIDTH, initial_indent=indent,
                                   subsequent_indent=continuation if continuation is not None else indent) or [""])
    if code:
        end_code()
    return lines


def render_message(message: dict[str, Any], *, code_lines: int | None = None,
                   rewrite: Callable[[str], str] | None = None) -> str:
    """A chat.postMessage/update/postEphemeral body as readable text (code blocks cut to their first
    `code_lines` when given; `rewrite` changes every text before it is wrapped)."""
    blocks = message.get("blocks")
    if isinstance(blocks, str):
        blocks = json.loads(blocks)
    out: list[str] = []
    for block in blocks or []:
        kind = block.get("type")
        if kind == "header":
            title = _mrkdwn(block["text"]["text"])
            title = rewrite(title) if rewrite else title
            out += ["", "  " + title, "  " + "=" * min(len(title), WIDTH)]
        elif kind == "section":
            if block.get("text"):
                out += _wrap(block["text"]["text"], code_lines=code_lines, rewrite=rewrite)
            for field in block.get("fields") or []:
                # "*Label*\nvalue" reads as one line in a terminal
                text = re.sub(r"^(\*[^*\n]+\*)\n", r"\1 ", field["text"])
                out += _wrap(text, "    ", code_lines=code_lines, rewrite=rewrite)
            accessory = block.get("accessory")
            if accessory and accessory.get("type") == "button":
                out.append(f"    [ {accessory['text']['text']} ]")
        elif kind == "context":
            for element in block.get("elements", []):
                out += _wrap(element.get("text", ""), "    · ", "      ", code_lines=code_lines, rewrite=rewrite)
        elif kind == "divider":
            out.append("  " + "-" * 40)
        elif kind == "actions":
            buttons = [f"[ {e['text']['text']} ]" for e in block.get("elements", []) if e.get("type") == "button"]
            out.append("  " + "  ".join(buttons))
        elif kind == "rich_text":
            for element in block.get("elements", []):
                texts = [e.get("text", "") for e in element.get("elements", [])]
                prefix = "  | " if element.get("type") == "rich_text_preformatted" else "  "
                text = "".join(texts)
                out += [prefix + line for line in (rewrite(text) if rewrite else text).split("\n")]
    if not out:
        out = _wrap(message.get("text", ""), code_lines=code_lines, rewrite=rewrite)
    return "\n".join(out)


# -- the demo ---------------------------------------------------------------------------

DEMO_CHANNEL = "C0DEMO0001"
# Who types the slash commands: one of the demo's approvers, so what approvers alone may do
# (backup, watch off, escalate 3) works; nobody approves their own request, hence a second approver.
DEMO_USER = "U0DEMO0001"
DEMO_APPROVER = "U0APPROVER1"      # `click approve` acts as them unless told `as U…`
DEMO_ENV = "production"
DEMO_FOLDER = ".demo"              # in the checkout (.gitignore has it): state, backups, configuration
DEMO_MARKER = ".runbook-bot-demo"  # the demo resets only a folder it made
WATCH_EVERY_SECONDS = 5            # the interactive demo's watch: `/migrate watch status` shows polls
LOCK_WAIT_SECONDS = 2              # the demo's lock-wait threshold: a queue alerts within a poll or two
ESCALATE_AFTER_SECONDS = 60        # an alert open this long tags the owner in its thread
CODE_LINES = 6                     # the console shows a SQL preview's or a log's first lines only
NEXT_STEP = ("Next: connect the bot to your Slack workspace, README.md “From zero to Slack” "
             "(README.md#from-zero-to-slack).")

# `click WORD`: the button it presses (the action ids of bot/approvals.py and bot/migration_blocks.py)
CLICKS = {"approve": "approval_approve", "reject": "approval_reject", "rehearse": "migrate_rehearse_first"}

CONSOLE_HELP = f"""\
The console's own commands (everything else starting with /migrate goes to the bot, as in Slack):
  /migrate help                  what the bot can do
  click approve | reject | rehearse [as U…]
                                 press a button of the newest approval request, as that user
                                 (default {DEMO_APPROVER}; nobody approves their own request, and
                                 you type commands as {DEMO_USER}); rehearse: its Rehearse first
  lock                           an app session updates an expense and stays idle in its transaction;
                                 two more queue behind its lock: the watch (every {WATCH_EVERY_SECONDS} s) opens an
                                 alert; `lock` again queues one more session: the alert is updated
  unlock                         that session rolls back: the queue drains and the alert resolves
  help                           this list
  quit                           leave (Ctrl-D too); the demo's folder stays for the CLI"""

# The scripted walkthrough: (what the step shows, what is typed). WATCH_OPENS and WATCH_RESOLVES
# stand for waiting on the watch's polls (the interactive demo's scheduler makes them every
# WATCH_EVERY_SECONDS): nobody types them.
WATCH_OPENS, WATCH_RESOLVES = "(the watch polls until an alert opens)", "(the watch polls until it resolves)"
SCRIPT: tuple[tuple[str, str], ...] = (
    ("§1: is it safe to migrate? (the pre-migration checklist, go / no-go)", "/migrate precheck"),
    ("§2: a verified backup first (approvers only)", "/migrate backup"),
    ("§3: ask to apply one revision; the request waits for another approver", "/migrate run +1"),
    ("the other approver presses Approve: the run, watched live, then §5 validation", f"click approve as {DEMO_APPROVER}"),
    ("§6.1: ask to roll it back", "/migrate rollback"),
    ("approved by the other approver", f"click approve as {DEMO_APPROVER}"),
    ("§4: an app session forgets to commit and others queue behind its lock", "lock"),
    (f"the watch polls (in the interactive demo every {WATCH_EVERY_SECONDS} s) and posts an alert", WATCH_OPENS),
    ("§7.2: tag the owner with the incident summary (§7.3)", "/migrate escalate 2 expenses updates queue behind an idle transaction"),
    ("the session rolls back", "unlock"),
    ("the queue drains: at its next poll the watch resolves the alert", WATCH_RESOLVES),
)


class Steady:
    """Rewrites what changes from one run of the demo to the next (times, ids, durations, pids, ports,
    paths) to fixed values of the same shape, before the text is wrapped, so the scripted transcript
    reads the same each time: the README's excerpt of it is kept equal by tests/test_readme.py.
    Idempotent: a rewritten text passes through unchanged."""

    DIGEST = hashlib.sha256(b"runbook-bot demo backup").hexdigest()

    def __init__(self, paths: dict[str, str]) -> None:
        self.paths = paths                      # absolute prefix -> as shown, longest first
        self._pids: dict[str, str] = {}
        self._ids: dict[str, dict[str, str]] = {"run": {}, "request": {}, "port": {}}

    def pids(self, *pids: int) -> None:
        """The demo's own sessions, numbered in the order it made them."""
        for pid in pids:
            self._pids.setdefault(str(pid), str(4101 + len(self._pids)))

    def _stable(self, kind: str, value: str, make: Callable[[int], str]) -> str:
        ids = self._ids[kind]
        if value in ids.values():
            return value
        return ids.setdefault(value, make(len(ids) + 1))

    def _stamp(self, m: re.Match) -> str:
        sep, seconds, fraction = m.group(2, 4, 5)
        return ("2025-06-02" + sep + "14:05" + (":09" if seconds else "")
                + ("." + "123456"[:len(fraction) - 1] if fraction else ""))

    def __call__(self, text: str) -> str:
        for absolute, shown in self.paths.items():
            text = text.replace(absolute, shown)
        text = re.sub(r"127\.0\.0\.1:(\d+)", lambda m: "127.0.0.1:" + self._stable(
            "port", m.group(1), lambda n: str(40000 + n)), text)
        text = re.sub(r"(\d{4}-\d{2}-\d{2})([ T])(\d{2}:\d{2})(:\d{2})?(\.\d+)?", self._stamp, text)
        text = re.sub(r"(?<=_)\d{8}_\d{6}", "20250602_140509", text)
        text = re.sub(r"\b[0-9a-f]{64}\b", self.DIGEST, text)
        text = re.sub(r"(?<![0-9a-f])[0-9a-f]{16}(?![0-9a-f])", lambda m: self._stable(
            "run", m.group(0), lambda n: hashlib.sha256(f"run {n}".encode()).hexdigest()[:16]), text)
        text = re.sub(r"(?<=request )(`?)([0-9a-f]{8})\b", lambda m: m.group(1) + self._stable(
            "request", m.group(2), lambda n: hashlib.sha256(f"request {n}".encode()).hexdigest()[:8]), text)
        if self._pids:
            text = re.sub(r"\b(" + "|".join(self._pids) + r")\b", lambda m: self._pids[m.group(1)], text)
        text = re.sub(r"(ack \d{3} in )\d+ ms", r"\g<1>12 ms", text)
        text = re.sub(r"(?<![\w=.])(?<!ack \d{3} in )(\d+ ms|\d+\.\d+ s)\b", "1.2 s", text)
        # whole seconds too, where they are a duration (a slow poll shows "waiting 11 s"), not a setting ("every 5 s")
        text = re.sub(r"(?<!ack \d{3} )\b(wait|waiting|for|least|in|took|after) \d+ s\b", r"\1 1.2 s", text)
        text = re.sub(r"\b\d+s ago\b", "3s ago", text)
        return re.sub(r"\b\d+(\.\d+)? ([GT]B) free", r"42.0 GB free", text)


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


def _shown_path(path: Path) -> str:
    """`path` as the user types it from here: relative under the working directory."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


class DemoFolderRefused(Exception):
    """The demo's folder holds something the demo did not make; one line."""


def reset_folder(folder: Path) -> int:
    """A fresh demo starts clean: the folder is emptied, but only when the demo made it and no other
    demo runs in it. Returns the descriptor of the marker, locked while this demo runs (close it)."""
    marker = folder / DEMO_MARKER
    if folder.exists():
        if any(folder.iterdir()) and not marker.exists():
            raise DemoFolderRefused(f"{folder} exists and was not made by the demo: move it away or remove it")
        if marker.exists():
            fd = os.open(marker, os.O_RDWR)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise DemoFolderRefused(f"another demo runs in {folder}: quit it first") from None
            finally:
                os.close(fd)
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    fd = os.open(marker, os.O_RDWR | os.O_CREAT, 0o644)
    os.write(fd, b"made by `runbook-bot demo`, emptied at its next start\n")
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


Snapshot = tuple[list[tuple[Any, int]], int]


class Demo:
    """The running demo: database, local Slack, bot. Usable as a context manager.

    `folder`: where the state database, backups and configuration go, kept after exit (the CLI
    works on them: `runbook-bot --config FOLDER/runbook-bot.yaml …`); emptied at start. None: a
    temporary folder removed at exit. `scheduler`: run the watch every WATCH_EVERY_SECONDS, and
    show what it posts as it comes (the interactive demo). `steady`: what varies from run to run is
    printed as fixed values (Steady), for the README's transcript."""

    def __init__(self, out: TextIO = sys.stdout, *, folder: Path | None = None, scheduler: bool = False,
                 steady: bool = False):
        self.out = out
        self.folder = folder
        self.scheduler = scheduler
        self.steady: Steady | None = None
        self._steady_wanted = steady
        self._stack = ExitStack()
        self._lock_queue = None
        # Only one thing prints at a time: a command, or what the watch posted meanwhile.
        self._printing = threading.RLock()
        self._shown: Snapshot = ([], 0)
        self.prompt = "> "        # shown again after what the watch posted meanwhile; "" when nobody types

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
        print(self.steady(text) if self.steady else text, file=self.out, flush=True)

    def _start(self) -> None:
        from bot.localslack import LocalSlack
        from bot.server import Runtime
        from runbook.config import parse_settings
        from bot.embedded import start_server
        from bot.sample_app import REV_0001, sample_db_at

        if self.folder is None:
            work = Path(tempfile.mkdtemp(prefix="runbook-bot-demo-"))
            self._stack.callback(shutil.rmtree, work, True)
        else:
            work = self.folder
            self._stack.callback(os.close, reset_folder(work))
        self.config_path = work / "runbook-bot.yaml"
        self.shown_folder = DEMO_FOLDER if self._steady_wanted else _shown_path(work)
        if self._steady_wanted:
            from bot.sample_app import ROOT

            self.steady = Steady({str(work.resolve()): DEMO_FOLDER, str(work): DEMO_FOLDER, f"{ROOT}/": ""})
        self.say(f"The demo's folder: {self.shown_folder}/ (state, backups, configuration; kept after exit)")
        self.say("Starting the embedded PostgreSQL and the sample app's database (Home Budget, at revision 0001)…")
        server = start_server()
        self._stack.callback(server.stop)
        self.database_url = server.create_database("home_budget")
        sample_db_at(self.database_url, REV_0001, seed_rows=200)
        self.config_path.write_text(demo_config(self.database_url, server.bin_dir))
        settings = parse_settings(self.config_path.read_text(), source=self.config_path)

        slack = LocalSlack(joined=(DEMO_CHANNEL,))     # the bot was invited to its channel (README)
        slack.start()
        self._stack.callback(slack.stop)
        self.slack = slack
        self.secret = "demo-signing-secret"
        runtime = Runtime.build(settings, bot_token="xoxb-demo-token", api_url=slack.url,
                                signing_secret=self.secret)
        self._stack.callback(runtime.close)
        self.runtime = runtime
        self._stack.callback(self.unlock, quiet=True)   # before the database goes
        http = runtime.serve_http("127.0.0.1", 0, background=True)
        self._stack.callback(http.close)
        self.url = f"http://127.0.0.1:{http.port}/slack/events"
        self.say(f"Local Slack Web API at {slack.url}; the bot listens at {self.url}.")
        self.say(f"The CLI reads it too: runbook-bot --config {self.shown_folder}/runbook-bot.yaml status (while the "
                 "demo runs), … incident (after it, too)")
        if self.scheduler:
            runtime.start_scheduler()
            self._follow()

    # -- what the console shows -----------------------------------------------------------

    def _follow(self) -> None:
        """Show what the bot posts on its own (the watch's alerts) as it comes, between commands."""
        stop = threading.Event()

        def follow() -> None:
            while not stop.wait(0.5):
                with self._printing:
                    if self._unseen():
                        self.say()
                        self._show_new()
                        print(self.prompt, end="", file=self.out, flush=True)

        thread = threading.Thread(target=follow, name="demo-follow", daemon=True)
        thread.start()
        self._stack.callback(thread.join, 5)
        self._stack.callback(stop.set)

    def _unseen(self) -> bool:
        """Whether the bot posted, updated or uploaded anything the console has not shown."""
        (shown, files), (now, now_files) = self._shown, self._snapshot()
        return now_files != files or [(id(m), n) for m, n in now] != [(id(m), n) for m, n in shown]

    def _snapshot(self) -> Snapshot:
        """What the local Slack holds now: each message with its update count, and the files."""
        return [(m, m.updates) for m in self.slack.messages()], len(self.slack.files())

    def _render(self, message: Any) -> str:
        """A message as text; its CLI hints name the demo's configuration, so they work as typed."""
        return render_message(message, code_lines=CODE_LINES, rewrite=self._rewrite)

    def _rewrite(self, text: str) -> str:
        text = text.replace("runbook-bot ", f"runbook-bot --config {self.shown_folder}/runbook-bot.yaml ")
        return self.steady(text) if self.steady else text

    def _show_new(self) -> None:
        """Every message the bot updated or posted since the console last showed (a thread reply
        marked as one, under the message it answers) and every file it uploaded, wherever it went."""
        with self._printing:
            messages, files = self._shown
            now_messages, now_files = self._snapshot()
            self._shown = (now_messages, now_files)
            was_updates = {id(m): updates for m, updates in messages}
            for m, updates in now_messages:
                before = was_updates.get(id(m))
                if before is None or updates <= before:
                    continue
                # Slack shows the message changed in place; the terminal shows its title and what changed.
                was = self._render(m.versions[before]).splitlines()
                now = self._render(_version(m, updates)).splitlines()
                kept = set(was)
                changed = [line for line in now if line not in kept]
                title = next((line for line in now if line.strip()), "")
                self.say("\n" + _rule(f"── bot ({self._where(m, 'updated')}, {len(now) - len(changed)} unchanged "
                                       "lines not repeated)"))
                self.say("\n".join(([title] if title not in changed else []) + changed))
            for m, updates in now_messages:
                if id(m) not in was_updates:
                    self.say("\n" + _rule(f"── bot ({self._where(m, 'posted')})"))
                    self.say(self._render(_version(m, updates)))
            for upload in self.slack.files()[files:now_files]:
                parent = self.slack.message(upload.channel_id, upload.thread_ts) if upload.thread_ts else None
                where = (f"in the thread of “{_mrkdwn(_first_line(parent.text))}”" if parent is not None
                         else f"in #{upload.channel_id}")
                size = "" if self.steady else f" ({len(upload.content or b'')} bytes)"   # a log's size varies
                self.say(f"    📄 file uploaded {where}: {upload.filename} — {upload.title}{size}")
            self.say("")

    def _where(self, m: Any, verb: str) -> str:
        if m.ephemeral:
            return "only visible to you"
        if m.thread_ts and m.thread_ts != m.ts:
            parent = self.slack.message(m.channel, m.thread_ts)
            shown = f" “{_mrkdwn(_first_line(parent.text))}”" if parent is not None else ""
            return f"↳ thread reply to{shown}"
        return f"{verb} in #{m.channel}"

    # -- what the user types --------------------------------------------------------------

    def run(self, text: str) -> int:
        text = text.strip()
        word = text.split()[0] if text else ""
        with self._printing:
            if word == "click":
                return self.click(text)
            if word == "help":
                self.say(CONSOLE_HELP)
                return 0
            if word == "lock":
                return self.lock()
            if word == "unlock":
                return self.unlock()
            if not text.startswith("/migrate"):
                self.say("  (type a slash command, e.g. /migrate help; `help` lists the console's own commands)")
                return 0
            return self.slash(text)

    def slash(self, text: str) -> int:
        submitted = self.runtime.flows.submitted
        status, payload, ms = _slash(self.url, self.secret, text, self.slack.response_url())
        self.say(f"  ack {status} in {ms:.0f} ms: {_mrkdwn(_ack_text(payload))}")
        ack_blocks = _ack_blocks(payload)
        if ack_blocks:
            self.say("\n" + _rule("── bot (reply only visible to you)"))
            self.say(self._render({"blocks": ack_blocks}))
        self.runtime.flows.wait_idle(timeout=300, after=submitted if _hands_over(text, self.runtime.flows) else None)
        self._show_new()
        return status

    def click(self, text: str) -> int:
        """`click approve|reject|rehearse [as U…]`: press a button of the newest approval request
        (rehearse: its Rehearse first), as that user (by default the demo's second approver), and
        show what the bot changed."""
        parts = text.split()
        if len(parts) not in (2, 4) or parts[1] not in CLICKS or (len(parts) == 4 and parts[2] != "as"):
            self.say(f"  (usage: click {'|'.join(CLICKS)} [as U0SOMEONE1])")
            return 0
        user = parts[3] if len(parts) == 4 else DEMO_APPROVER
        action_id = CLICKS[parts[1]]
        message = next((m for m in reversed(self.slack.messages(kind="message"))
                        if any(e.get("action_id") == action_id for b in m.blocks if b.get("type") == "actions"
                               for e in b.get("elements", []))), None)
        if message is None:
            self.say("  (no approval request with buttons to click: ask for one, e.g. /migrate run)")
            return 0
        [button] = [e for b in message.blocks if b.get("type") == "actions" for e in b["elements"]
                    if e.get("action_id") == action_id]
        calls = len(self.slack.calls())
        status, ms = _click(self.url, self.secret, user, message.channel, message.ts, action_id, button["value"])
        self.say(f"  {user} clicked {button['text']['text']}: ack {status} in {ms:.0f} ms")
        # The ack comes before the click is decided: wait for its first answer (an update or an ephemeral).
        deadline = time.monotonic() + 30
        while len(self.slack.calls()) == calls and time.monotonic() < deadline:
            time.sleep(0.02)
        self.runtime.flows.wait_idle(timeout=300)
        self._show_new()
        return status

    def lock(self) -> int:
        """`lock`: a real lock queue on the demo database, for the watch to find."""
        from bot.sample_app import StuckTransaction

        if self._lock_queue is not None:
            pid = self._lock_queue.queue_one()
            if self.steady:
                self.steady.pids(pid)
            self.say(f"  pid {pid} updates the same row and queues too ({len(self._lock_queue.waiter_pids)} waiting "
                     f"behind pid {self._lock_queue.holder_pid}); `unlock` ends it.")
            return 0
        self._lock_queue = StuckTransaction(self.database_url, waiters=2)
        if self.steady:
            self.steady.pids(self._lock_queue.holder_pid, *self._lock_queue.waiter_pids)
        waiters = ", ".join(str(pid) for pid in self._lock_queue.waiter_pids)
        self.say(f"  pid {self._lock_queue.holder_pid} updated an expense and sits idle in its transaction; "
                 f"pids {waiters} update the same row and wait.")
        if self.scheduler:
            self.say(f"  The watch polls every {WATCH_EVERY_SECONDS} s and alerts on a wait over {LOCK_WAIT_SECONDS} s; "
                     "`unlock` ends it.")
        return 0

    def unlock(self, quiet: bool = False) -> int:
        if self._lock_queue is None:
            if not quiet:
                self.say("  (nothing is locked: `lock` makes a lock queue)")
            return 0
        holder = self._lock_queue.holder_pid
        self._lock_queue.release()
        self._lock_queue = None
        if not quiet:
            self.say(f"  pid {holder} rolled back; the sessions queued behind it went through.")
        return 0

    def watch_until(self, what: str, done: Callable[[list], bool], timeout: float = 60) -> None:
        """The watch's job (what the scheduler runs every WATCH_EVERY_SECONDS), run now, until `done`
        holds of the environment's alerts; the scripted demo calls it where a user would wait."""
        from runbook.state.models import utcnow

        runner = self.runtime.scheduler.runner
        deadline = time.monotonic() + timeout
        while True:
            runner.run(DEMO_ENV, slot=utcnow())        # its own slot: a claim per poll
            if done(runner.book(DEMO_ENV).alerts(DEMO_ENV, open_only=False)):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"the watch did not see {what} within {timeout:.0f} s")
            time.sleep(0.25)
        self._show_new()


def _rule(head: str) -> str:
    """A message's heading line, ruled to the console's width."""
    return f"{head} " + "─" * max(3, WIDTH - len(head) - 1)


def _version(message: Any, updates: int) -> Any:
    """The message as it was after `updates` updates (its current form when none came since)."""
    return message.versions[updates] if updates < len(message.versions) else message


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
        # Written by `runbook-bot demo` for its embedded database; reset at the demo's next start.
        state_url: sqlite:///state.db
        slack: {{channel: {DEMO_CHANNEL}}}
        environments:
          {DEMO_ENV}:
            database_url: {json.dumps(url)}
            app_dir: {json.dumps(str(SAMPLE_APP))}
            alembic: {json.dumps(ALEMBIC_ARGV)}
            pg_bin_dir: {json.dumps(str(bin_dir))}
            thresholds: {{long_query_seconds: 60, lock_wait_seconds: {LOCK_WAIT_SECONDS}, idle_in_transaction_seconds: 60}}
            watch: {{every_seconds: {WATCH_EVERY_SECONDS}, resolve_after_seconds: 0}}
            validation: {{tables: [expenses, incomes], required_columns: {{expenses: [date, amount]}}}}
            approvals: {{approvers: [{DEMO_USER}, {DEMO_APPROVER}], required: 1}}
        escalation:
          owner: {{slack: U0OWNER001, github: zeevbensender}}
          escalate_after_seconds: {ESCALATE_AFTER_SECONDS}
        """)


def play_script(demo: Demo) -> None:
    """The scripted walkthrough: the product's story, step by step, then where to go next."""
    for step, line in SCRIPT:
        demo.say(f"# {step}")
        if line == WATCH_OPENS:
            demo.watch_until("the lock queue", lambda alerts: any(a.kind == "lock_wait" and a.ts for a in alerts))
        elif line == WATCH_RESOLVES:
            demo.watch_until("the queue drain", lambda alerts: alerts and not any(a.is_open for a in alerts))
        else:
            demo.say(f"> {line}")
            demo.run(line)
    demo.say(NEXT_STEP)


def run_demo(scripted: bool = False, out: TextIO = sys.stdout, *, folder: Path | None = None,
             lines: Iterable[str] | None = None) -> int:
    """`runbook-bot demo`: the demo's folder is DEMO_FOLDER in the working directory unless told;
    `lines` stands for what the user types (tests), else standard input."""
    folder = folder if folder is not None else Path.cwd() / DEMO_FOLDER
    try:
        with Demo(out, folder=folder, scheduler=not scripted) as demo:
            if scripted:
                play_script(demo)
                return 0
            demo.say(f"Type /migrate commands as in Slack (try /migrate help, or /migrate run); you are {DEMO_USER}.\n"
                     f"`help` lists the console's own: `click approve` (as {DEMO_APPROVER}), `lock`, `unlock`, `quit`.")
            source = iter(lines) if lines is not None else None
            if source is not None:
                demo.prompt = ""
            while True:
                try:
                    if source is None:
                        line = input("> ")
                    else:
                        line = next(source)
                        demo.say(f"> {line}")          # as a terminal would have echoed it
                except (EOFError, StopIteration):
                    break
                if line.strip() in {"quit", "exit"}:
                    break
                if line.strip():
                    try:
                        demo.run(line)
                    except Exception as exc:     # one line, and the demo goes on
                        demo.say(f"  ({line.strip()} failed: {type(exc).__name__}: {exc})")
            demo.say(NEXT_STEP)
            return 0
    except DemoFolderRefused as exc:
        print(f"runbook-bot demo: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


# -- the README's transcript ------------------------------------------------------------

README_START, README_END = "<!-- demo-transcript:start -->", "<!-- demo-transcript:end -->"
# What the README shows of the scripted transcript: each step by the start of its "# " line (in
# order), with how many lines of each of its bot messages (None: all, 0: left out, (N, "text", M): the first N
# lines and M from the first line holding "text"; a cut message shows "…" where lines were left out).
Limit = int | None | tuple[int, str, int]
README_STEPS: tuple[tuple[str, tuple[Limit, ...]], ...] = (
    ("§3:", (7,)),
    ("the other approver presses Approve", (None, 0, 0, 0)),
    ("§4:", ()),
    ("the watch polls", (None,)),
    ("§7.2:", ((4, "*Incident summary", 4),)),
    ("the session rolls back", ()),
    ("the queue drains", (2,)),
)


def transcript(folder: Path | None = None) -> str:
    """The scripted demo's whole transcript, steady (Steady): the same from one run to the next."""
    import io

    out = io.StringIO()
    with Demo(out, folder=folder, steady=True) as demo:
        play_script(demo)
    return out.getvalue()


def readme_excerpt(text: str) -> str:
    """The README's "What you'll see": README_STEPS picked out of a steady transcript."""
    lines = text.splitlines()
    picked: list[str] = []
    at = 0
    for narration, limits in README_STEPS:
        start = next(i for i in range(at, len(lines)) if lines[i].startswith("# " + narration))
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith(("# ", "Next: "))), len(lines))
        step = lines[start:end]
        at = end
        messages = [i for i, line in enumerate(step) if line.startswith("── bot")]
        picked += [line for line in step[:messages[0] if messages else len(step)] if line.strip()]
        for n, first in enumerate(messages):
            body = step[first:messages[n + 1] if n + 1 < len(messages) else len(step)]
            while body and not body[-1].strip():
                body.pop()
            limit = limits[n] if n < len(limits) else 0
            if limit == 0:
                continue
            picked.append(body[0].rstrip("─ ") + " ──")
            picked += _cut([line for line in body[1:] if line.strip()], limit)
    picked.append(next(line for line in lines if line.startswith("Next: ")))
    return "\n".join(["```text", *picked, "```"])


def _cut(lines: list[str], limit: Limit) -> list[str]:
    if limit is None:
        return lines
    if isinstance(limit, tuple):
        head, marker, count = limit
        at = next(i for i, line in enumerate(lines) if marker in line)
        return lines[:head] + ["  …"] + _cut(lines[at:], count)
    return lines if len(lines) <= limit else lines[:limit] + ["  …"]


def with_readme_excerpt(readme: str, excerpt: str) -> str:
    """`readme` with the block between README_START and README_END replaced by `excerpt`."""
    head, _, rest = readme.partition(README_START)
    _, _, tail = rest.partition(README_END)
    return f"{head}{README_START}\n{excerpt}\n{README_END}{tail}"


def main(argv: list[str] | None = None) -> int:
    """`python -m bot.console --readme README.md` (make readme-transcript): plays the scripted demo
    and writes its excerpt into the README; without arguments, prints the excerpt."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bot.console", description=main.__doc__)
    parser.add_argument("--readme", type=Path, metavar="FILE", help="rewrite the demo-transcript block of FILE")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="runbook-bot-transcript-") as work:
        excerpt = readme_excerpt(transcript(Path(work) / DEMO_FOLDER))
    if args.readme is None:
        print(excerpt)
        return 0
    text = args.readme.read_text(encoding="utf-8")
    if README_START not in text or README_END not in text:
        print(f"{args.readme}: no {README_START} … {README_END} block", file=sys.stderr)
        return 2
    args.readme.write_text(with_readme_excerpt(text, excerpt), encoding="utf-8")
    print(f"{args.readme}: the demo transcript is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
