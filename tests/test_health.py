"""/health and /metrics of real `runbook-bot serve` processes, in both modes (issue 8).

/health is what load balancers and Kubernetes act on: 200 only while the state database answers
(and, in Socket Mode, the socket is connected); it answers within a few seconds even when the
state database hangs, without tying up the threads Slack's requests need; `?check=live` (the
liveness probe) stays 200 through all of it.
"""
from __future__ import annotations

import threading
import time
import uuid

import psycopg
import pytest

from bot.http import BoundedHealth, make_wsgi_app, serve_http
from bot.localslack import LocalSlack
from tests.support.bots import start_bot
from tests.support.configs import write_config
from tests.support.proxy import SilentProxy
from tests.support.sample_app import REV_0001
from tests.support.slack import http_request, slash_command_body
from tests.support.waiting import wait_for


@pytest.fixture
def state_db(pg_server):
    """(name, url) of a PostgreSQL state database of its own."""
    name = "state_" + uuid.uuid4().hex[:10]
    url = pg_server.create_database(name)
    yield name, url
    with psycopg.connect(pg_server.admin_url, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
    pg_server.drop_database(name)


def health_of(bot) -> tuple[int, dict]:
    answer = bot.health()
    assert answer is not None, "the bot does not answer at all"
    return answer.status, answer.json()


def test_http_health_follows_the_state_database_and_never_hangs(sample_db, state_db, pg_server, tmp_path):
    name, state_url = state_db
    with LocalSlack(joined=("C0TESTCHAN",)) as slack, SilentProxy.to(state_url) as proxy:
        config = write_config(tmp_path, sample_db(REV_0001), state_url=proxy.url_for(state_url))
        bot = start_bot("bot", config, tmp_path, slack.url)
        try:
            bot.wait_healthy()
            assert health_of(bot) == (200, {"ok": True, "state_database": "ok"})

            proxy.silence()                                   # the state database stops answering
            for _ in range(3):
                started = time.monotonic()
                assert health_of(bot) == (503, {"ok": False, "state_database": "timeout"})
                assert time.monotonic() - started < 5
            started = time.monotonic()                        # Slack's requests still get their ack
            answer = bot.post(slash_command_body("help"))
            assert answer.status == 200 and "/migrate" in answer.text and time.monotonic() - started < 3
            assert bot.health_live().status == 200
            assert "runbook_bot_commands_total" in http_request(bot.url + "/metrics").text
            proxy.resume()
            wait_for(lambda: bot.health().status == 200, timeout=30, what="/health back to 200")

            with psycopg.connect(pg_server.admin_url, autocommit=True) as admin:   # refused outright
                admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
                admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", [name])
            unreachable = wait_for(lambda: (h := health_of(bot))[0] == 503 and h, timeout=30,
                                   what="/health to see the state database gone")
            assert unreachable[1] == {"ok": False, "state_database": "unreachable"}
            with psycopg.connect(pg_server.admin_url, autocommit=True) as admin:
                admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
            wait_for(lambda: bot.health().status == 200, timeout=30, what="/health back to 200")
        finally:
            code = bot.stop()
        assert code == 0, bot.log()[-3000:]


def test_socket_mode_health_follows_the_socket(sample_db, tmp_path):
    with LocalSlack(socket_mode=True, joined=("C0HEALTH01",)) as slack:
        config = write_config(tmp_path, sample_db(REV_0001), channel="C0HEALTH01",
                              extra_env="    watch: {every_seconds: 5}")
        bot = start_bot("bot", config, tmp_path, slack.url, mode="socket")
        try:
            slack.socket_mode.wait_for_connection(timeout=30)
            wait_for(bot.healthy, timeout=30, what="/health 200 in Socket Mode")
            assert health_of(bot) == (200, {"ok": True, "socket_mode_connected": True, "state_database": "ok"})
            wait_for(lambda: bot.metric("runbook_bot_scheduler_leader") == 1, timeout=15,
                     what="the watch to run (SQLite: this is the only scheduler)")
            assert http_request(bot.url + "/slack/events", data=b"x", method="POST").status == 404

            assert slack.socket_mode.drop_connections() == 1                  # Slack's end goes away
            status, body = wait_for(lambda: (h := health_of(bot))[0] == 503 and h, timeout=10,
                                    what="/health to see the socket gone")
            assert body["socket_mode_connected"] is False and body["state_database"] == "ok"
            assert bot.health_live().status == 200
            slack.socket_mode.wait_for_connection(timeout=60)                 # the client reconnects
            wait_for(bot.healthy, timeout=30, what="/health 200 again")

            bot.terminate()                                                   # stop taking work
            wait_for(lambda: slack.socket_mode.connection_count == 0, timeout=30, what="the socket to close")
        finally:
            code = bot.stop()
        assert code == 0, bot.log()[-3000:]


def test_a_hanging_check_is_answered_in_time_and_run_once_at_a_time():
    calls, release = [], threading.Event()

    def hanging_check():
        calls.append(time.monotonic())
        release.wait(30)
        return True, {"state_database": "ok"}

    health = BoundedHealth(hanging_check, 0.3, on_timeout={"state_database": "timeout"})
    with serve_http(make_wsgi_app(None, health=health), "127.0.0.1", 0) as server:
        for _ in range(5):
            started = time.monotonic()
            answer = http_request(server.url + "/health")
            assert answer.status == 503 and answer.json() == {"ok": False, "state_database": "timeout"}
            assert time.monotonic() - started < 2
        assert len(calls) == 1                       # the probes shared the one check still running
        release.set()
        wait_for(lambda: http_request(server.url + "/health").status == 200, timeout=5, what="a 200")
        # the probe that saw the 200 may have joined the released check or started the next one (a race
        # between the release and the probe); either way, once none runs, a probe starts exactly one
        before = len(calls)
        assert http_request(server.url + "/health").status == 200
        assert len(calls) == before + 1 and before in (1, 2)
