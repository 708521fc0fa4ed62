"""Answers never lost in a real workspace (issue 14): LocalSlack enforces what Slack enforces
(channel membership, total block text, block counts and types, 5 uses of a response_url), and the
bot answers through the command's response_url where it cannot post, posts stateful messages in
`slack.channel` with a pointer, says in the log when nothing can be delivered, and reports each
Slack failure as it is.

The bot is the real Bolt app behind its real HTTP server with the engine's Flows; only Slack's
Web API is LocalSlack.
"""
from __future__ import annotations

import json

import pytest
from slack_sdk.errors import SlackApiError
from slack_sdk.webhook import WebhookClient

from bot import blocks
from bot.app import make_client
from bot.flows import Origin, post_message
from bot.gateway import RESPONSE_URL_USES, SlackGateway
from tests.support.slack import (  # noqa: F401  (fixtures)
    BOT_TOKEN, CHANNEL_ID, USER_ID, local_slack, log_lines, real_flows, running_bot, slash_command_body, signed_post,
    wait_for,
)

PUBLIC, PRIVATE, PEOPLE_DM, BOT_DM = "C0PUBLIC01", "C0SECRET01", "D0PEOPLE01", "D0BOTDM001"


@pytest.fixture
def channels(local_slack):
    local_slack.add_channel(PUBLIC)                  # public, the bot not invited
    local_slack.add_channel(PRIVATE, private=True)   # private, the bot not invited
    local_slack.add_dm(PEOPLE_DM)                    # a DM between two people
    local_slack.add_dm(BOT_DM, with_bot=True, messages_tab=False)
    return local_slack


# /migrate is taken in these channels too (slack.command_channels): the bot need not be a member to be asked
ALLOWED = [CHANNEL_ID, PUBLIC, PRIVATE, "dm"]


@pytest.fixture
def bot(channels, tmp_path):
    flows = real_flows(channels, tmp_path, command_channels=ALLOWED)
    with running_bot(channels, flows, command_channels=ALLOWED) as running:
        yield running
    flows.close()


def slack_error(call) -> str:
    with pytest.raises(SlackApiError) as raised:
        call()
    return raised.value.response["error"]


def typed(bot, text: str, channel: str, response_url: str | None = None) -> None:
    engine = bot.flows._inner
    before = engine.submitted
    answer = signed_post(bot.events_url, slash_command_body(text, channel_id=channel, response_url=response_url))
    assert answer.status == 200, answer.text
    assert engine.wait_idle(15, after=before)


# --------------------------------------------------------------------------
# LocalSlack is as strict as Slack

def test_localslack_posts_only_where_the_bot_is_a_member(channels):
    client = make_client(BOT_TOKEN, channels.url)
    say = {"text": "hi", "blocks": [blocks.section("hi")]}
    assert client.chat_postMessage(channel=CHANNEL_ID, **say)["ok"]
    assert slack_error(lambda: client.chat_postMessage(channel=PUBLIC, **say)) == "not_in_channel"
    for closed in (PRIVATE, PEOPLE_DM, "C0NOSUCH01"):
        assert slack_error(lambda: client.chat_postMessage(channel=closed, **say)) == "channel_not_found", closed
    assert slack_error(lambda: client.chat_postEphemeral(channel=PUBLIC, user=USER_ID, **say)) == "not_in_channel"
    assert slack_error(lambda: client.chat_update(channel=PUBLIC, ts="1.000001", **say)) == "not_in_channel"
    assert slack_error(lambda: client.files_upload_v2(channel=PUBLIC, filename="a.txt", content="a")) == \
        "not_in_channel"
    # the bot's own DM: it may post, but an ephemeral needs the App Home's Messages tab
    assert client.chat_postMessage(channel=BOT_DM, **say)["ok"]
    assert slack_error(lambda: client.chat_postEphemeral(channel=BOT_DM, user=USER_ID, **say)) == \
        "messages_tab_disabled"
    channels.join(PUBLIC)                           # /invite @runbook-bot
    assert client.chat_postMessage(channel=PUBLIC, **say)["ok"]
    assert client.files_upload_v2(channel=PUBLIC, filename="a.txt", content="a")["ok"]
    assert [m.channel for m in channels.messages(kind="message")] == [CHANNEL_ID, BOT_DM, PUBLIC]


