"""What a precheck and an approval request read of past rehearsals (issue 16), apart from
runbook.rehearse, which makes them: this part imports nothing heavy (no psycopg, no backup or
migrate), so a fresh `runbook-bot precheck` can tell whether its range was rehearsed without
loading the machinery that rehearses it."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

from runbook.revisions import AlembicProject, RevisionError
from runbook.units import human_size

KIND = "rehearse"


# ---------------------------------------------------------------------------
# Binding to the revision files


def file_hashes(revisions: Sequence[Any]) -> dict[str, str]:
    """revision -> sha256 of its file (editing a file voids a rehearsal of it)."""
    found = {}
    for rev in revisions:
        try:
            found[rev.revision] = hashlib.sha256(Path(rev.path).read_bytes()).hexdigest()
        except OSError:
            found[rev.revision] = "unreadable"
    return found


@dataclass(frozen=True)
class Match:
    """The latest rehearsal of a range, and whether it still stands."""

    run_id: str
    finished_at: datetime | None
    outcome: str
    report: dict[str, Any]
    voided_by: list[str]             # revision files changed since (their ids)

    @property
    def valid(self) -> bool:
        return not self.voided_by

    @property
    def passed(self) -> bool:
        return self.valid and self.outcome == "passed"


def range_to_rehearse(direction: str, current: Sequence[str], target: str) -> tuple[list[str], str] | None:
    """(start, end) of the rehearsal that matches a migrate or rollback of `current` -> `target`: an
    upgrade's own range; for a rollback, its target -> where it starts from (the way down of that
    rehearsal is the rollback: runbook.rehearse.rehearse(..., start=)). None when there is no one range
    to rehearse (a rollback from several heads)."""
    current = [str(c) for c in current]
    if direction != "downgrade":
        return current, target
    if len(current) != 1:
        return None
    return ([] if target == "base" else [target]), current[0]


def latest_for(store, name: str, project: AlembicProject, start: Sequence[str], end: Sequence[str] | str,
               *, limit: int = 50) -> Match | None:
    """The latest finished rehearsal of `name` from revision `start` to `end` (a rollback from B to A
    matches a rehearsal of A -> B: its way down is what the rollback does), or None. Voided when a
    revision file of the range changed since (sha256)."""
    from runbook.state.runs import FAILED, SUCCEEDED, RunStore

    if store is None:
        return None
    end_key = [end] if isinstance(end, str) else list(end)
    for run in RunStore(store).list(environment=name, states=(SUCCEEDED, FAILED), limit=limit, kinds=(KIND,)):
        report = run.result or {}
        if not _same_range(report.get("from") or [], report.get("to"), start, end_key):
            continue
        voided = _voided(project, report.get("files") or {})
        return Match(run.id, run.finished_at, str(report.get("outcome")), report, voided)
    return None


def _voided(project: AlembicProject, recorded: dict[str, str]) -> list[str]:
    voided = []
    for rev, digest in recorded.items():
        try:
            now = file_hashes([project.get(rev)])[rev]
        except RevisionError:
            now = None
        if now != digest:
            voided.append(rev)
    return voided


def _same_range(frm: Sequence[str], to: str | None, start: Sequence[str], end: Sequence[str]) -> bool:
    frm_key, to_key = sorted(frm), sorted([to] if to else [])
    return (frm_key == sorted(start) and to_key == sorted(end)) or (frm_key == sorted(end) and to_key == sorted(start))


def match_in_events(events: Sequence[Any], project: AlembicProject, start: Sequence[str],
                    end: Sequence[str] | str) -> Match | None:
    """latest_for over the rehearsal events (store.events(action="rehearse"), newest first): what the
    command line's precheck reads through its state sidecar."""
    end = [end] if isinstance(end, str) else list(end)
    for event in events:
        details = event.details or {}
        if event.outcome not in ("passed", "failed") or "files" not in details:
            continue
        if not _same_range(details.get("from") or [], details.get("to"), start, end):
            continue
        report = {"outcome": event.outcome, "from": details.get("from"), "to": details.get("to"),
                  "revisions": [], "lines": details.get("lines") or [], "backup_id": details.get("backup_id")}
        return Match(str(details.get("run_id") or event.run_id or ""), event.at, event.outcome, report,
                     _voided(project, details.get("files") or {}))
    return None


def match_line(match: Match | None) -> str:
    """What an approval request and the precheck say about it, one line."""
    if match is None:
        return "not rehearsed: run `rehearse` first"
    when = f" ({match.finished_at:%Y-%m-%d %H:%M} UTC)" if match.finished_at else ""
    if not match.valid:
        return (f"rehearsal {match.run_id[:8]}{when} is void: {', '.join(match.voided_by)} changed since; "
                "rehearse again")
    return f"rehearsal {match.run_id[:8]}{when} {match.outcome}: " + summary_of(match.report)


def summary_of(report: dict[str, Any]) -> str:
    """The revisions of a rehearsal's JSON, as in the text report but on one line."""
    parts = [revision_line_json(r) for r in report.get("revisions") or []] or list(report.get("lines") or [])
    if report.get("error") and report.get("outcome") != "passed":
        parts.append(str(report["error"]))
    return "; ".join(parts) if parts else str(report.get("error") or "")


# ---------------------------------------------------------------------------
# Text


def _seconds(value: float) -> str:
    return f"{value:.1f} s" if value >= 0.05 else f"{value * 1000:.0f} ms"


