"""Plain-text renderings for the terminal (the CLI's default output)."""
from __future__ import annotations

from typing import Any, Mapping

from runbook.precheck import PrecheckReport
from runbook.units import human_size
from runbook.revisions import AlembicState

MARK = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}


def _pending_lines(state: AlembicState) -> list[str]:
    lines = []
    for rev in state.pending:
        flag = "" if rev.reversible else f"  [irreversible: {rev.irreversible_reason or 'no downgrade'}]"
        lines.append(f"    {rev.revision}  {rev.message}{flag}")
    return lines or ["    none"]


def risk_text(risk: Mapping[str, Any] | None, *, environment: str, error: str | None = None) -> list[str]:
    """The risk review (runbook.review.review_to_json) for the terminal: lines to add under §1.2."""
    if error:
        return [f"  risk review: not reviewed: {error}"]
    if not risk or not risk.get("revisions"):
        return []
    out = [f"  risk review (squawk {risk.get('squawk_version') or '?'}, PostgreSQL {risk.get('server_major')}): "
           f"highest {risk.get('highest')}"]
    for rev in risk["revisions"]:
        out.append(f"    {str(rev.get('rating')).upper():6} {rev.get('revision')}: {rev.get('reason')}")
        for finding in rev.get("findings") or []:
            out.append(f"             {finding.get('rule')} ({rev.get('path')}, SQL line {finding.get('line')}): "
                       f"{finding.get('statement')}")
        for finding in rev.get("silenced") or []:
            out.append(f"             allowed {finding.get('rule')}: {finding.get('allowed')}")
        for live in rev.get("live") or []:
            out.append(f"             now: {live}")
        ack = rev.get("acknowledgement")
        if ack:
            out.append(f"             acknowledged by {ack.get('actor')} at {ack.get('at')}: {ack.get('reason')}")
        elif rev.get("blocking") and rev.get("status") == "reviewed" and not rev.get("live"):
            out.append(f"             once reviewed: runbook-bot ack-risk --env {environment} {rev.get('revision')} "
                       "--reason TEXT")
    return out



def precheck_text(report: PrecheckReport) -> str:
    verdict = "GO" if report.verdict == "go" else "NO-GO"
    out = [f"Precheck {report.environment} ({report.target}): {verdict}  [{report.duration_seconds:.2f}s]"]
    out += [f"  - {reason}" for reason in report.reasons]
    for section, title in (("1.1", "§1.1 Database health"), ("1.2", "§1.2 Alembic status"),
                           ("1.3", "§1.3 Pre-migration verification")):
        out.append("")
        out.append(title)
        for check in report.checks:
            if check.section == section:
                who = "" if check.automatic else " (for a human)"
                out.append(f"  [{MARK[check.status]}] {check.name}{who}: {check.detail}")
        if section == "1.1" and report.activity:
            for s in report.activity.long_queries:
                out.append(f"      long query pid {s.pid} {s.user}/{s.application} {s.seconds:.0f}s: {s.query}")
            for root in report.activity.roots:
                out.append(f"      root blocker pid {root.pid}"
                           + (f" ({root.session.state}, {root.session.application}): {root.session.query}"
                              if root.session else f" prepared transaction {root.prepared_gid}"))
                for n, wait in enumerate(root.queue):
                    out.append(f"        {'head' if n == 0 else f'#{n + 1} '} pid {wait.pid} waits {wait.seconds:.0f}s"
                               f" {wait.mode or ''} {wait.relation or ''}: {wait.query}")
        if section == "1.2" and report.alembic:
            out.append(f"  current: {', '.join(report.alembic.current) or '(unversioned)'}"
                       f"   heads: {', '.join(report.alembic.heads)}")
            out.append("  pending (oldest first):")
            out += _pending_lines(report.alembic)
            if getattr(report, "risk", None) is not None:
                from runbook.review import review_to_json

                out += risk_text(review_to_json(report.risk), environment=report.environment)
    if report.sql_preview:
        out += ["", "SQL preview (pending range only):", report.sql_preview.rstrip()]
    if report.database_size_bytes is not None:
        out += ["", f"Database size {human_size(report.database_size_bytes)}, PostgreSQL {report.server_version}"]
    return "\n".join(out)


