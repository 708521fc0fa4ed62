"""The local Slack Web API and Socket Mode server (product code: tests and the demo use it)."""
from __future__ import annotations

import json
import threading
import time
import urllib.request

import pytest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.webhook import WebhookClient

from bot.localslack import LocalSlack, LocalSocketMode, parse_body
from tests.support.slack import http_request, local_slack  # noqa: F401  (fixture)

CHANNEL = "C0RUNBOOK1"


@pytest.fixture
def client(local_slack) -> WebClient:
    # a bare client: no retry handlers, so scripted faults surface as errors
    return WebClient(token="xoxb-local-test", base_url=local_slack.url, retry_handlers=[])


def test_url_is_loopback_port_zero_and_api_base(local_slack):
    assert local_slack.url.startswith("http://127.0.0.1:") and local_slack.url.endswith("/api/")
    assert local_slack.port > 0


def test_auth_test_and_recorded_headers(local_slack, client):
    answer = client.auth_test()
    assert answer["ok"] and answer["team_id"] == "T0LOCAL" and answer["user_id"].startswith("U")
    call = local_slack.calls("auth.test")[0]
    assert call.token == "xoxb-local-test" and call.status == 200
    assert call.headers["authorization"] == "Bearer xoxb-local-test"


def test_missing_token_is_not_authed(local_slack):
    bare = WebClient(base_url=local_slack.url, retry_handlers=[])
    with pytest.raises(SlackApiError) as err:
        bare.auth_test()
    assert err.value.response["error"] == "not_authed"


def test_post_message_records_json_body_and_unique_ts(local_slack, client):
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "hello"}}]
    first = client.chat_postMessage(channel=CHANNEL, text="hello", blocks=blocks)
    reply = client.chat_postMessage(channel=CHANNEL, text="in thread", thread_ts=first["ts"])
    assert first["channel"] == CHANNEL and first["ts"] != reply["ts"]
    assert reply["message"]["thread_ts"] == first["ts"]
    call = local_slack.calls("chat.postMessage")[0]
    assert call.body["blocks"] == blocks and call.body["text"] == "hello"
    assert call.headers["content-type"].startswith("application/json")
    stored = local_slack.messages(CHANNEL)
    assert [m.text for m in stored] == ["hello", "in thread"]
    assert stored[1].thread_ts == first["ts"] and stored[0].blocks == blocks
    assert stored[0]["text"] == "hello" and stored[0].get("ephemeral") is False