def held_for(seconds: float, *, at_least: bool = False) -> str:
    """How long a sampled lock was held: first to last sample that saw it, so a lock seen by one sample
    only has no measured length ("for 0 ms" would read as not held at all)."""
    if seconds <= 0:
        return "briefly (seen by one sample)"
    return ("for at least " if at_least else "for ") + _seconds(seconds)


def _signed_size(n: int) -> str:
    return ("+" if n >= 0 else "-") + human_size(abs(n))


def revision_line_json(r: dict[str, Any]) -> str:
    """One revision of the JSON report, as a reviewer reads it: "0002 add categories: 0.4 s, ACCESS
    EXCLUSIVE on expenses for 0.3 s, expenses rewritten, +40.0 kB, down ok"."""
    head = f"{r['revision']}" + (f" {r['message']}" if r.get("message") else "")
    if r.get("error"):
        return f"{head}: FAILED after {_seconds(r.get('seconds') or 0.0)}: {r['error']}"
    parts = [_seconds(r.get("seconds") or 0.0)]
    exclusive = [lock for lock in r.get("locks") or [] if lock["mode"] == "ACCESS EXCLUSIVE"]
    if exclusive:
        parts.append("ACCESS EXCLUSIVE on " + ", ".join(f"{lock['relation']} {held_for(lock['held_seconds'])}"
                                                        for lock in exclusive))
    elif r.get("locks"):
        lock = r["locks"][0]
        parts.append(f"{lock['mode']} on {lock['relation']} {held_for(lock['held_seconds'])}")
    rewrites = r.get("rewrites") or []
    if rewrites:
        parts.append(("table rewritten: " if len(rewrites) == 1 else "tables rewritten: ") + ", ".join(rewrites))
    if r.get("size_change_bytes"):
        parts.append(_signed_size(int(r["size_change_bytes"])))
    if r.get("downgrade_ok") is True:
        parts.append("down ok")
    elif r.get("downgrade_ok") is False:
        parts.append(f"down FAILED: {r.get('downgrade_error') or 'error'}")
    elif not r.get("reversible", True):
        parts.append(f"irreversible ({r.get('irreversible_reason') or 'no downgrade'})")
    return f"{head}: " + ", ".join(parts)


# ---------------------------------------------------------------------------
# A real run against its rehearsal: time per revision


@dataclass(frozen=True)
class TimedRevision:
    """One revision of a real run, with the time its rehearsal took for the same step (up for a
    migration, down for a rollback). None: the step did not run (the run stopped before), or the
    rehearsal has no time for it (it stopped before, or the way down was not tried)."""

    revision: str
    message: str
    seconds: float | None
    rehearsed_seconds: float | None


@dataclass(frozen=True)
class Comparison:
    """The rehearsal that matched a run's range when it started, and the times per revision."""

    run_id: str
    outcome: str
    revisions: list[TimedRevision]


def compare(result: Any, match: Match | None) -> Comparison | None:
    """`result` (a runbook.migrate.MigrationResult) against `match`, the rehearsal of its range read when
    it started; None without one that still stood then. Per revision only when the run went one
    revision a step (§3.2): a step over several revisions has no time of its own for each."""
    if match is None or not match.valid or not result.steps:     # nothing ran: nothing to compare
        return None
    down = result.direction == "downgrade"
    rehearsed = {r.get("revision"): r for r in match.report.get("revisions") or []}
    per_step = len(result.planned_steps) == len(result.revisions)
    timed = []
    for index, rev in enumerate(result.revisions):
        step = result.steps[index] if per_step and index < len(result.steps) else None
        seen = rehearsed.get(rev.revision) or {}
        then = seen.get("downgrade_seconds") if down else (seen.get("seconds") if seen.get("ok") else None)
        timed.append(TimedRevision(rev.revision, rev.message or "", None if step is None else step.seconds,
                                   None if then is None else float(then)))
    return Comparison(match.run_id, match.outcome, timed)


def comparison_to_json(comparison: Comparison | None) -> dict[str, Any] | None:
    """The `rehearsal` key of `migrate --json` / `rollback --json`."""
    if comparison is None:
        return None
    return {"run_id": comparison.run_id, "outcome": comparison.outcome,
            "revisions": [{"revision": t.revision, "message": t.message,
                           "seconds": None if t.seconds is None else round(t.seconds, 3),
                           "rehearsed_seconds": None if t.rehearsed_seconds is None else round(t.rehearsed_seconds, 3)}
                          for t in comparison.revisions]}


def timing_line(timed: dict[str, Any]) -> str:
    """One revision of comparison_to_json's list: "0002 add category budget: 0.41 s (rehearsed 0.38 s)"."""
    head = f"{timed['revision']}" + (f" {timed['message']}" if timed.get("message") else "")
    now = "not run" if timed.get("seconds") is None else f"{timed['seconds']:.2f} s"
    then = ("no rehearsed time" if timed.get("rehearsed_seconds") is None
            else f"rehearsed {timed['rehearsed_seconds']:.2f} s")
    return f"{head}: {now} ({then})"


def check_line(check: dict[str, Any]) -> str:
    """One risk check of a rehearsed revision (its JSON `risk_checks`): "CREATE INDEX without CONCURRENTLY
    on expenses: rated high, measured SHARE lock on expenses for at least 4.2 s: confirmed"."""
    verdict = f": {check['verdict']}" if check.get("verdict") else ""
    return f"{check['finding']}: rated {check['rated']}, measured {check['measured']}{verdict}"