def test_localslack_refuses_blocks_slack_refuses(local_slack):
    client = make_client(BOT_TOKEN, local_slack.url)
    post = lambda blocks_: client.chat_postMessage(channel=CHANNEL_ID, text="t", blocks=blocks_)  # noqa: E731
    assert slack_error(lambda: post([blocks.section("x")] * 51)) == "invalid_blocks"
    assert slack_error(lambda: post([{"type": "banner", "text": "x"}])) == "invalid_blocks"
    # five sections of 2,600 characters: each within its limit, 13,000 in all
    assert slack_error(lambda: post([blocks.section("x" * 2600) for _ in range(5)])) == "msg_blocks_too_long"
    assert post([blocks.section("x" * 2600) for _ in range(4)])["ok"]
    ts = post([blocks.section("x")])["ts"]
    assert slack_error(lambda: client.chat_update(channel=CHANNEL_ID, ts=ts, text="t",
                                                  blocks=[blocks.section("y" * 2600) for _ in range(5)])) == \
        "msg_blocks_too_long"
    response = WebhookClient(local_slack.response_url("big")).send(
        text="t", blocks=[blocks.section("x" * 2600) for _ in range(5)])
    assert response.status_code == 400 and response.body == "msg_blocks_too_long"


def test_a_response_url_takes_five_posts(local_slack):
    url = local_slack.response_url("five")
    answers = [WebhookClient(url).send(text=f"answer {i}").status_code for i in range(RESPONSE_URL_USES + 1)]
    assert answers == [200] * RESPONSE_URL_USES + [404]
    assert [m.text for m in local_slack.responses("five")] == [f"answer {i}" for i in range(RESPONSE_URL_USES)]


# --------------------------------------------------------------------------
# where the answers go

@pytest.mark.parametrize("where", [PUBLIC, PRIVATE, PEOPLE_DM])
def test_a_report_typed_where_the_bot_cannot_post_comes_back_through_the_response_url(bot, channels, where):
    url = channels.response_url("report")
    typed(bot, "backups", where, url)
    refused = channels.calls("chat.postMessage")[-1]
    assert refused.body["channel"] == where and refused.response["error"] in ("not_in_channel", "channel_not_found")
    [answer] = channels.responses("report")
    assert "Backups production" in answer.text or "backup" in answer.text.lower()
    assert json.loads(json.dumps(answer.blocks)) and channels.messages(kind="message") == []


def test_an_error_typed_where_the_bot_cannot_post_comes_back_through_the_response_url(bot, channels):
    url = channels.response_url("error")
    typed(bot, "status", PUBLIC, url)              # the target does not answer: one error line
    assert channels.calls("chat.postEphemeral")[-1].response["error"] == "not_in_channel"
    [answer] = channels.responses("error")
    assert answer.text.startswith(":warning:") and channels.messages(kind="message") == []


def test_a_stateful_answer_goes_to_the_configured_channel_with_a_pointer(bot, channels):
    """Level 1 escalation (its thread is where the rest happens) and a stateful flows message: posted
    in slack.channel; the user hears where through the response_url, one line each."""
    url = channels.response_url("escalate")
    typed(bot, "escalate 1 the app is slow", PUBLIC, url)
    [posted] = channels.messages(kind="message")
    assert posted.channel == CHANNEL_ID and "Level 1 escalation" in json.dumps(posted.blocks)
    [pointer] = channels.responses("escalate")
    assert f"<#{CHANNEL_ID}>" in pointer.text

    engine = bot.flows._inner
    origin = Origin(USER_ID, PRIVATE, response_url=channels.response_url("stateful"))
    where = engine.deliver(origin, blocks.error_message("progress of something"), stateful=True)
    assert where[0] == CHANNEL_ID and channels.message(CHANNEL_ID, where[1]) is not None
    [pointer] = channels.responses("stateful")
    assert f"<#{CHANNEL_ID}>" in pointer.text and "progress of something" in pointer.text


def test_a_message_with_files_goes_where_files_can_go(bot, channels):
    engine = bot.flows._inner
    origin = Origin(USER_ID, PEOPLE_DM, response_url=channels.response_url("files"))
    message = blocks.Message("report with a file", [blocks.section("report")],
                             [blocks.FileUpload("SQL", "preview.sql", "SELECT 1;")])
    channel, ts = engine.deliver(origin, message)
    assert channel == CHANNEL_ID
    [upload] = channels.files()
    assert upload.channel_id == CHANNEL_ID and upload.thread_ts == ts
    assert f"<#{CHANNEL_ID}>" in channels.responses("files")[0].text


