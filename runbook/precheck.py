"""§1 assembled into a report: health (1.1), Alembic status (1.2), the checklist (1.3), a verdict.

CONTRACT: PrecheckReport is what every surface renders (Slack blocks, CLI text, --json).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from runbook.activity import Activity
from runbook.revisions import AlembicState

Status = Literal["ok", "warn", "fail"]


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    section: str = "1.1"       # runbook section the check comes from
    automatic: bool = True     # False: a checklist item left for a human (status "warn")


@dataclass
class PrecheckReport:
    environment: str
    target: str                    # host/db label, never credentials
    started_at: datetime
    duration_seconds: float
    checks: list[Check]
    verdict: Literal["go", "no-go"]
    reasons: list[str]
    database_size_bytes: int | None = None
    server_version: str | None = None
    activity: Activity | None = None
    alembic: AlembicState | None = None
    sql_preview: str = ""
    errors: list[str] = field(default_factory=list)
