"""The Slack app manifest, generated from what the bot really registers (reference/slack.md §2.2, rule 18).

    runbook-bot manifest                      HTTP mode: request URLs on the placeholder host
    runbook-bot manifest --url https://HOST   HTTP mode on your public host (/slack/events is added)
    runbook-bot manifest --socket             Socket Mode: no URLs

One source of truth: `build_app` is built offline (no token, no network) and every listener it
registered (`BotApp.registered`) becomes part of the manifest: a slash command is declared with
its request URL, any block action (approval buttons and whatever comes next) turns interactivity
on, an event (app_home_opened: the Home tab) is subscribed to (over the same URL in HTTP mode, over
the socket in Socket Mode). Listener kinds the manifest cannot declare by itself (shortcuts, events
not in EVENT_SCOPES) stop the generation with one line saying what to add here. The `/migrate`
actions come from bot.commands.ACTIONS: every one is listed in the app's long description; the
usage hint lists them while it stays short, else it points to `/migrate help`.

deploy/slack-manifest.yaml and deploy/slack-manifest.socket.yaml are this module's output; a
test keeps them equal to it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping
from urllib.parse import urlsplit

import yaml

from bot.commands import ACTIONS, ActionSpec

APP_NAME = "runbook-bot"
PLACEHOLDER_URL = "https://runbook-bot.example.com"
SHORT_DESCRIPTION = ("Runs the PostgreSQL + Alembic migration runbook from Slack: checks, backups, approvals, "
                     "migrations, alerts.")
COMMAND_DESCRIPTIONS = {"/migrate": "Database migration runbook: checks, backups, approvals, migrations, alerts"}
# Minimal scopes (reference/slack.md §2.2): the slash command, posting and updating messages,
# uploading long output, and reading user groups (approvers, escalation).
BOT_SCOPES = ("commands", "chat:write", "files:write", "usergroups:read")

# Slack's limits on the fields we fill (apps.manifest.validate refuses a manifest over them). The
# usage hint has room for 1000 characters, but Slack shows it on one line under the composer:
# beyond USAGE_HINT_READABLE it points to `/migrate help` instead of listing every action.
LIMITS = {"name": 35, "description": 140, "long_description": 4000, "display_name": 80, "command": 32,
          "command_description": 2000, "usage_hint": 1000, "request_url": 3000}
LONG_DESCRIPTION_MIN = 175
USAGE_HINT_READABLE = 100

# Events the manifest declares, with the bot scopes each needs (app_home_opened needs none; nor does
# views.publish). Any other event stops the generation until it is added here with its scopes.
EVENT_SCOPES: dict[str, tuple[str, ...]] = {"app_home_opened": ()}

INTERACTIVE_KINDS = frozenset({"action", "block_action", "view", "view_submission", "view_closed",
                               "attachment_action", "dialog_submission", "dialog_cancellation"})
OPTIONS_KINDS = frozenset({"options", "block_suggestion", "dialog_suggestion"})


class ManifestError(Exception):
    """The manifest cannot be generated as asked; one line saying what to change."""


@dataclass(frozen=True)
class Registered:
    """What build_app registered, by kind."""

    commands: tuple[str, ...]
    interactive: tuple[str, ...]      # block actions, views, ...: need interactivity
    options: tuple[str, ...]          # external select menus: need an options URL
    undeclarable: tuple[str, ...]     # kinds this module cannot declare (shortcuts, unknown events)
    events: tuple[str, ...] = ()      # Events API event types (bot events), e.g. app_home_opened


def _shown(constraint: Any) -> str:
    if isinstance(constraint, re.Pattern):
        return f"/{constraint.pattern}/"
    return str(constraint)


def registered_listeners() -> Registered:
    """Build the real app offline and read back every listener it registered."""
    from slack_sdk import WebClient

    from bot.app import build_app

    class _NoFlows:               # the listeners are only registered here, never called
        def environment_names(self) -> list[str]:
            return []

    # A placeholder token: Bolt insists on one, and token verification (auth.test) is off in build_app.
    app = build_app(None, WebClient(token="xoxb-manifest-generation"), _NoFlows(), signing_secret=None)
    try:
        return classify(app.registered)
    finally:
        app.shutdown(wait=False)


def classify(registered: list[tuple[str, Any]]) -> Registered:
    commands, interactive, options, undeclarable, events = [], [], [], [], []
    for kind, constraint in registered:
        if kind == "event" and isinstance(constraint, str) and constraint in EVENT_SCOPES:
            events.append(constraint)
        elif kind == "command":
            if not isinstance(constraint, str):
                raise ManifestError(f"the slash command {_shown(constraint)} is a pattern: Slack needs each "
                                    "command by name; register it with a plain string")
            commands.append(constraint)
        elif kind in INTERACTIVE_KINDS:
            interactive.append(f"{kind} {_shown(constraint)}")
        elif kind in OPTIONS_KINDS:
            options.append(f"{kind} {_shown(constraint)}")
        else:
            undeclarable.append(f"{kind} {_shown(constraint)}")
    return Registered(tuple(dict.fromkeys(commands)), tuple(interactive), tuple(options), tuple(undeclarable),
                      tuple(dict.fromkeys(events)))


def events_url(url: str | None) -> str:
    """The public request URL: an https base URL gets /slack/events appended (unless it has it)."""
    from bot.http import EVENTS_PATH

    url = (url or PLACEHOLDER_URL).strip()
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname or any(c.isspace() for c in url):
        raise ManifestError(f"--url must be the bot's public https:// address (Slack sends requests only over "
                            f"https), e.g. https://runbook-bot.example.com, not '{url[:80]}'")
    if parts.query or parts.fragment:
        raise ManifestError("--url takes the bot's public base address, without ?query or #fragment")
    base = url.rstrip("/")
    return base if base.endswith(EVENTS_PATH) else base + EVENTS_PATH


def usage_hint(actions: Mapping[str, ActionSpec]) -> str:
    """`help | status | … [env] [args]`: the actions in the registry's order, as many as fit on a
    readable line (the long description and `/migrate help` list them all)."""
    names, tail = list(actions), " [env] [args]"
    listed = " | ".join(names)
    while len(listed) + len(tail) > USAGE_HINT_READABLE and names:
        names.pop()
        listed = " | ".join(names + ["…"])
    return listed + tail


def long_description(actions: Mapping[str, ActionSpec]) -> str:
    lines = ["runbook-bot walks a PostgreSQL + Alembic migration through its runbook from Slack: prechecks, "
             "verified backups, approvals, supervised migrations with validation, rollbacks and restores, "
             "alerts on locks and long queries, and escalation.",
             "",
             "Actions of /migrate (the environment may be left out when only one is configured):"]
    lines += [f"{spec.usage}: {spec.summary}" for spec in actions.values()]
    return "\n".join(line.rstrip() for line in lines)


def manifest(*, socket: bool = False, url: str | None = None, actions: Mapping[str, ActionSpec] = ACTIONS,
             registered: Registered | None = None) -> dict[str, Any]:
    """The manifest as a dict; raises ManifestError (one line) when it cannot be made valid."""
    if socket and url:
        raise ManifestError("Socket Mode has no request URLs: leave out --url (or drop --socket for HTTP mode)")
    registered = registered or registered_listeners()
    if registered.undeclarable:
        raise ManifestError(f"build_app registers {', '.join(registered.undeclarable)}, which the manifest does not "
                            "declare yet: add it to bot/manifest.py (with its scopes)")
    if not registered.commands:
        raise ManifestError("build_app registers no slash command: there is nothing to declare")
    request_url = None if socket else events_url(url)
    commands = []
    for command in registered.commands:
        description = COMMAND_DESCRIPTIONS.get(command)
        if description is None:
            raise ManifestError(f"{command} has no description: add one to bot/manifest.COMMAND_DESCRIPTIONS")
        entry: dict[str, Any] = {"command": command, "description": description, "usage_hint": usage_hint(actions),
                                 "should_escape": False}
        if request_url:
            entry["url"] = request_url
        commands.append(entry)
    interactivity: dict[str, Any] = {"is_enabled": bool(registered.interactive or registered.options)}
    if request_url and interactivity["is_enabled"]:
        interactivity["request_url"] = request_url
        if registered.options:
            interactivity["message_menu_options_url"] = request_url
    # The App Home: its Home tab when the bot publishes one (app_home_opened); the Messages tab
    # always, writable, so `/migrate` can be typed in a DM with the bot and its ephemeral answers
    # there are not refused (`messages_tab_disabled`).
    app_home = {"home_tab_enabled": "app_home_opened" in registered.events, "messages_tab_enabled": True,
                "messages_tab_read_only_enabled": False}
    scopes = list(BOT_SCOPES) + [s for e in registered.events for s in EVENT_SCOPES[e] if s not in BOT_SCOPES]
    settings: dict[str, Any] = {"interactivity": interactivity}
    if registered.events:
        # HTTP: Slack posts the events to the same URL (and checks it once with url_verification);
        # Socket Mode: they come over the socket.
        settings["event_subscriptions"] = {**({"request_url": request_url} if request_url else {}),
                                           "bot_events": list(registered.events)}
    settings.update({"org_deploy_enabled": False, "socket_mode_enabled": socket, "token_rotation_enabled": False})
    result = {
        "_metadata": {"major_version": 1, "minor_version": 1},
        "display_information": {"name": APP_NAME, "description": SHORT_DESCRIPTION,
                                "background_color": "#1d3b53", "long_description": long_description(actions)},
        "features": {"app_home": app_home, "bot_user": {"display_name": APP_NAME, "always_online": True},
                     "slash_commands": commands},
        "oauth_config": {"scopes": {"bot": scopes}},
        "settings": settings,
    }
    check_limits(result)
    return result


def check_limits(data: Mapping[str, Any]) -> None:
    """Slack's field limits, checked here so a long new action fails the generation, not the app set-up."""
    info = data["display_information"]
    fields = [("display_information.name", info["name"], LIMITS["name"]),
              ("display_information.description", info["description"], LIMITS["description"]),
              ("display_information.long_description", info["long_description"], LIMITS["long_description"]),
              ("features.bot_user.display_name", data["features"]["bot_user"]["display_name"], LIMITS["display_name"])]
    for command in data["features"]["slash_commands"]:
        fields += [("slash_commands.command", command["command"], LIMITS["command"]),
                   ("slash_commands.description", command["description"], LIMITS["command_description"]),
                   ("slash_commands.usage_hint", command["usage_hint"], LIMITS["usage_hint"]),
                   ("slash_commands.url", command.get("url", ""), LIMITS["request_url"])]
    for where, value, limit in fields:
        if len(value) > limit:
            raise ManifestError(f"{where} is {len(value)} characters long; Slack takes at most {limit}")
    if len(info["long_description"]) < LONG_DESCRIPTION_MIN:
        raise ManifestError(f"display_information.long_description needs at least {LONG_DESCRIPTION_MIN} characters")


