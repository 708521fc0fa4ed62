"""The Slack half of `runbook-bot doctor` (the engine never talks to Slack): the token works
(`auth.test`) and the bot is a member of `slack.channel` (`conversations.info`), where every
approval and alert is posted. Checked only when SLACK_BOT_TOKEN is set."""
from __future__ import annotations

import os

from slack_sdk import WebClient

from bot.gateway import SlackFailure, SlackGateway
from runbook.config import Settings
from runbook.doctor import Check

TOKEN_ENV = "SLACK_BOT_TOKEN"


def slack_checks(settings: Settings, client: WebClient | None = None) -> list[Check]:
    token = os.environ.get(TOKEN_ENV)
    if not token and client is None:
        return [Check("slack", "warn", f"{TOKEN_ENV} is not set: Slack not checked",
                      f"set {TOKEN_ENV} to the bot's xoxb- token (serve needs it)")]
    if client is None:
        from bot.app import make_client

        client = make_client(token, timeout=10, rate_limit_retries=1)
    gateway = SlackGateway(client, log_failures=False)      # each failure is a check line below
    me = gateway.token_identity()
    if isinstance(me, SlackFailure):
        if me.answered:
            return [Check("slack token", "fail", f"auth.test refused the token: {me.error}",
                          f"set {TOKEN_ENV} to the bot token (xoxb-) of the installed app; reinstall it if it was revoked")]
        return [Check("slack token", "fail", f"Slack's Web API did not answer ({me.detail or me.error})",
                      "check the network, or SLACK_API_URL when set")]
    bot_user = me.get("user_id") or "?"
    checks = [Check("slack token", "ok", f"auth.test: bot {me.get('user') or bot_user} ({bot_user}) "
                    f"in workspace {me.get('team') or me.get('team_id') or '?'}")]
    if settings.slack is None:
        checks.append(Check("slack channel", "fail", "slack.channel is not configured: approvals and alerts "
                            "have nowhere to go", "add `slack: {channel: C…}` (the channel's ID) to the configuration"))
        return checks
    channel = settings.slack.channel
    invite = f"invite the bot in {channel}: /invite @{me.get('user') or 'runbook-bot'}"
    conversation = gateway.channel_info(channel)
    if isinstance(conversation, SlackFailure) and conversation.answered:
        error = conversation.error
        if error == "missing_scope":
            checks.append(Check("slack channel", "warn", f"cannot see whether the bot is in {channel}: conversations.info "
                                "needs the channels:read scope (groups:read for a private channel)",
                                f"add that scope, or make sure of it: {invite}"))
        else:
            checks.append(Check("slack channel", "fail", f"slack.channel {channel}: {error} (a private channel the "
                                "bot is not in looks the same as an unknown one)",
                                f"check the channel ID (not its name), then {invite}"))
        return checks
    if isinstance(conversation, SlackFailure):
        checks.append(Check("slack channel", "fail", f"conversations.info did not answer "
                            f"({conversation.detail or conversation.error})", "check the network, or SLACK_API_URL when set"))
        return checks
    label = f"{channel} (#{conversation['name']})" if conversation.get("name") else channel
    if conversation.get("is_member"):
        checks.append(Check("slack channel", "ok", f"the bot is a member of {label}"))
    else:
        checks.append(Check("slack channel", "fail", f"the bot is not a member of {label}: it cannot post "
                            "approvals or alerts there", invite))
    return checks
