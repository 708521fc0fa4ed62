"""What an incident summary holds: plain dataclasses, and the one way its texts are scrubbed."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Sequence

from runbook.state.runs import Run
from runbook.target import redact
from runbook.units import human_size


LEVEL_NAMES = {"none": "not verified", "toc": "TOC read", "full": "full read (pg_restore to /dev/null)",
               "restore": "restored into a scratch database, row counts compared"}


class UnknownRun(Exception):
    """No run with that id; one line."""


@dataclass(frozen=True)
class Step:
    """One thing attempted, with when, how it ended, and who approved it."""

    name: str                      # precheck, backup, migrate, retry, validation, rollback, restore, ...
    at: datetime | None
    outcome: str
    detail: str = ""
    approved_by: tuple[str, ...] = ()
    approval: str = ""             # how it was approved, or why it needed no approval
    actor: str | None = None


@dataclass(frozen=True)
class BackupFacts:
    id: int
    name: str
    kind: str
    reason: str
    status: str
    location: str
    at: datetime | None            # when it finished (started, while running)
    size_bytes: int | None
    sha256: str | None
    level: str
    revision: list[str] | None
    relation: str                  # how it relates to the incident

    @property
    def size(self) -> str:
        return human_size(self.size_bytes, unknown="none")

    @property
    def level_text(self) -> str:
        return f"{self.level}: {LEVEL_NAMES.get(self.level, self.level)}"


@dataclass(frozen=True)
class Escalated:
    at: datetime
    level: int | None
    level_name: str
    notified: tuple[str, ...]
    actor: str
    reason: str
    automatic: bool
    github_url: str | None = None


@dataclass(frozen=True)
class TimelineEntry:
    at: datetime
    actor: str
    action: str
    outcome: str
    summary: str


@dataclass
class Incident:
    environment: str
    generated_at: datetime
    since: datetime
    until: datetime | None
    run: Run | None
    from_revisions: list[str] = field(default_factory=list)
    target: str | None = None
    reached: list[str] = field(default_factory=list)
    outcome: str | None = None
    errors: list[str] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    backup: BackupFacts | None = None
    validation: dict[str, Any] | None = None
    recommendation: dict[str, Any] | None = None
    escalations: list[Escalated] = field(default_factory=list)
    log_path: str | None = None
    log_lines: list[str] = field(default_factory=list)
    log_note: str = "none"         # why there are no log lines
    log_dropped: bool = False      # library traceback frames were left out of them
    timeline: list[TimelineEntry] = field(default_factory=list)

    @property
    def title(self) -> str:
        if self.run is None:
            return f"Incident summary: {self.environment}"
        return f"Incident summary: {self.run.kind} on {self.environment} ({self.outcome or self.run.state})"

    @property
    def run_id(self) -> str | None:
        return self.run.id if self.run is not None else None


class Scrubber:
    """`secrets` masked (runbook.target.redact) in every text an incident reads or prints."""

    def __init__(self, secrets: Sequence[str]):
        self.secrets = tuple(s for s in secrets if s)

    def __call__(self, text: Any) -> str:
        return redact(str(text or ""), *self.secrets)