def test_ts_unique_under_concurrency(local_slack, client):
    results: list[str] = []
    lock = threading.Lock()

    def post(i: int) -> None:
        ts = client.chat_postMessage(channel=CHANNEL, text=f"m{i}")["ts"]
        with lock:
            results.append(ts)

    threads = [threading.Thread(target=post, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 20 and len(local_slack.calls("chat.postMessage")) == 20


def test_update_replaces_and_keeps_history(local_slack, client):
    ts = client.chat_postMessage(channel=CHANNEL, text="pending")["ts"]
    answer = client.chat_update(channel=CHANNEL, ts=ts, text="approved",
                                blocks=[{"type": "section", "text": {"type": "mrkdwn", "text": "approved"}}])
    assert answer["ts"] == ts
    message = local_slack.message(CHANNEL, ts)
    assert message.text == "approved" and message.updates == 1 and message.versions[0]["text"] == "pending"
    with pytest.raises(SlackApiError) as err:
        client.chat_update(channel=CHANNEL, ts="1.000000", text="x")
    assert err.value.response["error"] == "message_not_found"


def test_ephemeral_messages(local_slack, client):
    answer = client.chat_postEphemeral(channel=CHANNEL, user="U0TESTER1", text="only you")
    assert answer["message_ts"]
    message = local_slack.messages(kind="ephemeral")[0]
    assert message.user == "U0TESTER1" and message.ephemeral and message.text == "only you"
    assert local_slack.messages(kind="message") == []


def test_usergroup_membership_is_configurable(local_slack, client):
    local_slack.set_usergroup("S0APPROVERS", ["U0ALICE01", "U0BOB0001"])
    assert client.usergroups_users_list(usergroup="S0APPROVERS")["users"] == ["U0ALICE01", "U0BOB0001"]
    with pytest.raises(SlackApiError) as err:
        client.usergroups_users_list(usergroup="S0NOPE")
    assert err.value.response["error"] == "no_such_subteam"
    call = local_slack.calls("usergroups.users.list")[0]
    assert call.body["usergroup"] == "S0APPROVERS"


def test_files_upload_v2_three_steps_store_content(local_slack, client):
    parent = client.chat_postMessage(channel=CHANNEL, text="precheck")["ts"]
    sql = "ALTER TABLE expenses ADD COLUMN note text;\n" * 100
    answer = client.files_upload_v2(channel=CHANNEL, title="SQL preview", filename="preview.sql", content=sql,
                                    thread_ts=parent, initial_comment="the SQL")
    assert answer["file"]["title"] == "SQL preview"
    assert local_slack.methods()[-3:] == ["files.getUploadURLExternal", "upload", "files.completeUploadExternal"]
    assert local_slack.calls("upload")[0].path.startswith("/upload/F")
    uploaded = local_slack.files()[0]
    assert uploaded.text == sql and uploaded.title == "SQL preview" and uploaded.filename == "preview.sql"
    assert uploaded.channel_id == CHANNEL and uploaded.thread_ts == parent and uploaded.initial_comment == "the SQL"
    assert local_slack.message(CHANNEL, parent).files == [uploaded]
    assert local_slack.calls("files.completeUploadExternal")[0].body["files"][0]["title"] == "SQL preview"


def test_file_without_thread_is_a_message_of_its_own(local_slack, client):
    client.files_upload_v2(channel=CHANNEL, title="log", filename="run.log", content="line\n")
    shared = local_slack.messages(kind="file")
    assert len(shared) == 1 and shared[0].files[0]["content"] == b"line\n"


def test_response_url_posts_are_recorded(local_slack):
    url = local_slack.response_url("r1")
    assert url.startswith(local_slack.root + "/response/")
    answer = WebhookClient(url).send(text="done", response_type="ephemeral", replace_original=False)
    assert answer.status_code == 200
    response = local_slack.responses("r1")[0]
    assert response.text == "done" and response.ephemeral
    call = local_slack.wait_for_call("response")
    assert call.body["response_type"] == "ephemeral"
    assert local_slack.response_url() != local_slack.response_url()


def test_fail_next_429_then_success(local_slack, client):
    local_slack.fail_next("chat.postMessage", status=429, retry_after=7)
    with pytest.raises(SlackApiError) as err:
        client.chat_postMessage(channel=CHANNEL, text="x")
    assert err.value.response.status_code == 429 and err.value.response.headers["Retry-After"] == "7"
    assert client.chat_postMessage(channel=CHANNEL, text="x")["ok"]
    first, second = local_slack.calls("chat.postMessage")
    assert first.status == 429 and first.fault == "429 ratelimited" and second.status == 200 and second.fault is None
    assert len(local_slack.messages(CHANNEL)) == 1


def test_fail_next_500_and_error_with_times(local_slack, client):
    local_slack.fail_next("chat.update", status=500)
    local_slack.fail_next("chat.postMessage", error="channel_not_found", times=2)
    for _ in range(2):
        with pytest.raises(SlackApiError) as err:
            client.chat_postMessage(channel=CHANNEL, text="x")
        assert err.value.response["error"] == "channel_not_found"
    ts = client.chat_postMessage(channel=CHANNEL, text="x")["ts"]
    with pytest.raises(SlackApiError) as err:
        client.chat_update(channel=CHANNEL, ts=ts, text="y")
    assert err.value.response.status_code == 500
    assert client.chat_update(channel=CHANNEL, ts=ts, text="y")["ok"]


def test_fail_next_on_a_response_url(local_slack):
    local_slack.fail_next("response", status=404, error="expired_url")
    assert WebhookClient(local_slack.response_url("r2")).send(text="late").status_code == 404
    assert local_slack.responses() == []


def test_unknown_method_is_answered_and_recorded(local_slack, client):
    with pytest.raises(SlackApiError) as err:
        client.api_call("views.open", json={"trigger_id": "1"})
    assert err.value.response["error"] == "unknown_method"
    assert local_slack.calls("views.open")[0].body == {"trigger_id": "1"}


def test_multipart_and_form_bodies_are_parsed(local_slack):
    boundary = "XyZ"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"channels\"\r\n\r\n{CHANNEL}\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.txt\"\r\n"
            f"Content-Type: text/plain\r\n\r\nhello bytes\r\n--{boundary}--\r\n").encode()
    http_request(local_slack.url + "files.upload", data=body, method="POST",
                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}",
                          "Authorization": "Bearer xoxb-x"})
    call = local_slack.calls("files.upload")[0]
    assert call.body["channels"] == CHANNEL and call.body["file"] == b"hello bytes"
    assert call.body["_filenames"] == {"file": "a.txt"}
    assert parse_body(b"a=1&blocks=x", "application/x-www-form-urlencoded") == {"a": "1", "blocks": "x"}
    assert parse_body(b'{"a": [1]}', "application/json") == {"a": [1]}


def test_wait_for_call_waits_then_times_out(local_slack, client):
    threading.Timer(0.05, lambda: client.chat_postMessage(channel=CHANNEL, text="later")).start()
    call = local_slack.wait_for_call("chat.postMessage", lambda c: c.body.get("text") == "later", timeout=5)
    assert call.body["channel"] == CHANNEL
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="no chat.update call"):
        local_slack.wait_for_call("chat.update", timeout=0.1)
    assert time.monotonic() - started < 2


