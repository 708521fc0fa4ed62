"""`runbook-bot serve` as real processes: start, wait until healthy, talk to, stop or kill.

The bot's output goes to a file (a pipe nobody reads would fill up and stall a chatty bot);
`log()` reads it back. Slack is whatever LocalSlack the test passes.
"""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.slack import SIGNING_SECRET, HttpAnswer, http_request, signed_post
from tests.support.waiting import wait_for

ROOT = Path(__file__).resolve().parent.parent.parent
BOT_TOKEN = "xoxb-replica-secret-token-8"
APP_TOKEN = "xapp-1-replica-secret-token-8"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class BotProcess:
    name: str
    process: subprocess.Popen
    port: int
    log_path: Path
    terminated: bool = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def health(self) -> HttpAnswer | None:
        try:
            return http_request(self.url + "/health", timeout=5)
        except OSError:
            return None

    def health_live(self) -> HttpAnswer:
        """The liveness form of /health (what Kubernetes' livenessProbe asks)."""
        return http_request(self.url + "/health?check=live", timeout=5)

    def healthy(self) -> bool:
        answer = self.health()
        return answer is not None and answer.status == 200

    def wait_healthy(self, timeout: float = 60) -> None:
        wait_for(lambda: self.healthy() or self.process.poll() is not None, timeout=timeout,
                 what=f"{self.name} to answer /health")
        assert self.process.poll() is None, f"{self.name} exited {self.process.returncode}:\n{self.log()[-3000:]}"

    def post(self, body: bytes) -> HttpAnswer:
        """A correctly signed request to /slack/events."""
        return signed_post(self.url + "/slack/events", body, timeout=15)

    def metric(self, name: str) -> float | None:
        text = http_request(self.url + "/metrics", timeout=5).text
        match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
        return float(match.group(1)) if match else None

    def terminate(self) -> None:
        self.terminated = True
        self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = 60) -> int:
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM (once: a second one cuts the shutdown short) and wait; a bot that does not exit in
        time is killed (and the test fails on its code)."""
        if self.process.poll() is None:
            if not self.terminated:
                self.terminate()
            try:
                return self.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                return -9
        return self.process.returncode


def start_bot(name: str, config: Path, tmp_path: Path, slack_url: str, *, mode: str = "http",
              extra_env: dict[str, str] | None = None, port: int | None = None) -> BotProcess:
    """`python -m bot.cli --config CONFIG serve --MODE` on a free loopback port."""
    port = port or free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLACK_")}
    env.update({"SLACK_BOT_TOKEN": BOT_TOKEN, "SLACK_API_URL": slack_url})
    env.update({"SLACK_SIGNING_SECRET": SIGNING_SECRET} if mode == "http" else {"SLACK_APP_TOKEN": APP_TOKEN})
    env.update(extra_env or {})
    log_path = tmp_path / f"{name}.log"
    with log_path.open("w") as log:
        process = subprocess.Popen([sys.executable, "-m", "bot.cli", "--config", str(config), "serve", f"--{mode}",
                                    "--host", "127.0.0.1", "--port", str(port)],
                                   cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    return BotProcess(name, process, port, log_path)


def stop_all(bots: list[BotProcess]) -> None:
    for bot in bots:
        if bot.process.poll() is None:
            bot.stop(timeout=60)


@pytest.fixture
def bots():
    """The BotProcess-es a test appends, stopped at its end."""
    started: list[BotProcess] = []
    yield started
    stop_all(started)


def approve_migration(bot: BotProcess, store, *, requester: str, approver: str, channel: str):
    """`/migrate run` asked on `bot` by `requester` and approved by `approver` over signed HTTP; returns
    the approval request as posted (runbook.state.approvals.ApprovalRequest)."""
    from bot.approvals import ACTION_APPROVE
    from runbook.state.approvals import ApprovalStore
    from tests.support.slack import block_actions_body, slash_command_body

    assert bot.post(slash_command_body("run", user_id=requester, channel_id=channel)).status == 200
    requests = ApprovalStore(store)
    request = wait_for(lambda: next((r for r in requests.list() if r.kind == "migrate" and r.message_ts), None),
                       timeout=60, what="the migrate request, posted")
    assert bot.post(block_actions_body(ACTION_APPROVE, request.id, user_id=approver, channel_id=request.channel,
                                       message_ts=request.message_ts)).status == 200
    return request


@pytest.fixture
def pg_state_url(pg_server):
    """A PostgreSQL state database of its own: what replicas share (SQLite cannot be shared)."""
    name = "state_" + uuid.uuid4().hex[:10]
    yield pg_server.create_database(name)
    pg_server.drop_database(name)


__all__ = ["APP_TOKEN", "BOT_TOKEN", "BotProcess", "approve_migration", "bots", "free_port", "pg_state_url", "start_bot",
           "stop_all"]