def test_nothing_deliverable_is_one_line_in_the_log(bot, channels, log_lines):
    typed(bot, "backups", PUBLIC)                  # no response_url
    assert channels.messages() == []
    [line] = [line for line in log_lines.getvalue().splitlines() if "undeliverable" in line]
    assert PUBLIC in line and "not_in_channel" in line and "the command has none" in line


def test_the_response_url_is_not_used_past_its_five_uses(bot, channels, log_lines):
    engine = bot.flows._inner
    origin = Origin(USER_ID, PUBLIC, response_url=channels.response_url("budget"))
    sent = [engine.respond(origin, blocks.error_message(f"line {i}"), why="test") for i in range(6)]
    assert sent == [True] * 5 + [False]
    assert len(channels.responses("budget")) == 5 and len(channels.calls("response")) == 5
    assert "response_url used up" in log_lines.getvalue()


def test_an_ephemeral_in_the_bots_dm_without_the_messages_tab_goes_through_the_response_url(bot, channels):
    engine = bot.flows._inner
    origin = Origin(USER_ID, BOT_DM, response_url=channels.response_url("dm"))
    engine.reply_ephemeral(origin, blocks.error_message("only for you"))
    assert channels.calls("chat.postEphemeral")[-1].response["error"] == "messages_tab_disabled"
    assert channels.responses("dm")[0].text.endswith("only for you")


# --------------------------------------------------------------------------
# the total text budget, against a Slack that refuses too much text

def busy_blocks() -> list[dict]:
    """A busy database's worth of sections: 25 long queries, 40 lock waits, 12 pending revisions."""
    out = [blocks.header("Precheck production: NO-GO")]
    for title, count, size in (("Long queries", 25, 280), ("Lock waits", 40, 200), ("Pending", 12, 500)):
        lines = [f"• {title.lower()} {i}: " + "q" * size for i in range(count)]
        for start in range(0, count, 8):
            out.append(blocks.section(f"*{title}*\n" + "\n".join(lines[start:start + 8])))
    out.append(blocks.actions(blocks.button("Approve", "approval_approve", "r1")))
    return out


def test_a_busy_message_is_accepted_by_slack_and_the_rest_goes_into_a_file(local_slack):
    unfitted = busy_blocks()
    assert blocks.text_length(unfitted) > 12000
    client = make_client(BOT_TOKEN, local_slack.url)
    assert slack_error(lambda: client.chat_postMessage(channel=CHANNEL_ID, text="t", blocks=unfitted)) == \
        "msg_blocks_too_long"

    posted = post_message(client, _Redact(), CHANNEL_ID, blocks.Message("Precheck production: NO-GO", unfitted))
    assert posted.failure is None and posted.file_failure is None
    message = local_slack.message(CHANNEL_ID, posted.ts)
    assert blocks.text_length(message.blocks) <= blocks.MAX_TOTAL_TEXT
    assert "in the attached file `rest-of-message.txt`" in json.dumps(message.blocks)
    assert message.blocks[-1]["type"] == "actions"                  # the buttons stay
    [rest] = message.files
    assert rest.filename == blocks.OVERFLOW_FILENAME and "pending 11: " in rest.text
    shown = json.dumps(message.blocks) + rest.text
    assert all(f"lock waits {i}: " in shown for i in range(40))     # nothing lost


