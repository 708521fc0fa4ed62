"""§7.1–7.2: escalation levels and contacts, as data (`escalation.levels` in the configuration).

- level 1, self-service: the runbook and guideline links, the dashboards, and the runbook section
  that fits the current state, read from the latest run, restore and open alerts (`assess`);
- level 2, owner: the owner tagged with the §7.3 incident summary (runbook/incident/);
- level 3, emergency: the owner and @here, pause the application, preserve the logs, and the
  configured pause hook (`run_pause_hook`: an argument list, no shell, a timeout, the output
  captured and redacted; a failure is reported, never swallowed).

Levels with `github_issue` open an issue when `escalation.github` is configured (runbook/github.py).
Automatic escalation (`automatic_level`): a failed rollback or restore run -> 2, data loss found
by validation -> 3; an interrupted run -> none (its summary is posted; a human decides). Every
escalation, and what came of its pause hook and GitHub issue, is an event.

Engine only: what to say and whom to tag are decided here; bot/escalate.py renders and posts.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Sequence

from runbook import incident as incidents
from runbook.config import EscalationLevel, PauseHook, Settings
from runbook.state.models import utcnow
from runbook.state.runs import Run, RunStore
from runbook.subprocess_env import forbidden
from runbook.target import password_of, redact

ACTION = "escalate"
MAX_REASON = 300
# The hook's output kept for messages and events: the newest characters.
HOOK_OUTPUT_CHARS = 3000
HOOK_KILL_GRACE_SECONDS = 5.0

# Runbook headings, exactly as written (the anchors of a rendered runbook derive from them).
SECTIONS: dict[str, str] = {
    "1": "1. Pre-Migration Checklist",
    "2": "2. Pre-Migration Backup",
    "3": "3. Running the Migration",
    "4": "4. Monitoring Migration Progress",
    "4.1": "4.1 Real-Time Query Monitoring",
    "4.2": "4.2 Lock Monitoring",
    "5": "5. Post-Migration Validation",
    "6.1": "6.1 Alembic Downgrade (Preferred)",
    "6.2": "6.2 Full Database Restore",
    "6.3": "6.3 Table-Specific Restore",
    "6.5": "6.5 Rollback Decision Tree",
    "7": "7. Escalation & Contacts",
    "7.2": "7.2 Escalation Path",
    "7.3": "7.3 Incident Documentation",
}


def section_anchor(number: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens."""
    heading = SECTIONS.get(number, number).lower()
    return re.sub(r"[^\w\- ]", "", heading).replace(" ", "-")


def section_url(settings: Settings, number: str) -> str | None:
    """The configured runbook link, pointed at the section (when it has no anchor of its own)."""
    base = settings.escalation.links.get("runbook")
    if not base or not re.match(r"^https?://", base):
        return None
    return base if "#" in base else f"{base}#{section_anchor(number)}"


def section_title(number: str) -> str:
    return "§" + SECTIONS.get(number, number).replace(". ", " ", 1)


# ---------------------------------------------------------------------------
# Level 1: which section fits the current state


@dataclass(frozen=True)
class Situation:
    environment: str
    sections: tuple[str, ...]      # best first
    why: str                       # one line: the state, and where it was read
    run_id: str | None = None
    at: datetime | None = None


def assess(settings: Settings, store, environment: str, *, now: datetime | None = None) -> Situation:
    """The runbook section(s) for the environment's current state: the most recent of the latest
    run (if it did not succeed), the latest restore (if it failed) and the open alerts."""
    from runbook.state.approvals import ApprovalStore
    from runbook.watch import AlertBook

    now = now or utcnow()
    candidates: list[Situation] = []
    run = incidents.latest_run(store, environment)
    if run is not None and run.state != "succeeded":
        candidates.append(_run_situation(environment, run))
    restores = [r for r in ApprovalStore(store).list(environment=environment, limit=20) if r.kind == "restore"]
    if restores and restores[0].state == "failed":
        failed = restores[0]
        candidates.append(Situation(environment, ("6.2", "7"),
                                    f"the restore of backup #{failed.params.get('backup_id')} failed: "
                                    f"{failed.result_summary or 'no reason recorded'}", None, failed.updated_at))
    alerts = AlertBook(store).alerts(environment)
    if alerts:
        newest = max(alerts, key=lambda a: a.opened_at)
        locks = [a for a in alerts if a.kind in ("lock_wait", "prepared_transaction")]
        if locks:
            candidates.append(Situation(environment, ("4.2",), f"{len(locks)} open lock alert(s), the oldest since "
                                        f"{incidents.when(min(a.opened_at for a in locks))}", None, newest.opened_at))
        elif any(a.kind == "unreachable" for a in alerts):
            candidates.append(Situation(environment, ("1",), "the watch cannot reach the database", None,
                                        newest.opened_at))
        else:
            candidates.append(Situation(environment, ("4.1",), f"{len(alerts)} open alert(s) on long or idle "
                                        "transactions", None, newest.opened_at))
    if not candidates:
        return Situation(environment, ("1", "7.2"), "no failed run or restore and no open alert: "
                         "start from the pre-migration checklist", None, now)
    return max(candidates, key=lambda s: s.at or now)


