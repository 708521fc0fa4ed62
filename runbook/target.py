"""Connections to a target database: timeouts, application_name, DSN redaction.

Every connection the bot opens names itself `runbook-bot/<purpose>` so the
checks can leave the bot's own sessions out of what they report.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import psycopg

# The DSN text helpers live apart so the state store can redact without importing psycopg.
from runbook.dsn import describe, password_of, redact, without_password  # noqa: F401

APPLICATION_PREFIX = "runbook-bot"

# Monitoring and validation queries must never queue behind a lock themselves.
MONITOR_STATEMENT_TIMEOUT = "5s"
MONITOR_LOCK_TIMEOUT = "100ms"


class TargetError(Exception):
    """The target database could not be reached or answered with an error; the text is redacted."""


def application_name(purpose: str) -> str:
    return f"{APPLICATION_PREFIX}/{purpose}"


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
