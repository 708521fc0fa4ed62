"""Block Kit builders and the one validator (design rule 7)."""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest

from bot import blocks
from bot.blocks import BlockError, FileUpload, Message, validate
from bot.commands import ACTIONS
from runbook.activity import Activity, BlockingRoot, LockWait, PreparedXact, SessionInfo
from runbook.precheck import Check, PrecheckReport
from runbook.revisions import AlembicState, Revision

INJECTION = "select '<!channel>', '<@U123>', '<!subteam^S1>' & <https://evil.example|click> ```x```"


def _section(text: str) -> dict:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


def _all_text(message: Message) -> str:
    return message.text + "\n" + json.dumps(message.blocks, ensure_ascii=False)


def _mrkdwn_texts(message: Message) -> list[str]:
    out = [message.text]

    def walk(node):
        if isinstance(node, dict):
            if node.get("type") == "mrkdwn" and isinstance(node.get("text"), str):
                out.append(node["text"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(message.blocks)
    return out


def _session(pid: int, query: str = "select pg_sleep(600)", seconds: float = 900.0) -> SessionInfo:
    return SessionInfo(pid=pid, user="app", application="api", state="active", seconds=seconds,
                       xact_seconds=seconds, query=query)


def _revision(i: int, reversible: bool = True, message: str | None = None) -> Revision:
    return Revision(revision=f"{i:012x}", down_revisions=(f"{i - 1:012x}",) if i else (),
                    message=message or f"add column number {i}", path=Path(f"versions/{i:04d}.py"),
                    reversible=reversible,
                    irreversible_reason=None if reversible else "downgrade() raises NotImplementedError")


def _report(**overrides) -> PrecheckReport:
    values = dict(
        environment="production",
        target="db.internal:5432/home_budget",
        started_at=datetime(2025, 3, 1, 12, 0, tzinfo=timezone.utc),
        duration_seconds=1.4,
        checks=[
            Check("connection", "ok", "connected in 12 ms"),
            Check("long queries", "warn", "1 query over 300 s"),
            Check("lock waits", "fail", "2 sessions waiting over 30 s"),
            Check("backup recent", "ok", "backup 12 minutes old", section="1.3"),
            Check("stakeholders informed", "warn", "confirm in #releases", section="1.3", automatic=False),
        ],
        verdict="no-go",
        reasons=["2 sessions waiting on locks for over 30 s"],
        database_size_bytes=123_456_789,
        server_version="16.2",
        activity=Activity(active_count=3, long_queries=[_session(101)]),
        alembic=AlembicState(current=["000000000001"], heads=["000000000003"],
                             pending=[_revision(2), _revision(3, reversible=False)]),
        sql_preview="ALTER TABLE expenses ADD COLUMN note text;\n",
    )
    values.update(overrides)
    return PrecheckReport(**values)


# --------------------------------------------------------------------------
# the validator

def test_validator_accepts_fifty_blocks_and_rejects_fifty_one():
    validate(Message("fallback", [_section(f"s{i}") for i in range(50)]))
    with pytest.raises(BlockError, match="51 blocks"):
        validate(Message("fallback", [_section(f"s{i}") for i in range(51)]))


def test_validator_section_text_limit():
    validate(Message("t", [_section("x" * 3000)]))
    with pytest.raises(BlockError, match="3001 characters; the limit is 3000"):
        validate(Message("t", [_section("x" * 3001)]))


def test_validator_header_and_fields_limits():
    with pytest.raises(BlockError, match="limit is 150"):
        validate(Message("t", [{"type": "header", "text": {"type": "plain_text", "text": "h" * 151}}]))
    with pytest.raises(BlockError, match="plain_text"):
        validate(Message("t", [{"type": "header", "text": {"type": "mrkdwn", "text": "h"}}]))
    fields = [{"type": "mrkdwn", "text": "f"}] * 11
    with pytest.raises(BlockError, match="11 fields"):
        validate(Message("t", [{"type": "section", "fields": fields}]))


def test_validator_duplicate_action_and_block_ids():
    button = blocks.button("Approve", "approve", "req-1")
    with pytest.raises(BlockError, match="duplicate action_id 'approve'"):
        validate(Message("t", [blocks.actions(button, dict(button))]))
    with pytest.raises(BlockError, match="duplicate action_id"):
        validate(Message("t", [blocks.actions(button), blocks.actions(dict(button))]))
    with pytest.raises(BlockError, match="duplicate block_id 'b'"):
        validate(Message("t", [blocks.section("a", block_id="b"), blocks.section("c", block_id="b")]))


def test_validator_button_value_limit():
    validate(Message("t", [blocks.actions(blocks.button("Go", "go", "v" * 2000))]))
    with pytest.raises(BlockError, match="button value"):
        validate(Message("t", [blocks.actions(blocks.button("Go", "go", "v" * 2001))]))


def test_validator_requires_text_fallback():
    for text in ("", "   ", None):
        with pytest.raises(BlockError, match="text fallback"):
            validate(Message(text, [_section("x")]))  # type: ignore[arg-type]


def test_validator_rejects_empty_section_and_untyped_block():
    with pytest.raises(BlockError, match="text is empty"):
        validate(Message("t", [_section("")]))
    with pytest.raises(BlockError, match="needs a type"):
        validate(Message("t", [{"text": "x"}]))


def test_validator_checks_files():
    validate(Message("t", [], files=[FileUpload("SQL", "a.sql", "select 1")]))
    validate(Message("t", [], files=[("SQL", "a.sql", b"select 1")]))  # type: ignore[list-item]
    with pytest.raises(BlockError, match="file 0"):
        validate(Message("t", [], files=[("", "a.sql", "x")]))  # type: ignore[list-item]


# --------------------------------------------------------------------------
# escaping and mentions

def test_escape_only_the_three_control_characters():
    assert blocks.escape("a & b < c > d * _ ~ `") == "a &amp; b &lt; c &gt; d * _ ~ `"
    assert blocks.escape("&lt;") == "&amp;lt;"


def test_escape_neutralises_mentions_in_a_query():
    escaped = blocks.escape(INJECTION)
    assert "<!channel>" not in escaped and "<@U123>" not in escaped and "<https" not in escaped
    assert "&lt;!channel&gt;" in escaped and "&lt;@U123&gt;" in escaped


def test_mention_helpers_validate_ids():
    assert blocks.user("U012AB3CD") == "<@U012AB3CD>"
    assert blocks.user("W012AB3CD") == "<@W012AB3CD>"
    assert blocks.usergroup("S0GROUP1") == "<!subteam^S0GROUP1>"
    assert blocks.mention("S0GROUP1") == "<!subteam^S0GROUP1>"
    assert blocks.mention("U012AB3CD") == "<@U012AB3CD>"
    assert blocks.here() == "<!here>"
    assert blocks.channel("C0123") == "<#C0123>"
    for bad in ("u123", "U1>", "<!channel>", "@U123", "", "S0GROUP1|x", None):
        with pytest.raises(BlockError):
            blocks.user(bad)  # type: ignore[arg-type]
    with pytest.raises(BlockError):
        blocks.usergroup("U012AB3CD")


def test_code_helpers_cannot_be_broken_out_of():
    inline = blocks.code("select `x` from <!here>")
    assert inline.count("`") == 2 and "<!here>" not in inline
    fenced = blocks.code_block("```<@U1>```")
    assert fenced.startswith("```") and fenced.endswith("```") and fenced[3:-3].count("```") == 0
    assert "<@U1>" not in fenced


# --------------------------------------------------------------------------
# renderers

def test_help_lists_every_action():
    message = blocks.help_message(ACTIONS)
    text = _all_text(message)
    for spec in ACTIONS.values():
        assert spec.usage in text
    assert message.text.startswith("/migrate commands")


def test_error_message_is_one_escaped_line():
    message = blocks.error_message("Unknown action '<!channel>'.\nsecond line\nthird")
    assert "\n" not in message.text
    assert "second line" not in message.text
    assert "&lt;!channel&gt;" in message.text and "<!channel>" not in message.text


def test_precheck_no_go_header_reasons_and_fallback():
    message = blocks.precheck_message(_report())
    assert message.blocks[0]["type"] == "header"
    assert "NO-GO" in message.blocks[0]["text"]["text"] and "production" in message.blocks[0]["text"]["text"]
    assert "production" in message.text and "NO-GO" in message.text and "locks" in message.text
    text = _all_text(message)
    assert "2 sessions waiting on locks" in text
    assert ":x: *lock waits*" in text and ":warning: *long queries*" in text
    assert ":white_check_mark: *connection*" in text


def test_precheck_go():
    message = blocks.precheck_message(_report(verdict="go", reasons=[]))
    assert ": GO" in message.blocks[0]["text"]["text"] and "NO-GO" not in message.blocks[0]["text"]["text"]
    assert message.text == "Precheck production: GO"


def test_precheck_marks_irreversible_revisions():
    text = _all_text(blocks.precheck_message(_report()))
    assert "IRREVERSIBLE" in text and "downgrade() raises NotImplementedError" in text
    assert "1 irreversible" in text
    assert "000000000001" in text and "000000000003" in text


def test_a_cut_list_of_revisions_never_hides_an_irreversible_one():
    pending = [_revision(i) for i in range(499)] + [_revision(499, reversible=False)]
    text = _all_text(blocks.precheck_message(_report(alembic=AlembicState(["a"], ["b"], pending))))
    assert "irreversible listed first" in text and "0000000001f3" in text and "IRREVERSIBLE" in text
    small = [_revision(1), _revision(2, reversible=False), _revision(3)]
    text = _all_text(blocks.precheck_message(_report(alembic=AlembicState(["a"], ["b"], small))))
    assert "in the order they apply" in text
    assert text.index("000000000001") < text.index("000000000002") < text.index("000000000003")


def test_precheck_checklist_never_shows_human_items_as_done():
    message = blocks.precheck_message(_report())
    sections = [b["text"]["text"] for b in message.blocks if b["type"] == "section"]
    human = next(s for s in sections if "left for a human" in s)
    auto = next(s for s in sections if "checked automatically" in s)
    assert "stakeholders informed" in human and ":white_large_square:" in human
    assert ":white_check_mark:" not in human and ":warning:" not in human
    assert "backup recent" in auto and "stakeholders" not in auto


def test_precheck_escapes_untrusted_text():
    report = _report(
        reasons=[f"blocked by {INJECTION}"],
        errors=["could not read <!channel>"],
        activity=Activity(
            active_count=2,
            long_queries=[_session(7, INJECTION)],
            lock_waits=[LockWait(8, "<@U999>", "<!here>", 40, INJECTION, [7], 7, "AccessExclusiveLock", "<t>")],
            roots=[BlockingRoot(7, _session(7, INJECTION), [])],
        ),
        alembic=AlembicState(current=["a"], heads=["b"], pending=[_revision(1, message=INJECTION)]),
        sql_preview=f"-- {INJECTION}\nSELECT 1;",
    )
    message = blocks.precheck_message(report)
    for text in _mrkdwn_texts(message):
        for bad in ("<!channel>", "<@U123>", "<@U999>", "<!here>", "<!subteam", "<https://"):
            assert bad not in text, (bad, text)
    assert "&lt;!channel&gt;" in _all_text(message)


def test_precheck_stays_valid_with_huge_inputs():
    waits = [LockWait(10_000 + i, "app", "worker", 31 + i, f"update t set x = {i} where id = {i}" * 5,
                      [10_000 + i - 1] * 8, 9_999, "RowExclusiveLock", "public.expenses") for i in range(1000)]
    roots = [BlockingRoot(5_000 + i, _session(5_000 + i, "vacuum full big_table" * 20), waits[:3])
             for i in range(1000)]
    report = _report(
        checks=[Check(f"check {i}", ("ok", "warn", "fail")[i % 3], "detail " * 60) for i in range(300)]
        + [Check(f"human step {i}", "warn", "do it " * 30, section="1.3", automatic=False) for i in range(300)],
        reasons=[f"reason {i}: " + "x" * 300 for i in range(400)],
        errors=[f"error {i}: " + "e" * 500 for i in range(200)],
        activity=Activity(
            active_count=5000,
            long_queries=[_session(i, "select * from t " * 100) for i in range(1000)],
            idle_in_transaction=[_session(20_000 + i) for i in range(1000)],
            lock_waits=waits,
            roots=roots,
            prepared=[PreparedXact(f"gid-{i}", "app", "db", 1000) for i in range(500)],
        ),
        alembic=AlembicState(current=[f"{i:04x}" for i in range(30)], heads=[f"h{i}" for i in range(30)],
                             pending=[_revision(i, reversible=i % 7 != 0, message="m" * 500) for i in range(500)]),
        sql_preview="ALTER TABLE t ADD COLUMN c int;\n" * 20_000,
        environment="p" * 200,
        target="t" * 1000,
    )
    message = blocks.precheck_message(report)   # validate() runs inside; check again explicitly
    validate(message)
    assert len(message.blocks) <= 50
    # within Slack's total text budget: the rest went into a file, with a line saying so
    assert blocks.text_length(message.blocks) <= blocks.MAX_TOTAL_TEXT
    [rest] = [f for f in message.files if f.filename == blocks.OVERFLOW_FILENAME]
    assert "in the attached file `rest-of-message.txt`" in _all_text(message)
    text = _all_text(message) + rest.content
    assert "… and" in text and "more" in text
    assert "1000 waiting on locks" in text
    assert "500 pending revisions" in text and "IRREVERSIBLE" in text
    assert len(message.text) < 1000
    assert len(message.files) == 2          # the SQL preview, and the rest of the message


def test_sql_preview_inline_when_short():
    message = blocks.precheck_message(_report(sql_preview="ALTER TABLE expenses ADD COLUMN note text;"))
    assert message.files == []
    sql = next(b["text"]["text"] for b in message.blocks if b["type"] == "section" and "SQL preview" in
               b["text"]["text"])
    assert "```ALTER TABLE expenses ADD COLUMN note text;```" in sql


def test_sql_preview_goes_to_a_file_when_long():
    sql = "".join(f"ALTER TABLE expenses ADD COLUMN c{i} text;\n" for i in range(400))
    message = blocks.precheck_message(_report(sql_preview=sql))
    assert len(message.files) == 1
    title, filename, content = message.files[0]
    assert content == sql and filename.endswith(".sql") and "production" in title
    note = next(b["text"]["text"] for b in message.blocks if b["type"] == "section" and "SQL preview" in
                b["text"]["text"])
    assert "attached as a file" in note and "c399" not in _all_text(message)


def test_sql_preview_empty():
    text = _all_text(blocks.precheck_message(_report(sql_preview="", alembic=AlembicState(["a"], ["a"], []))))
    assert "nothing to run" in text and "up to date" in text


def test_precheck_without_activity_or_alembic():
    message = blocks.precheck_message(_report(activity=None, alembic=None, sql_preview=""))
    assert "state unavailable" in _all_text(message)


def test_status_message_variants():
    state = AlembicState(current=["a1"], heads=["b2"], pending=[_revision(5), _revision(6, reversible=False)])
    event = {"actor": "U012AB3CD", "action": "precheck", "time": datetime(2025, 3, 1, tzinfo=timezone.utc),
             "outcome": "no-go <!channel>"}
    message = blocks.status_message("production", state, event)
    text = _all_text(message)
    assert "<@U012AB3CD>" in text and "`precheck`" in text and "&lt;!channel&gt;" in text
    assert "<!date^" in text
    assert message.text == "Status production: 2 pending (1 irreversible)"

    class Event:
        actor = "cli:alice"
        action = "migrate"
        time = "yesterday"
        outcome = None

    text = _all_text(blocks.status_message("staging", AlembicState(["x"], ["x"], []), Event()))
    assert "`cli:alice`" in text and "up to date" in text

    class StoreEvent:   # runbook.state's Event names the time `at` and carries a summary
        actor = "U012AB3CD"
        action = "precheck"
        at = datetime(2025, 3, 1, tzinfo=timezone.utc)
        outcome = "no-go"
        summary = "2 sessions waiting on locks <@U1>"

    text = _all_text(blocks.status_message("production", state, StoreEvent()))
    assert "<!date^1740787200^" in text and "*no-go*" in text and "&lt;@U1&gt;" in text
    message = blocks.status_message("staging", None, None)
    assert "none recorded yet" in _all_text(message) and message.text == "Status staging: state unavailable"


def test_status_message_with_500_pending():
    state = AlembicState(current=[], heads=["z"], pending=[_revision(i, reversible=i % 2 == 0) for i in range(500)])
    message = blocks.status_message("production", state, None)
    assert "… and" in _all_text(message) and "_unversioned_" in _all_text(message)


def test_bounded_lines():
    assert blocks.bounded_lines(["a", "b"], 100) == "a\nb"
    out = blocks.bounded_lines([f"line {i}" for i in range(1000)], 100)
    assert len(out) <= 100 and out.endswith("more")
    assert blocks.bounded_lines(["x" * 500], 100, total=1000) == "… and 1000 more"
    assert blocks.bounded_lines(["a", "b", "c"], 10, total=3) == "a\nb\nc"


def test_messages_go_through_the_sdk_without_warnings(local_slack):
    """pyproject turns slack_sdk's UserWarning into an error: every message must carry text."""
    from bot.app import make_client

    client = make_client("xoxb-test", base_url=local_slack.url)
    message = blocks.precheck_message(_report(sql_preview="SELECT 1;\n" * 3000))
    response = client.chat_postMessage(channel="C0RUNBOOK1", **message.as_kwargs())
    for f in message.files:
        client.files_upload_v2(channel="C0RUNBOOK1", title=f.title, filename=f.filename, content=f.content,
                               thread_ts=response["ts"])
    stored = local_slack.messages("C0RUNBOOK1")[0]
    assert stored.text == message.text and stored.blocks == message.blocks
    uploaded = local_slack.files()[0]
    assert uploaded.text == message.files[0].content and uploaded.thread_ts == response["ts"]


from tests.support.slack import local_slack  # noqa: E402,F401  (fixture)


def test_an_irreversibility_reason_is_cut_at_a_word_boundary_in_status_precheck_and_run():
    """The sample app's 0003 gives a long reason; Slack showed "…cannot be told apart from ones use…"
    (issue 17 §4). Every cut is now at a word, with an ellipsis: runbook.units.shorten."""
    from bot.migration_blocks import migration_request_blocks
    from runbook.revisions import parse_revision_file
    from runbook.units import shorten
    from tests.support.sample_app import APP_DIR

    [path] = (APP_DIR / "alembic" / "versions").glob("0003_*.py")
    rev = parse_revision_file(path)
    source = rev.irreversible_reason.rstrip("…").split()
    state = AlembicState(["0002_categories"], [rev.revision], [rev])
    run = migration_request_blocks({"direction": "upgrade", "current": ["0002_categories"], "target": "head",
                                    "steps": [rev.revision], "touched_tables": [],
                                    "revisions": [{"revision": rev.revision, "message": rev.message,
                                                   "reversible": False,
                                                   "irreversible_reason": rev.irreversible_reason}]},
                                   request_id="r1", pending=False, protection=None, finished=True)
    for shown in (rev.irreversible_reason, _all_text(blocks.status_message("production", state)),
                  _all_text(blocks.precheck_message(_report(alembic=state))), json.dumps(run, ensure_ascii=False)):
        start = shown.index("downgrade() raises NotImplementedError")
        cut = shown[start:shown.index("…", start)]
        assert cut[-1].isalnum() and cut.split()[-1] in source, cut    # a whole word of the reason, never "use"
    assert shorten("cannot be told apart from ones users added", 36) == "cannot be told apart from ones…"
    assert shorten("short", 36) == "short" and len(shorten("x" * 100, 10)) == 10