def _run_situation(environment: str, run: Run) -> Situation:
    result = run.outcome
    validation = result.validation or {}
    error = result.error or run.summary or run.state
    at = run.finished_at or run.heartbeat_at
    label = f"{run.kind} run {run.id}"
    if validation.get("data_loss"):
        return Situation(environment, ("6.2", "7"), f"validation after {label} found data loss: {error}", run.id, at)
    if run.state == "running":
        return Situation(environment, ("4", "4.2"), f"{label} is running (step: {run.step})", run.id, at)
    if run.kind == "restore":
        # §6.2 or §6.3 as it was asked; a restore that failed or stopped changed nothing (one transaction)
        section = "6.3" if run.detail("mode") == "tables" else "6.2"
        what = f"restore run {run.id} of backup #{run.detail('backup_id', '?')}"
        said = "was interrupted" if run.state == "interrupted" else run.state
        return Situation(environment, (section, "7"), f"{what} {said}: {error}", run.id, at)
    if run.state == "interrupted":
        return Situation(environment, ("6.5",), f"{label} was interrupted: {error}", run.id, at)
    if run.kind == "rollback":
        return Situation(environment, ("6.2", "7"), f"{label} {run.state}: {error}", run.id, at)
    recommended = (result.recommendation or {}).get("section")
    sections = ("6.5",) + ((recommended,) if recommended and recommended != "6.5" else ())
    return Situation(environment, sections, f"{label} {result.outcome or run.state}: {error}", run.id, at)


# ---------------------------------------------------------------------------
# Automatic escalation


def automatic_level(run: Run) -> tuple[int, str] | None:
    """(level, reason) a finished run escalates to on its own, or None."""
    result = run.outcome
    validation = result.validation or {}
    if validation.get("data_loss"):
        lost = "; ".join(c.get("detail", "") for c in validation.get("checks") or []
                         if c.get("status") == "fail" and c.get("kind") == "data_loss")
        return 3, f"validation after {run.kind} run {run.id} found data loss: {lost or 'see the summary'}"
    if run.kind == "rollback" and run.state == "failed":
        return 2, f"rollback run {run.id} failed: {result.error or run.summary or 'see the summary'}"
    if run.kind == "restore" and run.state == "failed":
        backup_id = result.backup_id if result.backup_id is not None else run.detail("backup_id", "?")
        error = result.error or run.summary or "see the summary"
        return 2, f"the restore of backup #{backup_id} failed: {error}"
    return None


def already_escalated(store, run_id: str, level: int) -> bool:
    """An automatic escalation of this run to this level (or higher) is recorded already."""
    from sqlalchemy import select

    from runbook.state.models import EventRow

    with store.session() as session:
        rows = session.scalars(select(EventRow).where(EventRow.action == ACTION).where(EventRow.run_id == run_id))
        return any(bool((r.details or {}).get("automatic")) and int((r.details or {}).get("level") or 0) >= level
                   for r in rows)


# ---------------------------------------------------------------------------
# An escalation


@dataclass
class Escalation:
    environment: str
    level: int
    config: EscalationLevel
    reason: str
    actor: str
    automatic: bool
    situation: Situation
    notify: list[str]                  # Slack IDs (U…, W…, S…) and "here", in order, no duplicates
    owner: str | None                  # escalation.owner.slack
    owner_github: str | None
    missing: list[str]                 # whom the level should tag but the configuration does not name
    incident: incidents.Incident | None = None
    at: datetime = field(default_factory=utcnow)
    about_run: str | None = None       # the run it was raised about, when the caller named one

    @property
    def run_id(self) -> str | None:
        """The run its events are recorded against: the one named, else the incident's, else the
        one the current state was read from."""
        if self.about_run:
            return self.about_run
        if self.incident is not None and self.incident.run_id:
            return self.incident.run_id
        return self.situation.run_id

    @property
    def title(self) -> str:
        return f"Escalation level {self.level} ({self.config.name}): {self.environment}"


def secrets_of(settings: Settings, environ: dict[str, str] | None = None) -> tuple[str, ...]:
    """What must never leave: every database password, the state database's, and the GitHub token."""
    environ = dict(os.environ) if environ is None else environ
    found = [password_of(dsn) for env in settings.environments.values() for dsn in (env.dsn, env.rehearsal_dsn)]
    found.append(password_of(settings.state_url))
    if settings.escalation.github is not None:
        found.append(environ.get(settings.escalation.github.token_env, ""))
    return tuple(s for s in found if s and len(s) >= 3)


