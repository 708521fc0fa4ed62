"""`/migrate` text -> Command: pure parsing, one-line errors."""
from __future__ import annotations

import pytest

from bot.commands import Command, CommandError, parse

ONE = ["production"]
TWO = ["production", "staging"]


@pytest.mark.parametrize("text, envs, expected", [
    ("", ONE, Command("help")),
    ("help", TWO, Command("help")),
    ("precheck", ONE, Command("precheck", "production")),
    ("PRECHECK production", ONE, Command("precheck", "production")),
    ("status staging", TWO, Command("status", "staging")),
])
def test_valid_commands(text, envs, expected):
    assert parse(text, envs) == expected


def test_a_negative_revision_is_not_an_option():
    assert parse("rollback production -1", ONE) == Command("rollback", "production", ("-1",))


@pytest.mark.parametrize("text, envs, fragment", [
    ("frobnicate", ONE, "Unknown action 'frobnicate'"),
    ("precheck qa", ONE, "Unknown environment 'qa'. Configured: production"),
    ("precheck", TWO, "Several environments are configured (production, staging): name one"),
    ("status production extra", ONE, "takes no more arguments"),
    ('precheck "unterminated', ONE, "Check your quotes"),
    ("x" * 2001, ONE, "too long"),
    ("<!channel>" + "a" * 100, ONE, "Unknown action"),
    # a CLI habit: /migrate takes no options (issue 17 §4), not "Unknown environment '--force'"
    ("precheck --force now", ONE, "`/migrate precheck` takes no options ('--force'). Usage: `/migrate precheck [env]`"),
    ("precheck production -f", ONE, "`/migrate precheck` takes no options ('-f')"),
    ("run --yes", TWO, "`/migrate run` takes no options ('--yes')"),
])
def test_malformed_commands_get_one_line(text, envs, fragment):
    with pytest.raises(CommandError) as caught:
        parse(text, envs)
    assert fragment in str(caught.value)
    assert "\n" not in str(caught.value)
    assert len(str(caught.value)) < 300


def test_slack_escaped_text_is_unescaped_once():
    """Slack sends `&`, `<`, `>` HTML-escaped; parse undoes it once (a literal "&amp;" typed by the
    user arrives as "&amp;amp;" and stays "&amp;")."""
    command = parse("escalate 1 a &amp; b &lt;c&gt; &amp;amp;", ["production"])
    assert command.args == ("1", "a", "&", "b", "<c>", "&amp;")
