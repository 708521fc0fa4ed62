"""Logging that never prints a secret: every formatted line, traceback included, is redacted."""
from __future__ import annotations

import logging
import os
import sys

from runbook.config import Settings
from runbook.target import password_of, redact

TOKEN_ENV = ("SLACK_BOT_TOKEN", "SLACK_APP_TOKEN", "SLACK_SIGNING_SECRET")


def known_secrets(settings: Settings | None) -> tuple[str, ...]:
    secrets = [os.environ.get(name, "") for name in TOKEN_ENV]
    if settings is not None:
        secrets += [password_of(env.dsn) for env in settings.environments.values()]
        secrets.append(password_of(settings.state_url))
    return tuple(s for s in secrets if s and len(s) >= 3)


class RedactingFormatter(logging.Formatter):
    def __init__(self, secrets: tuple[str, ...], fmt: str):
        super().__init__(fmt)
        self.secrets = secrets

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record), *self.secrets)


def install_redacting_handler(settings: Settings | None, level: int = logging.INFO,
                              stream=None) -> logging.Handler:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(RedactingFormatter(known_secrets(settings),
                                            "%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        if isinstance(old.formatter, RedactingFormatter):
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    return handler