class _Dumper(yaml.SafeDumper):
    """Block style for multi-line strings, so the long description reads as text."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def render(data: Mapping[str, Any]) -> str:
    """The manifest as YAML, with a header saying where it comes from and how to use it."""
    socket = data["settings"]["socket_mode_enabled"]
    header = [
        "# Slack app manifest for runbook-bot in " + ("Socket Mode" if socket else "HTTP mode") + ".",
        "# Generated from the listeners build_app registers and bot.commands.ACTIONS: do not edit by hand.",
        "# Regenerate: runbook-bot manifest" + (" --socket > deploy/slack-manifest.socket.yaml" if socket else
                                                 " [--url https://YOUR-HOST] > deploy/slack-manifest.yaml"),
        "# Use: api.slack.com/apps -> Create New App -> From an app manifest; then install it to the workspace.",
    ]
    if socket:
        header.append("# Socket Mode also needs an app-level token with connections:write (SLACK_APP_TOKEN):")
        header.append("# Basic Information -> App-Level Tokens -> Generate.")
    body = yaml.dump(dict(data), Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=120)
    return "\n".join(header) + "\n" + body


def generate(*, socket: bool = False, url: str | None = None) -> str:
    return render(manifest(socket=socket, url=url))


__all__ = ["BOT_SCOPES", "LIMITS", "ManifestError", "PLACEHOLDER_URL", "Registered", "classify", "events_url",
           "generate", "long_description", "manifest", "registered_listeners", "render", "usage_hint"]
