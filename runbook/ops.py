"""The operations layer for runs: migrate and rollback (runbook §2, §3, §6.1), as one function each
for asking (`propose`) and for running once approved (`run`). Slack (bot/migrations.py) and the CLI
(bot/cli/) call only these and render what they return: every guard of a run is decided here or
below, never in a surface.

The guards, in the order a run meets them:

* asking: the target resolves against the app's scripts, there is something to do, no revision on the
  way back is irreversible (the way back is then a restore), the promotion gate, and where
  `rehearsal.required`, a passed rehearsal of the same range with unchanged files (`propose`);
* running, under the run's operation lock (runbook/migrate/): the database is still at the approved
  revision, no pg_dump is connected, the no-go gate (runbook/gate.py) is open or overridden by
  someone allowed to (`authorise_override`), with a reason, recorded;
* the §2 backup that protects it (runbook/protection.py): one taken at the revision the database is
  at, after its last change, within the window, or a new one taken under the lock, the decision made
  with the revision read there; retention keeps it until a newer run has its own.

`validate` is §5 on demand with its §6.5 recommendation. Restores are an operation of runbook/backup/ (`plan_restore`, `restore`), which records its own run.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from runbook import backup as backups
from runbook import migrate, protection
from runbook.config import Environment, Settings
from runbook.dsn import password_of, redact
from runbook.gate import GateOverride
from runbook.revisions import AlembicProject

MAX_OVERRIDE_REASON = 300


class Refused(Exception):
    """An operation refused before anything changed; one line for whoever asked."""


class NothingToDo(Refused):
    """The database is at the target already (the CLI exits 0 for it)."""


class RunWatcher:
    """What an executing run reports to: the CLI prints, Slack posts (bot.live_run.LiveRun)."""

    def progress(self, progress: migrate.Progress) -> None: ...

    def blocker(self, report: migrate.BlockerReport) -> None: ...

    def finished(self, result: migrate.MigrationResult, backup: Any) -> None: ...

    def backup(self, phase: str, backup: Any = None, error: str | None = None, reason: str = "") -> None:
        """The §2 backup before the run: "fresh" (`backup` protects the run and is relied on; `reason`
        says why), "skipped" (`backup`: the latest verified one, or None), "started" (`reason`: why a
        new one is needed), then "verified" (`backup`) or "failed" (`error`; `backup` when it was
        catalogued)."""

    def backup_progress(self, progress: backups.Progress) -> None: ...


# ---------------------------------------------------------------------------
# Asking


def irreversible(proposal: migrate.Proposal) -> list[Any]:
    """The revisions a rollback would undo that cannot be undone (runbook.revisions.reversibility)."""
    return [r for r in proposal.revisions if not r.reversible] if proposal.direction == "downgrade" else []


def propose(name: str, env: Environment, direction: str, typed: str, command_text: str, *, store,
            project: AlembicProject | None = None, restore_hint: str = "`restore ID`",
            rehearse_hint: str = "`rehearse --to {target}`") -> migrate.Proposal:
    """What a migrate or rollback request asks approvers to approve, or Refused / NothingToDo (one line)
    when nobody should be asked at all. `restore_hint`: how the surface's users restore, for the
    refusal of an irreversible rollback; `rehearse_hint`: how they rehearse an upgrade to `{target}`, for
    the refusal of `rehearsal.required`."""
    proposal = migrate.propose(name, env, direction=direction, target=typed, project=project, store=store)
    bad = irreversible(proposal)
    if bad:
        first = bad[0]
        more = f" (and {len(bad) - 1} more irreversible)" if len(bad) > 1 else ""
        raise Refused(f"`{command_text}` refused: {first.revision} is irreversible ({first.irreversible_reason})"
                      f"{more}, so nobody is asked to approve it. Restore from a backup instead: {restore_hint}.")
    if proposal.refusal and not proposal.steps and proposal.target in (proposal.current or ["base"]):
        raise NothingToDo(proposal.refusal)
    if proposal.refusal:
        raise Refused(f"`{command_text}` refused: {proposal.refusal}")
    proposal = dataclasses.replace(proposal, rehearsal=rehearsal_for(store, name, env, proposal, project))
    if env.rehearsal.required and not (proposal.rehearsal is not None and proposal.rehearsal.passed):
        raise Refused(_rehearsal_required_line(name, proposal, command_text, rehearse_hint))
    return proposal


def _rehearsal_required_line(name: str, proposal: migrate.Proposal, command_text: str, rehearse_hint: str) -> str:
    """Why `rehearsal.required` refuses the request, and how to get the rehearsal it needs."""
    from runbook.rehearsal_record import match_line

    has = "no rehearsal of it" if proposal.rehearsal is None else match_line(proposal.rehearsal)
    head = (f"`{command_text}` refused: {name} requires a passed rehearsal of this range before anyone is asked "
            f"(rehearsal.required), and there is {has}.")
    if proposal.direction == "upgrade":
        return (f"{head} Rehearse it first, on a restored copy (the target is not touched): "
                f"{rehearse_hint.format(target=proposal.target)}, then ask again.")
    frm = ", ".join(proposal.current) or "base"
    return (f"{head} A rollback to {proposal.target} counts the rehearsal of {proposal.target} -> {frm} (its way "
            f"down is this rollback), made on a backup taken at {proposal.target}, as the migration's own "
            "rehearsal was; without one, restore from a backup instead.")


def rehearsal_for(store, name: str, env: Environment, proposal: migrate.Proposal,
                  project: AlembicProject | None = None) -> Any:
    """The latest rehearsal of the proposal's range (a runbook.rehearse.Match, voided when a revision file
    changed since), or None. A rollback's range matches the rehearsal of the same revisions going up: its
    way down is what the rollback does."""
    if store is None or not proposal.revisions:
        return None
    return rehearsal_of_range(store, name, env, proposal.current, proposal.target, project)


def rehearsal_of_range(store, name: str, env: Environment, current: Sequence[str], target: str,
                       project: AlembicProject | None = None) -> Any:
    """The latest rehearsal from `current` to `target` (either way), read now: an approval request shows it
    each time it is drawn, so a revision file edited after the request voids it there too."""
    from runbook import rehearse as rehearsals
    from runbook.precheck import project_of

    if store is None:
        return None
    end = [] if target == "base" else [target]
    return rehearsals.latest_for(store, name, project or project_of(env), list(current), end)


def protection_now(store, name: str, env: Environment, current: Sequence[str]) -> protection.Protection:
    """What protects a run starting now at `current` (what the approval request shows)."""
    return protection.protecting_backup(store, name, env, current)


# ---------------------------------------------------------------------------
# Who may override the gate


def authorise_override(settings: Settings, name: str, override: GateOverride | None,
                       members_of: Callable[[str], Sequence[str]] | None = None) -> None:
    """Refused unless `override` is None or comes, with a reason, from someone allowed to let a run
    through a closed no-go gate: the environment's `permissions.gate_override` (default its approvers;
    user groups expanded through `members_of`), decided by runbook.authz; the command line (`cli:<user>`)
    holds the configuration and the database credentials already, so it may."""
    from runbook import authz

    if override is None:
        return
    reason = " ".join(override.reason.split())
    if not reason:
        raise Refused("a gate override needs a reason: say why the run may go ahead now")
    if len(reason) > MAX_OVERRIDE_REASON:
        raise Refused(f"the override's reason is longer than {MAX_OVERRIDE_REASON} characters: shorten it")
    if not authz.allowed(settings, name, "gate_override", override.actor, members_of):
        raise Refused(authz.refusal_line(settings, name, "gate_override"))


# ---------------------------------------------------------------------------
# Running


def _pre_run_backup(store, name: str, env: Environment, actor: str, *, run_id: str, watcher: RunWatcher,
                    skip: str | None) -> Callable[[Any, list[str]], Any]:
    """migrate.run's `before(held, current)`: under the run's lock, with the revision read there, the
    backup that protects the run (runbook.protection), relied on, or else a new one taken now
    (reason "migrate"); either way recorded on the run, so retention keeps it. `skip`: why none may be
    taken (the CLI's --no-backup), recorded instead. A backup that fails stops the run before it changes
    anything."""
    secret = password_of(env.dsn)

    def record(outcome: str, summary: str, details: dict[str, Any]) -> None:
        store.record(actor=actor, action="backup", environment=name, outcome=outcome,
                     summary=redact(summary, secret), details=details, run_id=run_id)

    def before(held: Any, current: list[str]) -> Any:
        decided = protection.protecting_backup(store, name, env, current, exclude_run=run_id)
        if skip is not None:
            record("skipped", f"no backup before the run ({skip}); {decided.reason}",
                   {"skipped": skip, "latest_backup_id": getattr(decided.latest, "id", None),
                    "protecting_backup_id": getattr(decided.backup, "id", None)})
            watcher.backup("skipped", decided.latest, reason=decided.reason)
            return None
        if decided.relied_on:
            record("relied on", decided.reason, {"backup_id": decided.backup.id, "reason": "protects the run"})
            protection.remember(store, run_id, decided.backup)
            watcher.backup("fresh", decided.backup, reason=decided.reason)
            return decided.backup
        watcher.backup("started", reason=decided.reason)
        try:
            made = backups.backup(name, env, store, lock=held, reason="migrate", actor=actor,
                                  progress=watcher.backup_progress)
        except backups.BackupError as exc:
            failed = getattr(exc, "backup", None)
            watcher.backup("failed", failed, redact(str(exc), secret))
            record("failed", f"the backup before the run failed: {exc}",
                   {"backup_id": getattr(failed, "id", None), "reason": "migrate"})
            raise
        record(made.status, f"#{made.id} {made.name}: {made.status} before the run, level {made.level}",
               {"backup_id": made.id, "reason": "migrate", "kind": made.kind, "level": made.level,
                "size_bytes": made.size_bytes, "sha256": made.sha256, "location": made.location})
        protection.remember(store, run_id, made)
        watcher.backup("verified", made)
        return made

    return before


def run(settings: Settings, store, name: str, direction: str, *, target: str, expected_current: Sequence[str],
        actor: str, run_id: str, approval_id: str | None = None, watcher: RunWatcher | None = None,
        skip_backup: str | None = None, gate_override: GateOverride | None = None,
        members_of: Callable[[str], Sequence[str]] | None = None, project: AlembicProject | None = None,
        progress_every: float = 1.0) -> migrate.MigrationResult:
    """An approved migrate or rollback of `name`, under every guard (see the module). `result.backup` is
    the backup that protects it (relied on or taken), None when skipped. Refused (nothing changed) when
    the override is not allowed."""
    env = settings.environments[name]
    authorise_override(settings, name, gate_override, members_of)
    watcher = watcher or RunWatcher()
    latest = backups.latest_verified(store, name) if store is not None else None
    rehearsed = _rehearsal_at_start(store, name, env, expected_current, target, project)
    result = migrate.run(name, env, direction=direction, target=target, expected_current=expected_current,
                         actor=actor, store=store, approval_id=approval_id, run_id=run_id,
                         before=_pre_run_backup(store, name, env, actor, run_id=run_id, watcher=watcher,
                                                skip=skip_backup),
                         restore_from=latest, gate_override=gate_override,
                         on_progress=watcher.progress, on_blocker=watcher.blocker, project=project,
                         progress_every=progress_every)
    from runbook.rehearsal_record import compare

    result.rehearsal = compare(result, rehearsed)
    return result


def _rehearsal_at_start(store, name: str, env: Environment, current: Sequence[str], target: str,
                        project: AlembicProject | None) -> Any:
    """The rehearsal of the run's range as it stands when the run starts (its files unchanged), which the
    run's summary compares itself with; None when there is none or it cannot be read (the run does not
    depend on it)."""
    from runbook.revisions import RevisionError
    from runbook.state import StateError

    try:
        return rehearsal_of_range(store, name, env, current, target, project)
    except (RevisionError, StateError, OSError):
        return None


# ---------------------------------------------------------------------------
# Validating on demand (§5, §6.5)


@dataclass(frozen=True)
class Validation:
    """`validate`'s answer: the report, and when it failed, what to do (§6.5) with the backup it uses."""

    report: Any                       # runbook.validate.ValidationReport
    recommendation: Any = None        # runbook.rollback.Recommendation, fitted to `backup`
    backup: Any = None                # the latest verified full backup, or None


