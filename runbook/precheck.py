"""§1 assembled into a report: health (1.1), Alembic status (1.2), the checklist (1.3), a verdict.

PrecheckReport is what every surface renders (Slack blocks, CLI text, --json).
Nothing is marked done that was not checked: checklist items only a human can
confirm stay "warn" with automatic=False.
"""
from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

from runbook import activity as activity_checks
from runbook import review as risk_review
from runbook.activity import Activity
from runbook.config import Environment
from runbook.revisions import AlembicProject, AlembicState, RevisionError, preview_cache_dir  # noqa: F401
from runbook.target import Target, TargetError
from runbook.units import human_size, short_duration

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
    risk: risk_review.RiskReview | None = None     # issue 7: the pending revisions' risk review


# ---------------------------------------------------------------------------
# Assembly


# §1.1: size, connections and server facts in one round trip.
HEALTH_SQL = """
SELECT pg_database_size(current_database())                       AS size_bytes,
       current_setting('server_version')                           AS server_version,
       current_setting('max_connections')::int                     AS max_connections,
       (SELECT count(*) FROM pg_stat_activity
         WHERE backend_type = 'client backend')                    AS connections
"""

HUMAN_CHECKLIST = (
    ("reviewed", "All pending migrations reviewed and approved"),
    ("staging", "Migration tested in staging/local environment"),
    ("window", "Maintenance window scheduled (if applicable)"),
    ("team", "Team notified of upcoming migration"),
)


def target_of(env: Environment) -> Target:
    return Target(env.dsn, connect_timeout=env.connect_timeout_seconds)


def project_of(env: Environment) -> AlembicProject:
    return AlembicProject(env.app_dir, list(env.alembic), env.url_env, preview_cache_dir=preview_cache_dir(),
                          app_env=env.app_env)


def _free_bytes(directory: Path) -> int | None:
    probe = directory
    while not probe.exists():
        if probe.parent == probe:
            return None
        probe = probe.parent
    try:
        return shutil.disk_usage(probe).free
    except OSError:
        return None


_seconds = short_duration


def alembic_status(env: Environment, *, project: AlembicProject | None = None) -> AlembicState:
    """Current revision (from the database), heads and pending revisions; raises TargetError/RevisionError."""
    project = project or project_of(env)
    with target_of(env).connect("status") as conn:
        return project.state(conn)


