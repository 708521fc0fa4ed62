"""The console demo as a new user meets it (issue 17 §4): one `click approve` reads in a screen or
two, thread replies and uploaded files are shown as such."""
from __future__ import annotations

import io
import os
import re

import pytest

from bot.console import Demo


def test_click_approve_shows_what_changed_thread_replies_and_every_file():
    out = io.StringIO()
    with Demo(out) as demo:
        demo.run("/migrate run")
        request = out.getvalue()
        mark = len(request)
        demo.run("click approve")
        click = out.getvalue()[mark:]
        mark = len(out.getvalue())
        demo.run("/migrate escalate 2 the backfill went wrong")
        escalation = out.getvalue()[mark:]
    # the request lists low findings as a count; /migrate precheck has them in full
    assert re.search(r"\d+ low findings: `/migrate precheck production` lists them", request), request
    assert "prefer-bigint-over-int" not in request
    # the click: the request's changes only (it is updated in place), then the replies in its thread
    assert re.search(r"updated in #C0DEMO0001, \d+ unchanged lines not repeated", click), click
    assert "Migration production: done" in click and "Risk review" not in click
    assert click.count("↳ thread reply to “Migration production: done") >= 3      # monitor, validation, reply
    assert "📄 file uploaded in the thread of “Migration production: done" in click and ".log" in click
    assert len(click.splitlines()) < 70, click
    # a level-2 escalation goes in the run's thread with its Markdown summary as a file
    assert "↳ thread reply to" in escalation and "Escalation level 2 (Owner)" in escalation
    assert re.search(r"📄 file uploaded in the thread of .*: incident_production_\w+\.md", escalation), escalation
    assert "Traceback" not in out.getvalue()


def test_click_rehearse_presses_rehearse_first_for_whoever_may_rehearse():
    """The request's Rehearse first, from the console: refused for someone who is not an approver
    (rehearsing is for approvers), run for the demo's other approver; the request then shows it."""
    from bot.approvals import ACTION_APPROVE, ACTION_REJECT
    from bot.console import CLICKS
    from bot.migration_blocks import ACTION_REHEARSE_FIRST

    assert CLICKS == {"approve": ACTION_APPROVE, "reject": ACTION_REJECT, "rehearse": ACTION_REHEARSE_FIRST}
    out = io.StringIO()
    with Demo(out) as demo:
        demo.run("/migrate run +1")
        assert "[ Rehearse first ]" in out.getvalue()
        mark = len(out.getvalue())
        demo.run("click rehearse as U0VISITOR1")
        refused = out.getvalue()[mark:]
        mark = len(out.getvalue())
        demo.run("click rehearse")
        rehearsed = out.getvalue()[mark:]
        mark = len(out.getvalue())
        demo.run("click sideways")
        usage = out.getvalue()[mark:]
    assert "may rehearse on a restored copy" in refused and "Rehearsal of production" not in refused, refused
    assert "Rehearsal of production" in rehearsed and "passed" in rehearsed, rehearsed
    assert "*Rehearsed*" in rehearsed and "[ Rehearse first ]" not in rehearsed, rehearsed
    assert "usage: click approve|reject|rehearse [as U0SOMEONE1]" in usage
    assert "Traceback" not in out.getvalue()


def test_the_interactive_demo_runs_the_watch_and_makes_a_lock_queue(tmp_path, monkeypatch):
    """`runbook-bot demo` (issue 17 §2): its help lists `click` and `lock`; the watch polls every 5 s,
    so a `lock` opens an alert, a second `lock` updates it, `unlock` resolves it, each shown as it
    comes; the demo's folder is .demo/ where it was started, emptied at start and kept after exit."""
    from bot.console import DEMO_MARKER, WATCH_EVERY_SECONDS, run_demo
    from tests.support.waiting import wait_for

    monkeypatch.chdir(tmp_path)
    (tmp_path / ".demo").mkdir()
    (tmp_path / ".demo" / DEMO_MARKER).write_text("")
    (tmp_path / ".demo" / "state.db").write_text("a previous demo's state")
    out = io.StringIO()

    def typed():
        yield "help"
        yield "lock"
        wait_for(lambda: "Lock wait: production" in out.getvalue(), timeout=6 * WATCH_EVERY_SECONDS,
                 what="the watch's lock alert")
        yield "lock"
        wait_for(lambda: "holds up 3 sessions" in out.getvalue(), timeout=6 * WATCH_EVERY_SECONDS,
                 what="the alert updated with the third session")
        yield "/migrate watch status"
        yield "unlock"
        wait_for(lambda: "Resolved: lock wait" in out.getvalue(), timeout=6 * WATCH_EVERY_SECONDS,
                 what="the alert resolved")
        yield "quit"

    assert run_demo(out=out, lines=typed()) == 0
    text = out.getvalue()
    help_text = text.split("The console's own commands", 1)[1]
    assert "click approve | reject | rehearse [as U…]" in help_text and "lock " in help_text and "unlock " in help_text
    assert text.startswith("The demo's folder: .demo/ (state, backups, configuration; kept after exit)")
    alert = text.index("── bot (posted in #C0DEMO0001)", text.index("> ") if "> " in text else 0)
    assert "Lock wait: production: root blocker pid" in text[alert:]
    assert re.search(r"── bot \(updated in #C0DEMO0001, \d+ unchanged lines not repeated\)[^\n]*\n.*holds up 3 sessions",
                     text), text
    assert re.search(r"last poll .* ok in", text), text                # /migrate watch status: the watch polls
    assert "rolled back; the sessions queued behind it went through" in text
    assert text.rstrip().splitlines()[-1].startswith("Next: ")
    assert "Traceback" not in text
    assert (tmp_path / ".demo" / "runbook-bot.yaml").exists()          # kept after exit
    assert (tmp_path / ".demo" / "state.db").read_bytes()[:15] == b"SQLite format 3"   # the old one went