def status_text(environment: str, state: AlembicState, last_event, last_run=None) -> str:
    out = [f"Status {environment}",
           f"  current: {', '.join(state.current) or '(unversioned)'}",
           f"  heads:   {', '.join(state.heads)}",
           "  pending (oldest first):"]
    out += _pending_lines(state)
    if last_run is not None:
        step = f" during '{last_run.step}'" if last_run.state in ("running", "interrupted") else ""
        out.append(f"  last run: {last_run.kind} {last_run.id} by {last_run.actor}, {last_run.state}{step} "
                   f"(started {last_run.started_at:%Y-%m-%d %H:%M:%S} UTC)")
    if last_event is None:
        out.append("  last event: none")
    else:
        out.append(f"  last event: {last_event.action} by {last_event.actor} at "
                   f"{last_event.at:%Y-%m-%d %H:%M:%S} UTC: {last_event.outcome}")
    return "\n".join(out)


def activity_text(environment: str, target: str, activity) -> str:
    """`runbook-bot activity`: §4's live picture, one session per line, queues under their roots."""
    def who(s) -> str:
        return f"{s.user or '?'}/{s.application or '?'}"

    out = [f"Activity {environment} ({target}): {activity.active_count} active, {len(activity.long_queries)} long, "
           f"{len(activity.idle_in_transaction)} idle in transaction, {len(activity.lock_waits)} waiting on locks, "
           f"{len(activity.prepared)} prepared"]
    for title, sessions in (("Long queries", activity.long_queries), ("Idle in transaction", activity.idle_in_transaction)):
        if sessions:
            out += ["", f"{title}:"]
            out += [f"  pid {s.pid} {who(s)} {s.seconds:.0f}s: {s.query}" for s in sessions]
    if activity.roots:
        out += ["", "Blocking:"]
        for root in activity.roots:
            if root.session is not None:
                out.append(f"  root pid {root.pid} {who(root.session)} {root.session.state} "
                           f"{root.session.seconds:.0f}s: {root.session.query}")
            else:
                out.append(f"  root {'prepared transaction ' + str(root.prepared_gid) if root.pid == 0 else f'pid {root.pid}'}")
            for n, wait in enumerate(root.queue):
                out.append(f"    {'head' if n == 0 else f'#{n + 1} '} pid {wait.pid} {who(wait)} waits {wait.seconds:.0f}s"
                           f" {wait.mode or ''} {wait.relation or ''}: {wait.query}")
    if activity.prepared:
        out += ["", "Prepared transactions:"]
        out += [f"  {p.gid} owner {p.owner} {p.seconds:.0f}s" for p in activity.prepared]
    if activity.notes:
        out += ["", *[f"note: {n}" for n in activity.notes]]
    if len(out) == 1:
        out.append("Nothing over the thresholds.")
    return "\n".join(out)


# -- issue 4: migrate / rollback / validate ---------------------------------------------------

VALIDATION_MARK = {"pass": "ok  ", "fail": "FAIL", "skip": "skip"}


def blocker_text(blocker) -> str:
    """One lock-timeout report: who kept the migrator waiting, and what happens next."""
    if not blocker.observed:
        who = "its blocker was not seen (the wait ended between two looks)"
    elif blocker.root_pid == 0:
        who = f"root blocker: prepared transaction {blocker.prepared_gid}"
    else:
        xact = f", transaction open {blocker.xact_seconds:.0f}s" if blocker.xact_seconds is not None else ""
        who = (f"root blocker: pid {blocker.root_pid} {blocker.user or '?'}/{blocker.application or '?'} "
               f"({blocker.state or '?'}{xact}): {blocker.query}")
    lock = f"{blocker.lock_mode or 'a lock'} on {blocker.relation}" if blocker.relation else (blocker.lock_mode or "a lock")
    then = (f"retrying in {blocker.retry_in_seconds:.1f}s" if blocker.retry_in_seconds is not None
            else "no retries left")
    return f"lock timeout (attempt {blocker.attempt}) waiting for {lock}; {who}; {then}"