def check_reason(reason: str | None) -> str:
    """One line, at most MAX_REASON characters; ValueError (one line) otherwise."""
    text = " ".join((reason or "").split())
    if len(text) > MAX_REASON:
        raise ValueError(f"the reason is {len(text)} characters long; keep it to {MAX_REASON}")
    return text


def prepare(settings: Settings, store, environment: str, level: int, *, reason: str = "", actor: str,
            run_id: str | None = None, automatic: bool = False, secrets: Sequence[str] = (),
            now: datetime | None = None) -> Escalation:
    """Everything an escalation says, read from the configuration and the state database.
    ValueError (one line) for an unknown level or a reason that is too long."""
    if level not in settings.escalation.levels:
        raise ValueError(f"there is no escalation level {level}: use 1, 2 or 3")
    if environment not in settings.environments:
        raise ValueError(f"unknown environment '{environment}'")
    reason = redact(check_reason(reason), *secrets)
    config = settings.escalation.level(level)
    now = now or utcnow()
    situation = assess(settings, store, environment, now=now)
    owner = settings.escalation.owner.slack
    notify: list[str] = []
    missing: list[str] = []
    for target in config.notify:
        who = owner if target == "owner" else target
        if who is None:
            missing.append("escalation.owner.slack (nobody to tag as the owner)")
        elif who not in notify:
            notify.append(who)
    summary = None
    if config.summary:
        run = None
        if run_id is not None:
            run = RunStore(store).get(run_id)
        if run is None:
            run = incidents.subject_run(store, environment, now=now)
        summary = incidents.gather(store, environment=environment, run=run,
                                   log_lines=settings.escalation.incident.log_lines, secrets=secrets, now=now)
        # this escalation belongs in its own summary ("who was escalated to, and when")
        summary.escalations.append(incidents.Escalated(now, level, config.name, tuple(notify), actor, reason,
                                                       automatic))
    return Escalation(environment=environment, level=level, config=config, reason=reason, actor=actor,
                      automatic=automatic, situation=situation, notify=notify, owner=owner,
                      owner_github=settings.escalation.owner.github, missing=missing, incident=summary, at=now,
                      about_run=run_id)


def record(store, escalation: Escalation, **details: Any) -> Any:
    """The escalation's event (action "escalate"): who was tagged, why, and where it was posted."""
    facts = {"level": escalation.level, "level_name": escalation.config.name, "notified": list(escalation.notify),
             "reason": escalation.reason, "sections": list(escalation.situation.sections),
             "automatic": escalation.automatic, "missing": list(escalation.missing), **details}
    return store.record(actor=escalation.actor, action=ACTION, environment=escalation.environment,
                        outcome=f"level {escalation.level}", run_id=escalation.run_id,
                        summary=f"level {escalation.level} ({escalation.config.name})"
                                + (f" to {', '.join(escalation.notify)}" if escalation.notify else "")
                                + (f": {escalation.reason}" if escalation.reason else ""),
                        details=facts)


def render_markdown(settings: Settings, escalation: Escalation, *, secrets: Sequence[str] = ()) -> str:
    """The escalation as Markdown (the CLI, GitHub issue bodies), the incident summary included."""
    sections = [(section_title(n), section_url(settings, n)) for n in escalation.situation.sections]
    summary = incidents.render_markdown(escalation.incident, secrets=secrets) if escalation.incident else ""
    return incidents.render("escalation.md.j2", secrets, escalation=escalation, sections=sections,
                            links=settings.escalation.links, dashboards=settings.escalation.dashboards,
                            summary=summary, hook=settings.escalation.pause_hook)


# ---------------------------------------------------------------------------
# Level 3: the pause hook


@dataclass(frozen=True)
class HookResult:
    argv: tuple[str, ...]
    ok: bool
    exit_code: int | None
    timed_out: bool
    seconds: float
    output: str                      # stdout and stderr together, redacted, the newest part
    error: str | None = None         # one line when it did not succeed

    def line(self) -> str:
        shown = " ".join(self.argv)
        if self.ok:
            return f"the pause hook `{shown}` exited 0 after {self.seconds:.1f} s"
        return f"the pause hook `{shown}` FAILED: {self.error}"


# The bot's own credentials are none of the hook's business. Unlike the app's subprocesses, the hook
# is the operator's own command (kubectl, aws...) and keeps the rest of the environment (KUBECONFIG,
# cloud credentials), less every Slack, GitHub and RUNBOOK_BOT_* variable (runbook.subprocess_env).
BOT_SECRET_VARIABLES = ("SLACK_BOT_TOKEN", "SLACK_APP_TOKEN", "SLACK_SIGNING_SECRET")


def withheld_variables(settings: Settings) -> tuple[str, ...]:
    github = settings.escalation.github
    return BOT_SECRET_VARIABLES + ((github.token_env,) if github is not None else ())


