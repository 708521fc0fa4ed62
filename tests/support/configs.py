"""Configuration files for tests, written the way a user would write them."""
from __future__ import annotations

import json
from pathlib import Path

from runbook.config import Settings, parse_settings
from tests.support.sample_app import ALEMBIC_ARGV, APP_DIR
from tests.support.slack import CHANNEL_ID


def config_text(url: str, *, channel: str = CHANNEL_ID, thresholds: dict | None = None,
                extra_env: str = "", approvers: tuple[str, ...] = ("U0APPROVE1",), connect_timeout: float = 3,
                state_url: str = "sqlite:///state.db", backups_dir: str = "backups",
                approvals: dict | None = None, command_channels: list[str] | None = None) -> str:
    """`approvals`: more keys of the environment's approvals block (required, expire_minutes, ...).
    `channel` defaults to the one the signed test commands come from (tests.support.slack): commands
    are taken only in slack.channel and DMs unless `command_channels` says otherwise."""
    thresholds = thresholds or {}
    taken = f", command_channels: {json.dumps(command_channels)}" if command_channels is not None else ""
    return "\n".join([
        f"state_url: {state_url}",
        f"slack: {{channel: {channel}{taken}}}",
        "environments:",
        "  production:",
        f"    database_url: {json.dumps(url)}",
        f"    app_dir: {json.dumps(str(APP_DIR))}",
        f"    alembic: {json.dumps(ALEMBIC_ARGV)}",
        f"    connect_timeout_seconds: {connect_timeout}",
        f"    backups: {{dir: {json.dumps(backups_dir)}}}",
        f"    approvals: {json.dumps({'approvers': list(approvers), **(approvals or {})})}",
        f"    thresholds: {json.dumps(thresholds)}",
        extra_env,
        "escalation:",
        "  owner: {slack: U0OWNER001, github: zeevbensender}",
        "",
    ])


def write_config(directory: Path, url: str, **kwargs) -> Path:
    path = directory / "runbook-bot.yaml"
    path.write_text(config_text(url, **kwargs))
    return path


def settings_for(directory: Path, url: str, **kwargs) -> Settings:
    path = write_config(directory, url, **kwargs)
    return parse_settings(path.read_text(), source=path)


def with_password(url: str, password: str, user: str = "postgres") -> str:
    """The same database URL with credentials: the embedded server trusts local sockets,
    so the password is carried (and must be kept secret) without being checked."""
    scheme, rest = url.split("://", 1)
    host_part = rest.split("@", 1)[-1]
    return f"{scheme}://{user}:{password}@{host_part}"