def validation_text(report) -> str:
    if report.error:
        return f"Validation {report.environment} ({report.target}): ERROR\n  {report.error}"
    verdict = "PASS" if report.passed else "FAIL"
    out = [f"Validation {report.environment} ({report.target}): {verdict}  [{report.duration_seconds:.2f}s]"]
    for check in report.checks:
        detail = check.detail.replace("\n", "\n        ")
        out.append(f"  [{VALIDATION_MARK[check.status]}] §{check.section} {check.name}: {detail}")
    return "\n".join(out)


def recommendation_text(rec) -> str:
    out = [f"Recommended: {rec.headline}"]
    out += [f"  - {step.question} {step.answer.upper()}: {step.evidence}" for step in rec.walk]
    if rec.action != "escalate":
        out.append("  - If that does not bring the service back: escalate (§7).")
    return "\n".join(out)


def proposal_text(proposal, protection) -> str:
    """What `migrate` / `rollback` without --yes prints: the plan approvers would read in Slack."""
    downgrade = proposal.direction == "downgrade"
    frm = ", ".join(proposal.current) or "base"
    out = [f"{'Rollback' if downgrade else 'Migration'} of {proposal.environment}: {frm} -> {proposal.target}"
           f" in {len(proposal.steps)} alembic call(s)",
           "  revisions undone (newest first):" if downgrade else "  revisions applied (in order):"]
    for rev in proposal.revisions:
        flag = "" if rev.reversible else f"  [irreversible: {rev.irreversible_reason or 'no downgrade'}]"
        out.append(f"    {rev.revision}  {rev.message}{flag}")
    if proposal.touched_tables:
        out.append(f"  tables touched: {', '.join(proposal.touched_tables)}")
    out.append(f"  backup: {protection.reason}")
    label = "downgrade SQL (the downgrade() of these revisions)" if downgrade else "SQL (these revisions only)"
    out += ["", f"{label}:", proposal.sql_preview.rstrip() or "  (none rendered)"]
    return "\n".join(out)


def migration_text(result) -> str:
    frm = ", ".join(result.from_revisions) or "base"
    to = ", ".join(result.to_revisions) or "base"
    verb = "Migration" if result.direction == "upgrade" else "Rollback"
    out = [f"{verb} {result.environment}: {result.outcome.upper()}  {frm} -> {to} (target {result.target})"
           f"  [{result.duration_seconds:.1f}s, {result.attempts} attempt(s), run {result.run_id}]"]
    if result.error:
        out.append(f"  {result.error}")
    if getattr(result, "gate_overridden", False) and result.gate is not None:
        out.append(f"  gate OVERRIDDEN (recorded): {result.gate.summary()}")
    for step in result.steps:
        mark = "ok  " if step.ok else "FAIL"
        retried = f", {step.attempts} attempts" if step.attempts > 1 else ""
        out.append(f"  [{mark}] {result.direction} {step.target} ({step.seconds:.1f}s{retried})")
    for blocker in result.blockers:
        out.append("  " + blocker_text(blocker))
    rehearsed = getattr(result, "rehearsal", None)
    if rehearsed is not None:
        from runbook.rehearsal_record import comparison_to_json, timing_line

        shown = comparison_to_json(rehearsed)
        out.append(f"  against its rehearsal (run {shown['run_id'][:8]}, {shown['outcome']}):")
        out += [f"    {timing_line(t)}" for t in shown["revisions"]]
    if result.validation is not None:
        out += ["", validation_text(result.validation)]
    if result.recommendation is not None:
        out += ["", recommendation_text(result.recommendation)]
    if result.log_path:
        out += ["", f"Full log: {result.log_path}"]
        if not result.ok and result.log_tail:
            out += ["Last lines:", *[f"  {line}" for line in result.log_tail.splitlines()[-15:]]]
    return "\n".join(out)


# -- backups (§2) and restores (§6.2–6.3) ---------------------------------------------------------

def _table(name: str) -> str:
    return name[len("public."):] if name.startswith("public.") else name


