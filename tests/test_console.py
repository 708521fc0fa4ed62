"""The console demo as a new user meets it (issue 17 §4): one `click approve` reads in a screen or
two, thread replies and uploaded files are shown as such."""
from __future__ import annotations

import io
import re

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