def test_listener_hook_sees_posts_and_updates(local_slack, client):
    seen: list[tuple[str, str]] = []
    local_slack.add_listener(lambda event, message: seen.append((event, message.text)))
    local_slack.add_listener(lambda event, message: 1 / 0)  # a broken hook changes nothing
    ts = client.chat_postMessage(channel=CHANNEL, text="one")["ts"]
    client.chat_update(channel=CHANNEL, ts=ts, text="two")
    client.chat_postEphemeral(channel=CHANNEL, user="U0TESTER1", text="three")
    assert seen == [("posted", "one"), ("updated", "two"), ("ephemeral", "three")]


def test_not_found_paths(local_slack):
    assert http_request(local_slack.root + "/nope").status == 404
    assert local_slack.calls("not_found")


def test_apps_connections_open_without_and_with_socket_mode(local_slack):
    app_client = WebClient(base_url=local_slack.url, retry_handlers=[])
    with pytest.raises(SlackApiError):
        app_client.apps_connections_open(app_token="xapp-1-local")
    with LocalSocketMode() as socket_mode:
        local_slack.attach_socket_mode(socket_mode)
        url = app_client.apps_connections_open(app_token="xapp-1-local")["url"]
        assert url == socket_mode.url and url.startswith("ws://127.0.0.1:")
        assert local_slack.calls("apps.connections.open")[-1].token == "xapp-1-local"


def test_socket_mode_server_hello_envelopes_and_acks():
    from websockets.sync.client import connect

    with LocalSocketMode() as server:
        with connect(server.url) as ws:
            hello = json.loads(ws.recv(timeout=5))
            assert hello["type"] == "hello"
            server.wait_for_connection()
            envelope_id = server.send_slash_command({"command": "/migrate", "text": "help"})
            envelope = json.loads(ws.recv(timeout=5))
            assert envelope["type"] == "slash_commands" and envelope["envelope_id"] == envelope_id
            assert envelope["payload"]["text"] == "help"
            ws.send(json.dumps({"envelope_id": envelope_id, "payload": {"text": "ok"}}))
            ack = server.wait_for_ack(envelope_id)
            assert ack.payload == {"text": "ok"}
            interactive = server.send_interactive({"type": "block_actions", "actions": []})
            assert json.loads(ws.recv(timeout=5))["type"] == "interactive"
            with pytest.raises(TimeoutError):
                server.wait_for_ack(interactive, timeout=0.1)


def test_local_slack_with_its_own_socket_mode_and_restartable():
    slack = LocalSlack(socket_mode=True).start()
    try:
        assert slack.socket_mode is not None and slack.socket_mode.url.startswith("ws://")
        with urllib.request.urlopen(urllib.request.Request(
                slack.url + "apps.connections.open", data=b"", method="POST",
                headers={"Authorization": "Bearer xapp-1-x"}), timeout=5) as answer:
            assert json.loads(answer.read())["url"] == slack.socket_mode.url
    finally:
        slack.stop()
    slack.stop()  # idempotent


def test_per_channel_rate_limits_answer_429_with_retry_after():
    """As Slack: over a method's limit for one channel, 429 and Retry-After; other channels unaffected."""
    with LocalSlack(rate_limits={"chat.postMessage": (2, 60.0)}, joined=("C0RATE0001", "C0RATE0002")) as slack:
        client = WebClient(token="xoxb-rate", base_url=slack.url, retry_handlers=[])
        client.chat_postMessage(channel="C0RATE0001", text="one")
        client.chat_postMessage(channel="C0RATE0001", text="two")
        with pytest.raises(SlackApiError) as refused:
            client.chat_postMessage(channel="C0RATE0001", text="three")
        assert refused.value.response.status_code == 429
        assert 1 <= int(refused.value.response.headers["Retry-After"]) <= 60
        client.chat_postMessage(channel="C0RATE0002", text="another channel")
        assert [c.status for c in slack.calls("chat.postMessage")] == [200, 200, 429, 200]
        assert len(slack.messages(kind="message")) == 3


def test_the_bots_client_rides_out_a_short_slack_outage(local_slack):
    """Issue 13 §3: two 500s while a run finishes must not leave its message reading "running"."""
    from bot.app import make_client

    client = make_client("xoxb-local-test", local_slack.url)
    ts = client.chat_postMessage(channel=CHANNEL, text="running")["ts"]
    local_slack.fail_next("chat.update", status=500, times=2)
    assert client.chat_update(channel=CHANNEL, ts=ts, text="done")["ok"]
    assert [c.status for c in local_slack.calls("chat.update")] == [500, 500, 200]
    assert local_slack.message(CHANNEL, ts).text == "done"