def test_the_demo_never_empties_a_folder_it_did_not_make(tmp_path, monkeypatch):
    from bot.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / ".demo").mkdir()
    (tmp_path / ".demo" / "notes.txt").write_text("mine")
    assert main(["demo", "--scripted"]) == 2
    assert (tmp_path / ".demo" / "notes.txt").read_text() == "mine"


def test_steady_rewrites_what_varies_and_keeps_what_does_not():
    """The README's transcript stays equal run after run: times, ids, durations, pids and ports are
    made fixed (before wrapping, so lines break alike), settings and counts are kept; idempotent."""
    from bot.console import Steady

    steady = Steady({"/tmp/x/.demo": ".demo"})
    steady.pids(27163, 27164)
    cases = {
        "ack 200 in 13 ms: Working": "ack 200 in 12 ms: Working",
        "longest wait 11 s · took 247 ms · in 4.2 s": "longest wait 1.2 s · took 1.2 s · in 1.2 s",
        "every 5 s · lock_timeout=5s · 2 sessions · 200 rows": "every 5 s · lock_timeout=5s · 2 sessions · 200 rows",
        "pid 27163 blocks pid 27164, not pid 271630": "pid 4101 blocks pid 4102, not pid 271630",
        "2026-12-05 18:00 UTC, 2026-12-05 18:00:44.815": "2025-06-02 14:05 UTC, 2025-06-02 14:05:09.123",
        "`/tmp/x/.demo/backups/backup_20261205_180041.dump`": "`.demo/backups/backup_20250602_140509.dump`",
        "http://127.0.0.1:43913/api/": "http://127.0.0.1:40001/api/",
    }
    for given, expected in cases.items():
        assert steady(given) == expected and steady(expected) == expected
    run = steady("run `73707fc68ca241b9` · migrate_production_x_73707fc68ca241b9.log · request `53739a91`")
    assert run.count(run.split("`")[1]) == 2 and "73707fc68ca241b9" not in run and "53739a91" not in run


def test_a_second_demo_never_empties_the_folder_of_a_running_one(tmp_path):
    from bot.console import DemoFolderRefused, reset_folder

    fd = reset_folder(tmp_path / ".demo")
    try:
        (tmp_path / ".demo" / "state.db").write_text("the running demo's")
        with pytest.raises(DemoFolderRefused, match="another demo runs in"):
            reset_folder(tmp_path / ".demo")
        assert (tmp_path / ".demo" / "state.db").exists()
    finally:
        os.close(fd)
    os.close(reset_folder(tmp_path / ".demo"))                   # once it ended, the next one starts clean
    assert not (tmp_path / ".demo" / "state.db").exists()


def test_a_code_block_ends_where_its_fence_is_and_is_cut_in_the_console():
    """A block whose closing ``` ends its last line (the SQL preview's `COMMIT;```) is closed there,
    not printed with its fence; the console shows a code block's first lines and how many it left."""
    from bot.console import render_message

    sql = "```" + "\n".join(f"SELECT {n};" for n in range(1, 11)) + "```\nafter the block"
    message = {"blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": sql}},
                          {"type": "section", "fields": [{"type": "mrkdwn", "text": "*Approvals*\n0 of 1"}]}]}
    whole = render_message(message)
    assert "```" not in whole and "    | SELECT 10;" in whole and "  after the block" in whole
    assert "    *Approvals* 0 of 1" in whole
    cut = render_message(message, code_lines=3)
    assert "    | SELECT 3;" in cut and "SELECT 4;" not in cut and "    | … 7 more lines" in cut
    assert "  after the block" in cut
