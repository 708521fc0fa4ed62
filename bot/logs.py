"""Logging that never prints a secret.

Two layers: a filter on the Slack libraries' loggers removes tokens, response
URLs and the request bodies Bolt logs (an invalid signature logs the whole body
at INFO); the handler's formatter then masks every database password and token
the bot knows in each formatted line, traceback included.
"""
from __future__ import annotations

import logging
import os
import re
import sys

from runbook.config import Settings
from runbook.dsn import password_of, redact

TOKEN_ENV = ("SLACK_BOT_TOKEN", "SLACK_APP_TOKEN", "SLACK_SIGNING_SECRET")


_REDACTIONS = (
    (re.compile(r"(body: ).*(\)\s*)$", re.S), r"\1(withheld)\2"),
    (re.compile(r"\b(xox[a-z]|xapp)-[A-Za-z0-9-]+"), r"\1-[redacted]"),
    (re.compile(r"((?:^|[&?\s])(?:token|response_url)=)[^&\s,)]*"), r"\1[redacted]"),
    (re.compile(r"""(['"](?:token|response_url)['"]\s*:\s*)(['"])[^'"]*\2"""), r"\1\2[redacted]\2"),
    (re.compile(r"https?://hooks\.slack\.com/\S+"), "[redacted-url]"),
)


def redact_slack(text: str) -> str:
    """Remove tokens, response URLs and logged request bodies from a log line."""
    for pattern, replacement in _REDACTIONS:
        text = pattern.sub(replacement, text)
    return text


class RedactingFilter(logging.Filter):
    """A logging filter applying `redact_slack`; also attachable to handlers by the CLI."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            return True
        cleaned = redact_slack(message)
        if cleaned != message:
            record.msg, record.args = cleaned, ()
        return True


_REDACTED_LOGGERS = (
    "slack_bolt.App", "slack_bolt.RequestVerification", "slack_bolt.SingleTeamAuthorization",
    "slack_bolt.MultiTeamsAuthorization", "slack_bolt.IgnoringSelfEvents", "slack_bolt.UrlVerification",
    "slack_bolt.SslCheck", "slack_sdk.web.base_client", "slack_sdk.socket_mode.builtin.client", "runbook-bot",
)
_FILTER = RedactingFilter()


def install_log_redaction() -> None:
    for name in _REDACTED_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)




def known_secrets(settings: Settings | None) -> tuple[str, ...]:
    secrets = [os.environ.get(name, "") for name in TOKEN_ENV]
    if settings is not None:
        secrets += [password_of(dsn) for env in settings.environments.values() for dsn in (env.dsn, env.rehearsal_dsn)]
        secrets.append(password_of(settings.state_url))
        if settings.escalation.github is not None:        # the GitHub token of escalations (issue 6)
            secrets.append(os.environ.get(settings.escalation.github.token_env, ""))
    return tuple(s for s in secrets if s and len(s) >= 3)


class RedactingFormatter(logging.Formatter):
    def __init__(self, secrets: tuple[str, ...], fmt: str):
        super().__init__(fmt)
        self.secrets = secrets

    def format(self, record: logging.LogRecord) -> str:
        return redact(redact_slack(super().format(record)), *self.secrets)


class _CurrentStderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time of each record (as logging's lastResort
    does), so a handler installed while stderr was redirected never writes to a closed stream."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def install_redacting_handler(settings: Settings | None, level: int = logging.INFO,
                              stream=None) -> logging.Handler:
    handler = logging.StreamHandler(stream) if stream is not None else _CurrentStderrHandler()
    handler.setFormatter(RedactingFormatter(known_secrets(settings),
                                            "%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        if isinstance(old.formatter, RedactingFormatter):
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    return handler