def run_pause_hook(hook: PauseHook, *, environment: str, level: int, reason: str = "", run_id: str | None = None,
                   secrets: Sequence[str] = (), withhold: Sequence[str] = BOT_SECRET_VARIABLES) -> HookResult:
    """Run the hook: its argv as given (no shell), stdin closed, in a session of its own so a
    timeout kills everything it started. It learns the context from RUNBOOK_BOT_* variables set
    here; the variables named in `withhold` (the GitHub token's, whatever its name) and every
    inherited Slack, GitHub or RUNBOOK_BOT_* one are left out of its environment."""
    argv = tuple(hook.argv)
    env = {name: value for name, value in os.environ.items() if name not in withhold and not forbidden(name)}
    env.update(RUNBOOK_BOT_ENVIRONMENT=environment, RUNBOOK_BOT_LEVEL=str(level), RUNBOOK_BOT_REASON=reason,
               RUNBOOK_BOT_RUN_ID=run_id or "")
    started = time.monotonic()
    try:
        proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)
    except OSError as exc:
        return HookResult(argv, False, None, False, 0.0, "",
                          redact(f"cannot run {argv[0]!r}: {exc.strerror or type(exc).__name__}", *secrets))
    timed_out = False
    try:
        raw, _ = proc.communicate(timeout=hook.timeout_seconds)
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_group(proc)
        raw, _ = proc.communicate()
    seconds = time.monotonic() - started
    output = redact(raw.decode("utf-8", "replace"), *secrets)
    if len(output) > HOOK_OUTPUT_CHARS:
        output = "…" + output[-(HOOK_OUTPUT_CHARS - 1):]
    if timed_out:
        return HookResult(argv, False, proc.returncode, True, seconds, output,
                          f"no exit within {hook.timeout_seconds:g} s: stopped (its process group was killed)")
    if proc.returncode != 0:
        how = (f"killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exit status {proc.returncode}")
        return HookResult(argv, False, proc.returncode, False, seconds, output, how)
    return HookResult(argv, True, 0, False, seconds, output)


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the hook's process group, SIGKILL after a grace period."""
    for sig, wait in ((signal.SIGTERM, HOOK_KILL_GRACE_SECONDS), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        if wait is None:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def record_hook(store, escalation: Escalation, result: HookResult) -> Any:
    outcome = "ok" if result.ok else ("timeout" if result.timed_out else "failed")
    return store.record(actor=escalation.actor, action=f"{ACTION}.pause_hook", environment=escalation.environment,
                        outcome=outcome, summary=result.line(), run_id=escalation.run_id,
                        details={"level": escalation.level, "argv": list(result.argv), "exit_code": result.exit_code,
                                 "timed_out": result.timed_out, "seconds": round(result.seconds, 3),
                                 "output": result.output[-1000:], "error": result.error})


# ---------------------------------------------------------------------------
# GitHub


def open_github_issue(settings: Settings, store, escalation: Escalation, *, secrets: Sequence[str] = ()) -> Any:
    """Open the level's GitHub issue when it asks for one and `escalation.github` is configured.
    Returns runbook.github.Issue, or None when not asked for; raises runbook.github.GitHubError.
    Either way an event records it (the token is never in it)."""
    from runbook import github

    config = settings.escalation.github
    if config is None or not escalation.config.github_issue:
        return None
    title = f"[runbook-bot] {escalation.title}" + (f": {escalation.reason}" if escalation.reason else "")
    body = render_markdown(settings, escalation, secrets=secrets)
    cc = [escalation.owner_github] if escalation.owner_github else []
    try:
        # every mention in the title and body is made inert there; the owner is the one real one
        issue = github.open_issue(config, redact(title, *secrets), body, cc=cc, extra_secrets=secrets)
    except github.GitHubError as exc:
        store.record(actor=escalation.actor, action=f"{ACTION}.github", environment=escalation.environment,
                     outcome="error", summary=redact(str(exc), *secrets), run_id=escalation.run_id,
                     details={"level": escalation.level, "repo": config.repo})
        raise
    store.record(actor=escalation.actor, action=f"{ACTION}.github", environment=escalation.environment, outcome="ok",
                 summary=f"issue #{issue.number} opened in {config.repo}: {issue.url}", run_id=escalation.run_id,
                 details={"level": escalation.level, "repo": config.repo, "github_url": issue.url,
                          "number": issue.number})
    return issue


__all__ = ["ACTION", "Escalation", "HookResult", "MAX_REASON", "SECTIONS", "Situation", "already_escalated", "assess",
           "automatic_level", "check_reason", "open_github_issue", "prepare", "record", "record_hook",
           "render_markdown", "run_pause_hook", "section_anchor", "section_title", "section_url", "secrets_of",
           "withheld_variables"]