def test_a_busy_databases_precheck_is_posted_whole_within_slacks_limit(local_slack):
    """The issue's busy database: 25 long queries, 40 lock waits, 12 pending revisions (14,648
    characters of block text before the budget): Slack accepts it, the rest is in the file."""
    from runbook.activity import Activity, BlockingRoot, LockWait
    from tests.test_blocks import _report, _revision, _session

    waits = [LockWait(10_000 + i, "app", "worker", 31 + i, f"update expenses set amount = {i} where id = {i} " * 6,
                      [9_999], 9_999, "RowExclusiveLock", "public.expenses") for i in range(40)]
    query = "select * from expenses join incomes using (user_id) where amount > 0 " * 8
    report = _report(
        reasons=[f"session {n} waiting on a lock on public.expenses for over 30 s behind pid 9999" for n in range(40)],
        activity=Activity(active_count=80, long_queries=[_session(i, query) for i in range(25)],
                          idle_in_transaction=[_session(500 + i) for i in range(10)], lock_waits=waits,
                          roots=[BlockingRoot(9_999, _session(9_999, "vacuum full expenses"), waits)]),
        alembic=_report().alembic.__class__(current=["000000000000"], heads=["00000000000c"],
                                            pending=[_revision(i, message="backfill " * 30) for i in range(1, 13)]))
    from bot.render import core                  # validate() calls the budget where it lives, in core

    unfitted = core.fit_text_budget
    try:                                          # what the renderer made, before the budget: over Slack's limit
        totals: list[int] = []
        core.fit_text_budget = lambda m, **kw: (totals.append(blocks.text_length(m.blocks)), unfitted(m, **kw))[1]
        message = blocks.precheck_message(report)
    finally:
        core.fit_text_budget = unfitted
    assert totals and totals[0] > 12000
    client = make_client(BOT_TOKEN, local_slack.url)
    posted = post_message(client, _Redact(), CHANNEL_ID, message)
    assert posted.failure is None and posted.file_failure is None
    shown = local_slack.message(CHANNEL_ID, posted.ts)
    assert blocks.text_length(shown.blocks) <= blocks.MAX_TOTAL_TEXT
    everything = json.dumps(shown.blocks) + "".join(f.text for f in shown.files)
    assert "25 long queries" in everything and "40 waiting on locks" in everything
    assert "12 pending revisions" in everything
    assert [f.filename for f in shown.files] == [blocks.OVERFLOW_FILENAME]


def test_a_busy_update_is_cut_with_a_line_saying_so(local_slack):
    client = make_client(BOT_TOKEN, local_slack.url)
    gateway = SlackGateway(client, _Redact())
    posted = gateway.post(CHANNEL_ID, blocks.Message("t", [blocks.section("first")]))
    assert gateway.update(CHANNEL_ID, posted.ts, blocks.Message("t", busy_blocks())) is None
    message = local_slack.message(CHANNEL_ID, posted.ts)
    assert "did not fit in one Slack message and were left out" in json.dumps(message.blocks)


# --------------------------------------------------------------------------
# failures reported as they are

def test_a_file_that_fails_leaves_the_message_posted_and_says_so(bot, channels):
    engine = bot.flows._inner
    channels.fail_next("upload", status=500)        # files_upload_v2's upload URL: a SlackRequestError
    origin = Origin(USER_ID, CHANNEL_ID, response_url=channels.response_url("file"))
    message = blocks.Message("report", [blocks.section("report")], [blocks.FileUpload("SQL", "p.sql", "SELECT 1;")])
    ts = engine.post(origin, message)
    assert ts is not None and channels.message(CHANNEL_ID, ts) is not None
    [told] = channels.messages(kind="ephemeral")
    assert "The message was posted, but its file could not be attached (request failed" in told.text

    channels.fail_next("files.completeUploadExternal", error="file_not_found")
    posted = post_message(engine.client, engine.redactor, CHANNEL_ID, message)
    assert posted.ts is not None and posted.failure is None and posted.file_failure.error == "file_not_found"


def test_a_network_failure_is_reported_as_one(local_slack):
    import socket

    with socket.socket() as probe:                  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = make_client(BOT_TOKEN, f"http://127.0.0.1:{port}/api/", timeout=2)
    posted = post_message(client, _Redact(), CHANNEL_ID, blocks.Message("t", [blocks.section("t")]))
    assert posted.ts is None and posted.failure.error == "network error"


def test_text_slack_escaped_is_unescaped_once_and_shown_escaped_once(bot, channels):
    # Slack sends "a & b <c>" as "a &amp; b &lt;c&gt;"
    answer = signed_post(bot.events_url, slash_command_body("escalate 1 a &amp; b &lt;c&gt;"))
    assert "a &amp; b &lt;c&gt;" in answer.text and "&amp;amp;" not in answer.text
    bot.flows._inner.wait_idle(15, after=0)
    [posted] = channels.messages(kind="message")
    shown = json.dumps(posted.blocks) + posted.text
    assert "a &amp; b &lt;c&gt;" in shown and "&amp;amp;" not in shown and "&amp;lt;" not in shown
    [event] = bot.flows._inner.store.events(action="escalate")
    assert "a & b <c>" in json.dumps(event.details) + event.summary


class _Redact:
    """A redactor with no secrets (post_message's contract)."""

    def __call__(self, text):
        return text

    def message(self, message):
        return message