def run_precheck(name: str, env: Environment, *, project: AlembicProject | None = None,
                 last_backup_at: datetime | Callable[[], datetime | None] | None = None,
                 acknowledgements: Sequence[risk_review.Acknowledgement]
                 | Callable[[], Sequence[risk_review.Acknowledgement]] = (),
                 rehearsal: Callable[[list[str], str], Any] | None = None) -> PrecheckReport:
    """Run §1 against one environment. Never raises for the target's faults: they become checks.

    `acknowledgements`: the risk acknowledgements recorded for this environment (or a callable
    returning them, asked only when a review runs, after squawk). `rehearsal(current, head)`: the latest
    rehearsal of the pending range (a runbook.rehearse.Match or None): a passed one, with its revision
    files unchanged, ticks §1.3 "Migration tested in staging/local environment"."""
    started = datetime.now(timezone.utc)
    clock = time.monotonic()
    target = target_of(env)
    project = project or project_of(env)
    checks: list[Check] = []
    errors: list[str] = []
    health = None
    snapshot = None
    state: AlembicState | None = None
    revision_error: str | None = None
    risk: risk_review.RiskReview | None = None
    risk_error: str | None = None

    render = None
    try:
        with target.connect("precheck") as conn:
            connected_ms = (time.monotonic() - clock) * 1000
            try:
                state = project.state(conn)
            except RevisionError as exc:
                revision_error = str(exc)
            if state is not None:
                project.remember_current(env.dsn, state.current)     # for the next fresh process's early start
            if state is not None and state.pending and state.problem is None:
                # The app's Alembic is the slowest part of §1 (it imports the app): started first, it
                # renders while the database is read; the review and the preview share this render.
                try:
                    render = project.start_sql_preview(env.dsn, state.current)
                except RevisionError:
                    pass                  # the preview below says why
            health = conn.execute(HEALTH_SQL).fetchone()
            snapshot = activity_checks.snapshot(
                conn,
                long_query_seconds=env.thresholds.long_query_seconds,
                idle_in_transaction_seconds=env.thresholds.idle_in_transaction_seconds,
            )
            if state is not None and state.pending and state.problem is None and env.review.enabled:
                try:
                    risk = risk_review.review(name, env, conn, project=project, revisions=state.pending,
                                              acknowledgements=acknowledgements)
                except risk_review.ReviewError as exc:
                    risk_error = str(exc)
        checks.append(Check("connectivity", "ok", f"connected to {target.label} in {connected_ms:.0f} ms "
                                                  f"(PostgreSQL {health[1]})"))
    except TargetError as exc:
        errors.append(str(exc))
        checks.append(Check("connectivity", "fail", str(exc)))

    if health is not None:
        size, version, max_conn, conns = health
        checks.append(Check("database size", "ok", human_size(size)))
        share = conns / max_conn if max_conn else 0
        checks.append(Check("connections", "warn" if share > 0.8 else "ok",
                            f"{snapshot.active_count} active, {conns} connected of max_connections {max_conn}"))
        checks.extend(_activity_checks(snapshot, env))
    else:
        for what in ("database size", "connections", "long-running queries", "locks"):
            checks.append(Check(what, "fail", "not checked: no connection to the database"))

    preview = ""
    if state is not None:
        checks.extend(_alembic_checks(state))
        if state.pending and state.problem is None:
            try:
                preview = render.result() if render is not None else project.sql_preview(env.dsn, state.current)
                checks.append(Check("SQL preview", "ok", "rendered offline for the pending range only", "1.2"))
            except RevisionError as exc:
                preview, check = _preview_around(project, env, state, risk, exc)
                if check.status == "fail":
                    errors.append(str(exc))
                checks.append(check)
        if state.pending and state.problem is None and env.review.enabled:
            checks.append(_risk_check(name, risk, risk_error))
    elif revision_error is not None:
        errors.append(revision_error)
        checks.append(Check("alembic scripts", "fail", revision_error, "1.2"))
    else:
        checks.append(Check("alembic status", "fail", "not checked: no connection to the database", "1.2"))

    # a callable is asked only now, so a caller can read the backup catalogue while the target answers
    rehearsed = None
    if rehearsal is not None and state is not None and state.pending and state.problem is None \
            and len(state.heads) == 1:
        rehearsed = rehearsal(list(state.current), state.heads[0])
    checks.extend(_checklist(env, health, snapshot, last_backup_at() if callable(last_backup_at) else last_backup_at,
                             rehearsed))
    verdict, reasons = _verdict(checks, state)
    return PrecheckReport(
        environment=name, target=target.label, started_at=started,
        duration_seconds=time.monotonic() - clock, checks=checks, verdict=verdict, reasons=reasons,
        database_size_bytes=health[0] if health else None, server_version=health[1] if health else None,
        activity=snapshot, alembic=state, sql_preview=preview, errors=errors, risk=risk,
    )


def _preview_around(project: AlembicProject, env: Environment, state: AlembicState,
                    risk: risk_review.RiskReview | None, exc: RevisionError) -> tuple[str, Check]:
    """The range's SQL could not be rendered offline. When the review found why (a revision that
    reads the database in upgrade(), which only a live run can do), that is a warning, not a
    no-go: the preview stops before that revision and says so. Otherwise it fails the precheck."""
    offline = [r.revision for r in (risk.revisions if risk is not None else []) if r.status == "not reviewable offline"]
    if not offline:
        return "", Check("SQL preview", "fail", f"could not render offline: {exc}", "1.2")
    pending = [r.revision for r in state.pending]
    before = pending.index(offline[0]) - 1 if offline[0] in pending else -1
    preview = ""
    if before >= 0:
        try:
            preview = project.sql_preview(env.dsn, state.current, pending[before])
        except RevisionError:
            preview = ""
    shown = f"the SQL up to {pending[before]} is shown; " if preview else ""
    return preview, Check("SQL preview", "warn",
                          f"{', '.join(offline)} cannot be rendered offline (upgrade() reads the database): "
                          f"{shown}review {'their' if len(offline) > 1 else 'its'} upgrade() by hand", "1.2")


def _risk_check(name: str, risk: risk_review.RiskReview | None, error: str | None) -> Check:
    """§1.2 "risk review": fail on a high rating not acknowledged (or live), warn on medium."""
    if risk is None:
        return Check("risk review", "fail", f"not reviewed: {error or 'no review'}", "1.2")
    blocking = risk.blocking
    if blocking:
        parts = []
        for r in blocking:
            if r.status == "error" or r.live_high:
                parts.append(f"{r.revision} HIGH: {r.reason}")
            else:
                stale = " (the acknowledgement on record is for an earlier version of the file)" \
                    if r.stale_acknowledgement else ""
                parts.append(f"{r.revision} HIGH: {r.reason}{stale}; once reviewed: "
                             f"`{risk_review.ack_hint(name, r.revision)}`")
        return Check("risk review", "fail", "; ".join(parts), "1.2")
    acked = [r for r in risk.revisions if r.rating == "high" and r.acknowledgement is not None]
    medium = [r for r in risk.revisions if r.rating == "medium"]
    notes = [f"{r.revision} HIGH, acknowledged by {r.acknowledgement.actor}: {r.acknowledgement.reason}"
             for r in acked if r.acknowledgement is not None]
    notes += [f"{r.revision} medium: {r.reason}" for r in medium]
    if notes:
        return Check("risk review", "warn", "; ".join(notes), "1.2")
    return Check("risk review", "ok", f"{len(risk.revisions)} revision(s) linted by squawk: all low", "1.2")


