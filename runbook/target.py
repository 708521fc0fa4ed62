"""Connections to a target database: timeouts, application_name, DSN redaction.

Every connection the bot opens names itself `runbook-bot/<purpose>` so the
checks can leave the bot's own sessions out of what they report.
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator
from urllib.parse import urlsplit, urlunsplit

import psycopg

APPLICATION_PREFIX = "runbook-bot"

# Monitoring and validation queries must never queue behind a lock themselves.
MONITOR_STATEMENT_TIMEOUT = "5s"
MONITOR_LOCK_TIMEOUT = "100ms"


class TargetError(Exception):
    """The target database could not be reached or answered with an error; the text is redacted."""


def application_name(purpose: str) -> str:
    return f"{APPLICATION_PREFIX}/{purpose}"


_URL_PASSWORD = re.compile(r"(postgres(?:ql)?(?:\+\w+)?://[^:/@\s]*:)([^@\s]*)(@)")
_KV_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)


def redact(text: str, *secrets: str) -> str:
    """Mask passwords in any URL or key=value DSN in `text`, and every given secret verbatim."""
    if not text:
        return text
    text = _URL_PASSWORD.sub(lambda m: m.group(1) + ("***" if m.group(2) else "") + m.group(3), text)
    text = _KV_PASSWORD.sub(r"\1***", text)
    for secret in secrets:
        if secret and len(secret) >= 3:
            text = text.replace(secret, "***")
    return text


def password_of(dsn: str) -> str:
    """The password inside a URL DSN, or '' (used to scrub texts that echo it back)."""
    try:
        return urlsplit(dsn).password or ""
    except ValueError:
        return ""


def describe(dsn: str) -> str:
    """host:port/dbname for messages, never the credentials."""
    try:
        parts = urlsplit(dsn)
    except ValueError:
        return "the configured database"
    host = parts.hostname or "local socket"
    port = f":{parts.port}" if parts.port else ""
    dbname = parts.path.lstrip("/") or "(default)"
    return f"{host}{port}/{dbname}"


def without_password(dsn: str) -> str:
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    netloc = parts.netloc.rsplit("@", 1)
    user = (parts.username or "") + ":***"
    return urlunsplit(parts._replace(netloc=f"{user}@{netloc[1]}"))


@dataclass(frozen=True)
class Target:
    """Where and how to connect; built from an Environment by the caller."""

    dsn: str
    connect_timeout: float = 5.0

    @property
    def label(self) -> str:
        return describe(self.dsn)

    def scrub(self, text: str) -> str:
        return redact(text, password_of(self.dsn))

    @contextmanager
    def connect(
        self,
        purpose: str,
        *,
        statement_timeout: str = MONITOR_STATEMENT_TIMEOUT,
        lock_timeout: str = MONITOR_LOCK_TIMEOUT,
        autocommit: bool = True,
    ) -> Iterator[psycopg.Connection]:
        """A short-lived connection with its own timeouts; errors become redacted TargetErrors."""
        options = f"-c statement_timeout={statement_timeout} -c lock_timeout={lock_timeout}"
        try:
            conn = psycopg.connect(
                self.dsn,
                connect_timeout=max(1, round(self.connect_timeout)),
                application_name=application_name(purpose),
                options=options,
                autocommit=autocommit,
            )
        except psycopg.Error as exc:
            raise TargetError(f"cannot connect to {self.label}: {self._reason(exc)}") from None
        try:
            yield conn
        except psycopg.Error as exc:
            raise TargetError(f"{self.label}: {self._reason(exc)}") from None
        finally:
            conn.close()

    def _reason(self, exc: psycopg.Error) -> str:
        text = str(exc).strip().splitlines()
        first = next((line for line in text if line.strip()), exc.__class__.__name__)
        return self.scrub(first.strip())
