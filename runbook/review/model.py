"""The risk review's results: ratings, the errors it raises, and the plain dataclasses it returns."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from runbook.units import human_size, short_duration


Rating = Literal["low", "medium", "high"]
RATINGS: tuple[Rating, ...] = ("low", "medium", "high")


class ReviewError(Exception):
    """The review could not run (squawk missing or broken); one line."""


class AllowlistError(Exception):
    """A malformed `squawk_allow` in a revision file; one line naming the file and line."""


@dataclass(frozen=True)
class LockHolder:
    """A session holding (or queued for) a lock the migration would wait behind."""

    relation: str
    mode: str                      # AccessShareLock, RowExclusiveLock, ...
    granted: bool
    pid: int | None                # None: a prepared transaction
    state: str | None              # active, idle in transaction, ...
    application: str | None
    user: str | None
    xact_seconds: float | None
    query: str
    prepared_gid: str | None = None

    @property
    def idle(self) -> bool:
        return self.pid is None or (self.state or "").startswith("idle in transaction")

    def describe(self) -> str:
        if self.pid is None:
            who = f"prepared transaction {self.prepared_gid or '?'}"
        else:
            age = f" for {short_duration(self.xact_seconds)}" if self.xact_seconds is not None else ""
            who = f"pid {self.pid} ({self.application or '?'}, {self.state or '?'}{age})"
        verb = "holds" if self.granted else "queues for"
        return f"{who} {verb} {self.mode} on {self.relation}"


@dataclass(frozen=True)
class TableFacts:
    name: str                      # as the SQL names it
    exists: bool
    size_bytes: int | None = None
    rows: int | None = None        # reltuples; None when never analyzed
    holders: tuple[LockHolder, ...] = ()
    exact_size: bool = True        # False: locked now, so the size is the catalog's (relpages) estimate

    def describe(self) -> str:
        if not self.exists:
            return "not there yet"
        rows = f", ~{self.rows:,} rows" if self.rows is not None else ""
        return f"{'' if self.exact_size else '~'}{human_size(self.size_bytes)}{rows}"


@dataclass(frozen=True)
class Finding:
    rule: str
    message: str
    help: str
    line: int                      # 1-based, in the revision's own rendered SQL
    column: int
    statement: str                 # the statement it is about, one line
    tables: tuple[str, ...]
    rating: Rating
    reason: str
    allowed: str | None = None     # the allowlist's reason when silenced


@dataclass(frozen=True)
class Acknowledgement:
    environment: str
    revision: str
    file_sha256: str
    actor: str
    reason: str
    at: datetime
    event_id: int | None = None


@dataclass
class RevisionReview:
    revision: str
    path: str                      # the revision file, relative to app_dir when inside it
    file_sha256: str
    status: Literal["reviewed", "not reviewable offline", "error"]
    rating: Rating
    reason: str                    # one line a reviewer can act on
    findings: list[Finding] = field(default_factory=list)     # reported (not silenced)
    silenced: list[Finding] = field(default_factory=list)     # silenced by the allowlist
    allowlist: dict[str, str] = field(default_factory=dict)
    unused_allows: list[str] = field(default_factory=list)    # allowed rules squawk did not report
    tables: list[TableFacts] = field(default_factory=list)
    live: list[str] = field(default_factory=list)             # conflicting locks held now
    findings_rating: Rating = "low"                           # without the live locks
    acknowledgement: Acknowledgement | None = None
    stale_acknowledgement: Acknowledgement | None = None      # for an earlier version of the file
    sql_lines: int = 0
    problem: str | None = None                                # why it is not reviewed / an error

    @property
    def live_high(self) -> bool:
        return self.rating == "high" and self.findings_rating != "high"

    @property
    def blocking(self) -> bool:
        """High and not cleared: unacknowledged findings, a live lock conflict, or an error."""
        if self.rating != "high":
            return False
        if self.status == "error" or self.live_high:
            return True
        return self.acknowledgement is None


@dataclass
class RiskReview:
    environment: str
    revisions: list[RevisionReview]
    server_major: int | None = None
    squawk_version: str | None = None
    squawk_seconds: float = 0.0    # squawk's own run time, all revisions
    render_seconds: float = 0.0    # offline rendering (cached renderings cost nothing)
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)

    @property
    def highest(self) -> Rating:
        return max((r.rating for r in self.revisions), key=RATINGS.index, default="low")

    @property
    def blocking(self) -> list[RevisionReview]:
        return [r for r in self.revisions if r.blocking]

    @property
    def ok(self) -> bool:
        return not self.errors and not self.blocking