def backup_text(backup) -> str:
    """One backup: verified (level, size, sha256, location, rows) or failed (why)."""
    head = (f"Backup #{backup.id} {backup.environment} ({backup.kind}, {backup.format}): "
            f"{backup.status.upper()}")
    if backup.status != "verified":
        return "\n".join([head, f"  {backup.error or 'no reason recorded'}",
                          "  Nothing was kept; this backup is never offered for restore."])
    out = [head + f"  [{backup.duration_seconds or 0:.2f}s]",
           f"  verified to: {backup.level}",
           f"  location:    {backup.location}",
           f"  size:        {human_size(backup.size_bytes)}",
           f"  sha256:      {backup.sha256}",
           f"  revision:    {', '.join(backup.revision) if backup.revision else 'unknown'}",
           f"  PostgreSQL:  server {backup.server_version}, pg_dump {backup.tool_version}"]
    if backup.row_counts:
        out.append("  rows at dump time:")
        out += [f"    {_table(t)}: {n}" for t, n in backup.row_counts.items()]
    expired = backup.details.get("expired") or []
    if expired:
        out.append(f"  retention removed: {', '.join(f'#{i}' for i in expired)}")
    for kept, why in (backup.details.get("retention_kept") or {}).items():
        out.append(f"  retention kept #{kept}: {why}")
    return "\n".join(out)


def backups_text(environment: str, backups) -> str:
    """The catalogue, newest first."""
    if not backups:
        return f"Backups {environment}: none yet (take one with `runbook-bot backup`)"
    out = [f"Backups {environment} (newest first; only verified ones can be restored)"]
    for b in backups:
        when = (b.finished_at or b.started_at).strftime("%Y-%m-%d %H:%M:%S")
        kind = b.kind + (f" {','.join(_table(t) for t in b.tables)}" if b.kind == "tables" else "")
        kind += " (safety)" if b.reason == "safety" else ""
        if b.status == "verified":
            tail = f"{human_size(b.size_bytes)}, {b.level}, rev {','.join(b.revision) if b.revision else '?'}"
        elif b.status == "failed":
            tail = f"failed: {b.error}"
        else:
            tail = b.status
        out.append(f"  #{b.id:<4} {when} UTC  {b.status:<8} {kind:<16} {b.name}  {tail}")
    return "\n".join(out)


def _rows(n: int | None) -> str:
    return "no table" if n is None else f"{n:,} row{'s' if n != 1 else ''}"


def restore_plan_text(plan) -> str:
    """What a restore would do, with the facts its Slack approval request shows
    (bot.blocks.restore_request_blocks over the same runbook.backup.RestorePlan): each table
    replaced, created or dropped with its rows now and in the backup, the backup, the revision
    guard, what a full restore drops besides tables, and anything that makes it refuse."""
    backup = plan.backup
    what = "the whole database" if plan.mode == "full" else f"tables {', '.join(_table(t) for t in plan.tables)}"
    taken = backup.finished_at or backup.started_at
    out = [f"Restore plan {plan.environment} ({plan.target}): {what} from backup #{backup.id}",
           "", f"What will be replaced ({'full restore' if plan.mode == 'full' else 'chosen tables'}):"]
    verb = {"replace": "replaced", "create": "created", "drop": "DROPPED (not in the backup)"}
    for change in plan.changes:
        out.append(f"  {_table(change.table)}: {_rows(change.rows_now)} now -> {_rows(change.rows_in_backup)} in the backup: "
                   f"{verb.get(change.action, change.action)}")
    if not plan.changes:
        out.append("  no tables")
    out += ["",
            f"Backup #{backup.id} {backup.name}: {backup.kind}, {human_size(backup.size_bytes)}, taken "
            + (f"{taken:%Y-%m-%d %H:%M:%S} UTC" if taken else "at an unknown time"),
            f"  verified to level {backup.level}, sha256 {(backup.sha256 or '?')[:16]}…, taken at revision "
            f"{', '.join(plan.backup_revision) if plan.backup_revision else 'unknown'}",
            f"Target {plan.target} is at revision {', '.join(plan.current_revision) or 'none'}: the restore stops "
            "if that changes before it runs.",
            "  A safety backup of the current state is taken first, and the restore applies in one transaction: "
            "completely or not at all."]
    if plan.warnings:
        out += ["", "Warnings:", *[f"  ! {w}" for w in plan.warnings]]
    if plan.blockers:
        out += ["", "Refused (nothing would be restored):", *[f"  x {b}" for b in plan.blockers]]
    return "\n".join(out)
