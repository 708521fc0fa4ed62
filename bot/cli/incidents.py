"""Issue 6 on the command line: `escalate` (§7.2), `incident` (§7.3), and what follows a failed run."""
from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from runbook.config import Settings

from bot.cli.common import EXIT_ERROR, EXIT_NO_GO, EXIT_OK, cli_actor, store_or_report


def _escalator(settings: Settings, store):
    """bot.escalate.Escalator for the command line: it posts to Slack when SLACK_BOT_TOKEN is set and
    slack.channel is configured (SLACK_API_URL as for the bot); otherwise it records and prints."""
    from bot.escalate import Escalator
    from bot.logs import known_secrets
    from bot.redaction import Redactor

    client = None
    token = os.environ.get("SLACK_BOT_TOKEN")
    if token and settings.slack is not None:
        from bot.app import make_client

        client = make_client(token, os.environ.get("SLACK_API_URL"))
    return Escalator(settings, store, client, redactor=Redactor(settings, extra_secrets=known_secrets(settings)))


def _report_lines(report) -> list[str]:
    """What an escalation or a summary post did, one line each (stderr)."""
    from bot.escalate import EscalationReport

    where = (f"posted in Slack ({report.channel}, ts {report.ts})" if report.ts else
             f"not posted to Slack ({report.slack_error})" if report.slack_error else
             "not posted to Slack (set SLACK_BOT_TOKEN and slack.channel for that)")
    if not isinstance(report, EscalationReport):
        return [f"incident summary of run {report.incident.run_id or '(none)'}: {where}"]
    e = report.escalation
    lines = [f"level {e.level} escalation ({e.config.name}){' (automatic)' if e.automatic else ''} on "
             f"{e.environment}" + (f" to {', '.join(e.notify)}" if e.notify else "") + f": {where}"]
    lines += [f"not configured: {m}" for m in e.missing]
    if report.issue is not None:
        lines.append(f"GitHub issue #{report.issue.number}: {report.issue.url}")
    elif report.github_error:
        lines.append(f"no GitHub issue: {report.github_error}")
    if report.hook is not None:
        lines.append(report.hook.line())
        lines += [f"  | {line}" for line in report.hook.output.splitlines()[-20:]]
    return lines


def after_failure(settings: Settings, store, react) -> None:
    """A failed run or restore: its summary (a file next to the run's log, and Slack when it can)
    and its automatic escalation. Reported on stderr; never changes the exit code."""
    from pathlib import Path

    from runbook import incident as incidents

    escalator = _escalator(settings, store)
    try:
        report = react(escalator)
    except Exception as exc:  # the failure itself is already reported; this must not hide it
        print(f"runbook-bot: the incident summary or escalation failed: "
              f"{escalator.redactor(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)}", file=sys.stderr)
        return
    if report is None:
        return
    for line in _report_lines(report):
        print(f"runbook-bot: {escalator.redactor(line)}", file=sys.stderr)
    found = getattr(report, "incident", None) or getattr(report.escalation, "incident", None)
    run = found.run if found is not None else None
    if run is not None and run.log_path and Path(run.log_path).parent.is_dir():
        path = Path(run.log_path).parent / incidents.filename(found)
        path.write_text(incidents.render_markdown(found, secrets=escalator.secrets), encoding="utf-8")
        print(f"runbook-bot: incident summary written to {path}; `runbook-bot incident {run.id}` prints it",
              file=sys.stderr)


def cmd_incident(settings: Settings, args) -> int:
    """`incident [RUN_ID] [--env NAME]`: §7.3 as Markdown on stdout."""
    from runbook import incident as incidents

    environment = settings.environment(args.env)[0] if args.env or len(settings.environments) == 1 else None
    store = store_or_report(settings)
    if store is None:
        return EXIT_ERROR
    escalator = _escalator(settings, store)
    try:
        if args.run_id is None and environment is None:
            latest = incidents.latest_run(store)
            if latest is None:
                raise incidents.UnknownRun("no run recorded yet: name an environment with --env")
            environment = latest.environment
        found = escalator.incident(run_id=args.run_id, environment=environment)
    except incidents.UnknownRun as exc:
        print(f"runbook-bot: {exc}", file=sys.stderr)
        return EXIT_ERROR
    store.record(actor=cli_actor(), action="incident", environment=found.environment, outcome="printed",
                 run_id=found.run_id)
    print(incidents.render_markdown(found, secrets=escalator.secrets), end="")
    return EXIT_OK


def cmd_escalate(settings: Settings, args) -> int:
    """`escalate [--env E] [--level N] [REASON]`: the escalation as Markdown on stdout, what was done on stderr."""
    name, _env = settings.environment(args.env)
    store = store_or_report(settings)
    if store is None:
        return EXIT_ERROR
    escalator = _escalator(settings, store)
    try:
        report = escalator.escalate(name, args.level, reason=" ".join(args.reason), actor=cli_actor())
    except ValueError as exc:
        print(f"runbook-bot: escalate refused: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print(escalator.markdown(report.escalation), end="")
    for line in _report_lines(report):
        print(f"runbook-bot: {escalator.redactor(line)}", file=sys.stderr)
    return EXIT_OK if report.ok else EXIT_NO_GO


__all__ = ["after_failure", "cmd_escalate", "cmd_incident"]