def validate(name: str, env: Environment, store, actor: str, *, project: AlembicProject | None = None,
             expect: str | None = None) -> Validation:
    """§5 against what the database should hold (runbook.validate.expected_revision: `expect`, else where
    the latest completed run left it), recorded as one `validate` event; a failure gets its §6.5
    recommendation, about the run the expectation follows. RevisionError for an unknown `expect`."""
    from runbook import rollback
    from runbook import validate as checks
    from runbook.precheck import project_of

    project = project or project_of(env)
    expectation = checks.expected_revision(store, name, project, explicit=expect)
    report = checks.validate(name, env, expected=expectation, project=project)
    outcome = "error" if report.error else ("pass" if report.passed else "fail")
    secret = password_of(env.dsn)
    store.record(actor=actor, action="validate", environment=name, outcome=outcome,
                 summary=redact(report.error or "; ".join(f"{c.name}: {c.detail}" for c in report.failed)[:2000],
                                secret),
                 details={"checks": {c.name: c.status for c in report.checks}, "expected": report.expected,
                          "expected_basis": report.expected_basis})
    if not report.failed or report.error:
        return Validation(report)
    latest = backups.latest_verified(store, name)
    # §6.5 about the run the expectation follows: a migration's own range, not whatever is newest
    start = expectation.run_from if expectation.run_kind == "migrate" else None
    rec = rollback.decide(project=project, start=start, current=report.current, validation=report,
                          backup_available=latest is not None)
    if rec.action == "table_restore" and latest is not None:
        from runbook.precheck import target_of

        with target_of(env).connect("validate-advice") as conn:
            rec = rollback.fit_to_backup(rec, latest, conn)
    else:
        rec = rollback.fit_to_backup(rec, latest)
    return Validation(report, rec, latest)



# ---------------------------------------------------------------------------
# Rehearsing (issue 16)


def rehearse(settings: Settings, store, name: str, *, target: str = "head", backup_id: Any = None,
             actor: str, on_phase: Callable[[str], None] | None = None,
             project: AlembicProject | None = None, start: Sequence[str] | None = None) -> Any:
    """The pending range of `name` up to `target` on a restored copy (runbook/rehearse.py): a
    runbook.rehearse.Rehearsal, never an exception for the target's or the copy's faults. Nobody approves
    it: it never writes the target, takes no operation lock on it, and its copy is always dropped. `start`:
    from that revision instead of where `name` is (a rollback's range, on a backup taken there)."""
    from runbook import rehearse as rehearsals

    return rehearsals.rehearse(name, settings.environments[name], store, target=target or "head",
                               backup_id=backup_id, actor=actor, settings=settings, on_phase=on_phase,
                               project=project, start=start)


__all__ = ["GateOverride", "MAX_OVERRIDE_REASON", "NothingToDo", "Refused", "RunWatcher", "Validation",
           "authorise_override", "irreversible", "propose", "protection_now", "rehearsal_for", "rehearsal_of_range",
           "rehearse", "run", "validate"]
