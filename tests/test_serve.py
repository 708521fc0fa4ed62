"""`runbook-bot serve` as a real process, in both transports, with the real engine behind it."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from bot.localslack import LocalSlack
from tests.support.configs import write_config
from tests.support.sample_app import REV_0001
from tests.support.slack import SIGNING_SECRET, http_request, signed_post, slash_command_body, slash_command_payload
from tests.support.bots import free_port
from tests.support.waiting import wait_for

BOT_TOKEN = "xoxb-serve-test-token"
APP_TOKEN = "xapp-1-serve-test-token"


def serve(config, mode, port, **env):
    environment = {k: v for k, v in os.environ.items() if not k.startswith("SLACK_")}
    environment.update(env)
    return subprocess.Popen([sys.executable, "-m", "bot.cli", "--config", str(config), "serve", f"--{mode}",
                             "--host", "127.0.0.1", "--port", str(port)], env=environment,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def healthy(url):
    try:
        return http_request(url + "/health").status == 200
    except OSError:
        return False


def stop(process):
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=30)
    return process.returncode, out, err


def test_serve_http_acks_answers_and_stops_on_sigterm(sample_db, tmp_path):
    config = write_config(tmp_path, sample_db(REV_0001), channel="C0SERVE001")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with LocalSlack(joined=("C0SERVE001",)) as slack:
        bot = serve(config, "http", port, SLACK_BOT_TOKEN=BOT_TOKEN, SLACK_SIGNING_SECRET=SIGNING_SECRET,
                    SLACK_API_URL=slack.url)
        try:
            wait_for(lambda: healthy(url) or bot.poll() is not None, timeout=30)
            assert bot.poll() is None, bot.stderr.read()
            answer = signed_post(url + "/slack/events", slash_command_body("status", channel_id="C0SERVE001"))
            assert answer.status == 200 and "Working on `/migrate status production`" in answer.text
            posted = slack.wait_for_message(lambda m: m.channel == "C0SERVE001", kind="message", timeout=30)
            assert REV_0001 in str(posted.blocks)
            unsigned = http_request(url + "/slack/events", data=slash_command_body("status"), method="POST",
                                    headers={"Content-Type": "application/x-www-form-urlencoded"})
            assert unsigned.status == 401
            assert "runbook_bot_commands_total" in http_request(url + "/metrics").text
        finally:
            code, _out, err = stop(bot)
        assert code == 0, err[-2000:]
        assert BOT_TOKEN not in err and SIGNING_SECRET not in err


def test_serve_socket_mode_connects_and_answers(sample_db, tmp_path):
    config = write_config(tmp_path, sample_db(REV_0001), channel="C0SERVE001")
    port = free_port()
    with LocalSlack(socket_mode=True, joined=("C0SERVE001",)) as slack:
        bot = serve(config, "socket", port, SLACK_BOT_TOKEN=BOT_TOKEN, SLACK_APP_TOKEN=APP_TOKEN,
                    SLACK_API_URL=slack.url)
        try:
            slack.socket_mode.wait_for_connection(timeout=30)
            wait_for(lambda: healthy(f"http://127.0.0.1:{port}"), timeout=30)
            envelope = slack.socket_mode.send_slash_command(slash_command_payload("status", channel_id="C0SERVE001"))
            ack = slack.socket_mode.wait_for_ack(envelope, timeout=10)
            assert "Working on `/migrate status production`" in str(ack.payload)
            posted = slack.wait_for_message(lambda m: m.channel == "C0SERVE001", kind="message", timeout=30)
            assert REV_0001 in str(posted.blocks)
        finally:
            code, _out, err = stop(bot)
        assert code == 0, err[-2000:]
        assert APP_TOKEN not in err and BOT_TOKEN not in err


@pytest.mark.parametrize("mode, env, missing", [
    ("http", {"SLACK_BOT_TOKEN": BOT_TOKEN}, "SLACK_SIGNING_SECRET is not set"),
    ("socket", {"SLACK_BOT_TOKEN": BOT_TOKEN}, "SLACK_APP_TOKEN is not set"),
    ("http", {"SLACK_SIGNING_SECRET": SIGNING_SECRET}, "SLACK_BOT_TOKEN is not set"),
])
def test_serve_without_its_secrets_is_one_line(tmp_path, mode, env, missing):
    config = write_config(tmp_path, "postgresql://app@127.0.0.1:1/budget")
    bot = serve(config, mode, free_port(), **env)
    _out, err = bot.communicate(timeout=60)
    assert bot.returncode == 2
    assert missing in err and len(err.strip().splitlines()) == 1