def _activity_checks(snapshot: activity_checks.Activity, env: Environment) -> list[Check]:
    t = env.thresholds
    out = []
    if snapshot.long_queries:
        worst = max(snapshot.long_queries, key=lambda s: s.seconds)
        out.append(Check("long-running queries", "fail",
                         f"{len(snapshot.long_queries)} running longer than {_seconds(t.long_query_seconds)} "
                         f"(longest: pid {worst.pid}, {_seconds(worst.seconds)})"))
    else:
        out.append(Check("long-running queries", "ok", f"none longer than {_seconds(t.long_query_seconds)}"))
    if snapshot.idle_in_transaction:
        worst = max(snapshot.idle_in_transaction, key=lambda s: s.seconds)
        out.append(Check("idle in transaction", "fail",
                         f"{len(snapshot.idle_in_transaction)} idle in a transaction longer than "
                         f"{_seconds(t.idle_in_transaction_seconds)} (pid {worst.pid}, {_seconds(worst.seconds)}): "
                         "their locks block DDL"))
    else:
        out.append(Check("idle in transaction", "ok",
                         f"none longer than {_seconds(t.idle_in_transaction_seconds)}"))
    if snapshot.lock_waits:
        roots = ", ".join(
            f"pid {root.pid}" + (f" (prepared {root.prepared_gid})" if root.prepared_gid else "")
            + f" blocks {len(root.queue)}" for root in snapshot.roots
        )
        out.append(Check("locks", "fail", f"{len(snapshot.lock_waits)} sessions waiting on locks; root blockers: "
                         f"{roots or 'unresolved'}"))
    else:
        out.append(Check("locks", "ok", "no session is waiting on a lock"))
    if snapshot.prepared:
        oldest = max(snapshot.prepared, key=lambda p: p.seconds)
        status = "fail" if oldest.seconds > t.idle_in_transaction_seconds else "warn"
        out.append(Check("prepared transactions", status,
                         f"{len(snapshot.prepared)} prepared transaction(s), oldest '{oldest.gid}' "
                         f"{_seconds(oldest.seconds)}: they hold locks until committed or rolled back"))
    else:
        out.append(Check("prepared transactions", "ok", "none"))
    return out


def _alembic_checks(state: AlembicState) -> list[Check]:
    if state.problem:
        return [Check("alembic status", "fail", state.problem, "1.2")]
    if not state.heads:
        return [Check("alembic heads", "fail", "no revisions found in the migration scripts", "1.2")]
    return [Check("alembic heads", "ok", f"single head {state.heads[0]}", "1.2"), _pending_check(state)]


def _pending_check(state: AlembicState) -> Check:
    if not state.pending:
        return Check("pending revisions", "ok", f"none: the database is at head {', '.join(state.heads)}", "1.2")
    irreversible = [rev.revision for rev in state.pending if not rev.reversible]
    detail = f"{len(state.pending)} to apply: " + ", ".join(rev.revision for rev in state.pending)
    if irreversible:
        return Check("pending revisions", "warn", detail + f"; {', '.join(irreversible)} cannot be downgraded "
                     "(the way back is a restore from backup)", "1.2")
    return Check("pending revisions", "ok", detail + "; all reversible", "1.2")


