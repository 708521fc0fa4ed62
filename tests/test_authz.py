"""Who may pull which lever, where commands are taken, and replays (issue 13 §2, §4).

The real Bolt app behind its real HTTP server, signed requests, the engine's Flows and a real
state database; Slack's Web API is the local one. The levers tried are the ones the review pulled
from a DM as a non-approver: `watch off`, `escalate 3` and `backup`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bot.app import make_client
from bot.flows import Flows, Redactor
from runbook import authz
from runbook.config import ConfigError, Settings, parse_settings
from runbook.state import Store
from runbook.watch import AlertBook
from tests.support.slack import (  # noqa: F401  (fixtures)
    BOT_TOKEN,
    CHANNEL_ID,
    RecordingFlows,
    http_request,
    local_slack,
    log_lines,
    running_bot,
    signature_headers,
    slash_command_body,
    wait_for,
)

APPROVER, STRANGER, DBA = "U0APPROVE1", "U0STRANGE1", "U0DBA00001"
DM, OTHER = "D0DIRECT01", "C0ELSEWHR1"


def config(tmp_path: Path, **extra: Any) -> Settings:
    """production with one approver; `permissions`, `slack` keys as given."""
    slack = {"channel": CHANNEL_ID, **extra.pop("slack", {})}
    env = {"database_url": "postgresql://runbook@127.0.0.1:1/production", "app_dir": str(tmp_path),
           "approvals": {"approvers": [APPROVER]}, **extra}
    text = json.dumps({"state_url": f"sqlite:///{tmp_path / 'state.db'}", "slack": slack,
                       "environments": {"production": env}})
    return parse_settings(text, source=tmp_path / "runbook-bot.yaml")


class Bot:
    def __init__(self, local_slack: Any, tmp_path: Path, settings: Settings):
        self.slack = local_slack
        self.settings = settings
        self.store = Store(settings.state_url)
        self.store.migrate()
        self.engine = Flows(settings, self.store, make_client(BOT_TOKEN, local_slack.url), redactor=Redactor(settings))
        self.flows = RecordingFlows(inner=self.engine)

    def command(self, text: str, *, user: str = STRANGER, channel: str = CHANNEL_ID, body: bytes | None = None,
                headers: dict[str, str] | None = None):
        body = body or slash_command_body(text, user_id=user, channel_id=channel)
        headers = headers or {"Content-Type": "application/x-www-form-urlencoded", **signature_headers(body)}
        before = self.engine.submitted
        answer = http_request(self.running.events_url, data=body, headers=headers, method="POST")
        assert answer.status == 200, answer.text
        assert self.engine.wait_idle(30, after=before)
        return answer

    def events(self, action: str | None = None) -> list[tuple[str, str, str]]:
        return [(e.actor, e.action, e.outcome) for e in reversed(self.store.events(action=action, limit=100))]

    def ephemerals(self, user: str) -> list[str]:
        return [m.text for m in self.slack.messages(kind="ephemeral") if m.user == user]

    def posted(self) -> list[str]:
        return [m.text for m in self.slack.messages(kind="message")]


def ack_text(answer: Any) -> str:
    return answer.json()["text"] if answer.body[:1] == b"{" else answer.text


@pytest.fixture
def make_bot(local_slack, tmp_path):
    made: list[tuple[Bot, Any]] = []

    def make(**extra: Any) -> Bot:
        bot = Bot(local_slack, tmp_path, config(tmp_path, **extra))
        context = running_bot(local_slack, bot.flows)
        bot.running = context.__enter__()
        bot.running.app.settings = bot.settings        # the ack's channel rule reads the same settings
        made.append((bot, context))
        return bot

    yield make
    for bot, context in made:
        context.__exit__(None, None, None)
        bot.flows.close()
        bot.store.close()


# --------------------------------------------------------------------------
# the decision (engine)

def test_defaults_approvers_for_levers_everyone_for_asking(tmp_path):
    settings = config(tmp_path)
    for action in ("watch_off", "escalate_3", "backup", "ack_risk", "gate_override"):
        assert not authz.allowed(settings, "production", action, STRANGER), action
        assert authz.allowed(settings, "production", action, APPROVER), action
        assert authz.allowed(settings, "production", action, "cli:alice"), action     # the CLI is trusted
    for action in ("run", "rollback", "restore", "escalate_2"):
        assert authz.allowed(settings, "production", action, STRANGER), action
    with pytest.raises(ValueError):
        authz.allowed(settings, "production", "drop_database", APPROVER)


def test_groups_are_expanded_by_the_callers_function(tmp_path):
    settings = config(tmp_path, permissions={"watch_off": ["S0DBAGRP1"], "backup": "everyone", "run": []})
    members = {"S0DBAGRP1": [DBA]}
    assert authz.allowed(settings, "production", "watch_off", DBA, members_of=members.__getitem__)
    assert not authz.allowed(settings, "production", "watch_off", DBA)              # no expansion: not listed
    assert not authz.allowed(settings, "production", "watch_off", APPROVER, members_of=members.__getitem__)
    assert authz.allowed(settings, "production", "backup", STRANGER)
    assert not authz.allowed(settings, "production", "run", APPROVER)
    assert authz.refusal_line(settings, "production", "run") == (
        "Nobody may ask for a migration (`/migrate run`) on production from Slack "
        "(see environments.production.permissions.run); nothing was done.")
    assert authz.refusal_line(settings, "production", "watch_off") == (
        "Only S0DBAGRP1 may pause the alerts (`/migrate watch off`) on production; nothing was done.")


def test_permissions_and_command_channels_are_validated(tmp_path):
    with pytest.raises(ConfigError, match=r"permissions\.watch_of: unknown key"):
        config(tmp_path, permissions={"watch_of": [APPROVER]})
    with pytest.raises(ConfigError, match=r"permissions\.backup"):
        config(tmp_path, permissions={"backup": ["alice"]})
    with pytest.raises(ConfigError, match=r"slack\.command_channels"):
        config(tmp_path, slack={"command_channels": ["#general"]})
    assert config(tmp_path).slack.allowed_command_channels == [CHANNEL_ID, "dm"]


# --------------------------------------------------------------------------
# the levers, through the real app

def test_a_stranger_cannot_pull_the_levers_from_a_dm(make_bot):
    bot = make_bot()
    bot.slack.add_dm(DM, with_bot=True, messages_tab=True)          # the app's own Messages tab
    bot.command("watch off", channel=DM)
    bot.command("escalate 3 pausing everything", channel=DM)
    bot.command("backup", channel=DM)
    refusals = bot.ephemerals(STRANGER)
    assert refusals == [
        f":warning: Only the approvers (<@{APPROVER}>) may pause the alerts (`/migrate watch off`) on production; "
        "nothing was done.",
        f":warning: Only the approvers (<@{APPROVER}>) may declare an emergency (`/migrate escalate 3`: @here and "
        "the pause hook) on production; nothing was done.",
        f":warning: Only the approvers (<@{APPROVER}>) may take a backup (`/migrate backup`: retention may delete "
        "older backups) on production; nothing was done."]
    assert bot.slack.messages(kind="message") == []                     # no @here, no notice, no backup
    assert not AlertBook(bot.store).state("production").paused
    assert bot.events() == [(STRANGER, "watch", "unauthorised"), (STRANGER, "escalate", "unauthorised"),
                            (STRANGER, "backup", "unauthorised")]
    # the approver may, from the same DM
    bot.command("watch off", channel=DM, user=APPROVER)
    assert AlertBook(bot.store).state("production").paused
    assert bot.events()[-1] == (APPROVER, "watch", "ok")


def test_a_permission_given_to_a_user_group_is_checked_with_slack(make_bot):
    bot = make_bot(permissions={"watch_off": ["S0DBAGRP1"]})
    bot.slack.set_usergroup("S0DBAGRP1", [DBA])
    bot.command("watch off", user=APPROVER)                           # an approver, but not in the group
    assert bot.ephemerals(APPROVER) == [":warning: Only <!subteam^S0DBAGRP1> may pause the alerts "
                                        "(`/migrate watch off`) on production; nothing was done."]
    bot.command("watch off", user=DBA)
    assert AlertBook(bot.store).state("production").paused
    assert [c.body["usergroup"] for c in bot.slack.calls("usergroups.users.list")] == ["S0DBAGRP1", "S0DBAGRP1"]
    bot.command("watch on")                                            # turning alerting back on: anyone
    assert not AlertBook(bot.store).state("production").paused


def test_every_action_has_a_handler(make_bot):
    """The handlers live in bot/flows/ by runbook section and Flows dispatches by action (after Admission,
    as the tests above show): an action left out of the table would be acked and then never answered."""
    from bot.commands import ACTIONS

    assert sorted(make_bot().engine.handlers) == sorted(ACTIONS)


def test_read_only_commands_and_watch_on_stay_open_to_everyone(make_bot):
    bot = make_bot()
    bot.command("watch status")
    bot.command("escalate 1")
    assert bot.ephemerals(STRANGER) == []
    assert [outcome for _, action, outcome in bot.events() if action in ("watch", "escalate")] == ["ok", "level 1"]


# --------------------------------------------------------------------------
# where commands are taken

def test_a_command_from_another_channel_is_refused_with_where_to_go(make_bot):
    bot = make_bot()
    answer = bot.command("watch on", user=APPROVER, channel=OTHER)
    assert ack_text(answer) == (f":warning: `/migrate` is not taken in this channel: use it in <#{CHANNEL_ID}> "
                                     "or a direct message with the bot. Nothing was done.")
    assert bot.slack.messages(kind="message") == [] and bot.slack.messages(kind="ephemeral") == []
    assert bot.events() == [(APPROVER, "watch", "unauthorised")]
    assert not AlertBook(bot.store).state("production").paused
    assert ack_text(bot.command("help", channel=OTHER)).startswith("/migrate commands")   # help: anywhere


def test_command_channels_allow_more_channels_or_fewer(make_bot):
    bot = make_bot(slack={"command_channels": [OTHER]})
    bot.command("watch off", user=APPROVER, channel=OTHER)
    assert AlertBook(bot.store).state("production").paused
    answer = bot.command("watch on", user=APPROVER, channel=DM)        # DMs are no longer listed
    assert ack_text(answer) == (f":warning: `/migrate` is not taken in this channel: use it in <#{OTHER}>. "
                                     "Nothing was done.")
    assert AlertBook(bot.store).state("production").paused


# --------------------------------------------------------------------------
# replays (§4)

def test_a_replayed_signed_command_acts_once(make_bot, log_lines):
    bot = make_bot()
    body = slash_command_body("escalate 3 the API is down", user_id=APPROVER)
    headers = {"Content-Type": "application/x-www-form-urlencoded", **signature_headers(body)}
    for _ in range(3):                                                  # the same signed bytes, three times
        bot.command("", body=body, headers=headers)
    assert len([t for t in bot.posted() if "<!here>" in t or "mergency" in t]) == 1
    assert [o for _, a, o in bot.events() if a == "escalate"] == ["level 3", "replayed", "replayed"]
    assert log_lines.getvalue().count("ignored a replayed request") == 2
    bot.command("escalate 3 the API is down", user=APPROVER)           # a new request with the same text acts
    assert [o for _, a, o in bot.events() if a == "escalate"][-1] == "level 3"


def test_replays_are_remembered_in_the_state_database_not_the_process(make_bot, tmp_path):
    first = make_bot()
    body = slash_command_body("watch off", user_id=APPROVER)
    headers = {"Content-Type": "application/x-www-form-urlencoded", **signature_headers(body)}
    first.command("", body=body, headers=headers)
    second = make_bot()                                                 # another replica on the same state
    second.command("", body=body, headers=headers)
    assert [(a, o) for _, a, o in second.events()] == [("watch", "ok"), ("watch", "replayed")]


# --------------------------------------------------------------------------
# unsigned and malformed (§4)

@pytest.mark.parametrize("body, content_type", [
    (b"payload=%7Bnot-json", "application/x-www-form-urlencoded"),
    (b"{\"type\": ", "application/json"),
    (b"\xff\xfe\x00garbage", "application/x-www-form-urlencoded"),
])
def test_an_unsigned_malformed_body_is_401_with_one_log_line(make_bot, log_lines, body, content_type):
    bot = make_bot()
    start = len(log_lines.getvalue())
    answer = http_request(bot.running.events_url, data=body, headers={"Content-Type": content_type}, method="POST")
    assert answer.status == 401 and answer.json() == {"error": "invalid or missing request signature"}
    log = log_lines.getvalue()[start:]
    assert "Traceback" not in log and "garbage" not in log and "not-json" not in log
    # waitress says "Task queue depth is N" when a loaded machine is slow to take the request: not ours
    ours = [line for line in log.strip().splitlines() if "Task queue depth" not in line]
    assert log.count("refused a request to /slack/events") == 1 and len(ours) == 1, log
    assert bot.flows.submitted == []