def _checklist(env: Environment, health, snapshot, last_backup_at: datetime | None,
               rehearsed: Any = None) -> list[Check]:
    items: list[Check] = []
    items.append(Check(HUMAN_CHECKLIST[0][1], "warn", "left for a human: confirm before approving", "1.3", False))
    if rehearsed is not None and rehearsed.passed:
        from runbook.rehearsal_record import match_line

        items.append(Check(HUMAN_CHECKLIST[1][1], "ok", match_line(rehearsed), "1.3"))
    else:
        hint = ""
        if rehearsed is not None:
            from runbook.rehearsal_record import match_line

            hint = f" ({match_line(rehearsed)})"
        items.append(Check(HUMAN_CHECKLIST[1][1], "warn", "left for a human: confirm before approving, or run "
                           f"`rehearse` on a restored copy{hint}", "1.3", False))
    if last_backup_at is None:
        items.append(Check("Backup completed successfully", "warn",
                           "no backup yet: take one before migrating (§2)", "1.3"))
    else:
        age = (datetime.now(timezone.utc) - last_backup_at).total_seconds()
        limit = env.approvals.require_backup_within_minutes * 60
        items.append(Check("Backup completed successfully", "ok" if age <= limit else "warn",
                           f"latest verified backup {_seconds(age)} ago"
                           + ("" if age <= limit else f", older than {env.approvals.require_backup_within_minutes} min"),
                           "1.3"))
    if snapshot is None:
        items.append(Check("No long-running queries or locks on target tables", "fail",
                           "not checked: no connection to the database", "1.3"))
    else:
        busy = len(snapshot.long_queries) + len(snapshot.lock_waits) + len(snapshot.idle_in_transaction)
        items.append(Check("No long-running queries or locks on target tables", "fail" if busy else "ok",
                           f"{busy} session(s) in the way (see above)" if busy else "checked: none", "1.3"))
    # URL storage: dumps are written and verified in the local staging directory before the upload
    local = Path(env.backups.staging_dir or tempfile.gettempdir()) if env.backups.is_url else Path(env.backups.dir)
    where = f"in the staging directory {local} (backups go to {env.backups.dir})" if env.backups.is_url \
        else "where backups go"
    free = _free_bytes(local)
    if health is None or free is None:
        items.append(Check("Sufficient disk space available", "warn",
                           "not checked: " + ("database size unknown" if health is None
                                              else f"cannot read free space at {local}"), "1.3"))
    else:
        size = health[0]
        status = "fail" if free < size else "warn" if free < 2 * size else "ok"
        items.append(Check("Sufficient disk space available", status,
                           f"{human_size(free)} free {where}, database is {human_size(size)}", "1.3"))
    items.append(Check(HUMAN_CHECKLIST[2][1], "warn", "left for a human", "1.3", False))
    items.append(Check(HUMAN_CHECKLIST[3][1], "warn", "left for a human", "1.3", False))
    return items


def _verdict(checks: list[Check], state: AlembicState | None) -> tuple[str, list[str]]:
    failed = [c for c in checks if c.status == "fail"]
    if failed:
        return "no-go", [f"{c.name}: {c.detail}" for c in failed]
    reasons = []
    if state is not None and not state.pending:
        reasons.append("nothing to migrate: already at head")
    reasons += [f"{c.name}: {c.detail}" for c in checks if c.automatic and (
        c.status == "warn" or (c.name == "pending revisions" and state is not None and state.pending))]
    human = sum(1 for c in checks if not c.automatic)
    reasons.append(f"{human} checklist items are left for a human to confirm")
    return "go", reasons


def report_to_json(report: PrecheckReport) -> dict:
    """The CLI's --json contract (README documents it)."""
    act = report.activity
    alembic = report.alembic
    return {
        "environment": report.environment,
        "target": report.target,
        "started_at": report.started_at.isoformat(),
        "duration_seconds": round(report.duration_seconds, 3),
        "verdict": report.verdict,
        "reasons": list(report.reasons),
        "current": list(alembic.current) if alembic else [],
        "heads": list(alembic.heads) if alembic else [],
        "pending": [
            {"revision": r.revision, "message": r.message, "reversible": r.reversible,
             "irreversible_reason": r.irreversible_reason}
            for r in (alembic.pending if alembic else [])
        ],
        "sql_preview": report.sql_preview,
        "checks": [
            {"name": c.name, "status": c.status, "detail": c.detail, "section": c.section,
             "automatic": c.automatic}
            for c in report.checks
        ],
        "database_size_bytes": report.database_size_bytes,
        "server_version": report.server_version,
        "active_connections": act.active_count if act else None,
        "long_queries": [
            {"pid": s.pid, "user": s.user, "application": s.application, "seconds": round(s.seconds, 1),
             "query": s.query} for s in (act.long_queries if act else [])
        ],
        "idle_in_transaction": [
            {"pid": s.pid, "user": s.user, "application": s.application, "seconds": round(s.seconds, 1),
             "query": s.query} for s in (act.idle_in_transaction if act else [])
        ],
        "lock_waits": [
            {"pid": w.pid, "user": w.user, "application": w.application, "blocked_by": list(w.blocked_by),
             "root_blocker": w.root_blocker, "seconds": round(w.seconds, 1), "query": w.query,
             "mode": w.mode, "relation": w.relation} for w in (act.lock_waits if act else [])
        ],
        "prepared_transactions": [
            {"gid": p.gid, "owner": p.owner, "seconds": round(p.seconds, 1)} for p in (act.prepared if act else [])
        ],
        "errors": list(report.errors),
        "risk": risk_review.review_to_json(report.risk),
    }
