"""§7.3 incident documentation: a summary generated from the bot's own records.

What an escalation must carry (runbook §7.3), gathered from the state database, never typed:

- the environment, the revision ids (from -> target, and where the database ended up);
- the time of each step, from the events the run and the approvals recorded;
- the error messages and the relevant log lines (the last N lines of the run's log file, redacted);
- the steps already attempted (precheck, backup, migrate, retries, validation, rollback, restore),
  each with who approved it;
- the backup: location, time, size, checksum, verification level;
- the validation results and the §6.5 recommendation;
- who was escalated to, and when.

An incident is anchored on a run (migrate, rollback or restore): its window starts at the previous
run's end (at most a day before the run, so the precheck and the backup are in it) and ends where
the next migrate run starts. A rollback run belongs to the migrate run before it when that started
within a day; so does a restore when that migrate run failed or was interrupted (the restore is its
§6.5 recovery), otherwise a restore is an incident of its own (the backup it restores is its
backup). Without any run, the window is the last day of the environment.

`gather()` returns plain dataclasses; `render_markdown()` (files, the CLI, GitHub issues) and
`render_mrkdwn()` (Slack sections) render them with the Jinja2 templates in runbook/templates/.
Every missing piece (no backup, no log, nobody approved) renders as "none", never an error.

The modules, with no cycle among them:
    model   the dataclasses (Incident, Step, BackupFacts, Escalated, TimelineEntry) and the scrubber
    gather  which run an incident is about, its window, and everything gathered in it
    render  the Jinja2 templates (the escalation's too): Markdown and Slack mrkdwn
"""
from __future__ import annotations

from runbook.incident.gather import gather, latest_run, relevant_lines, subject_run
from runbook.incident.model import BackupFacts, Escalated, Incident, Step, TimelineEntry, UnknownRun
from runbook.incident.render import filename, render, render_markdown, render_mrkdwn, when

__all__ = ["BackupFacts", "Escalated", "Incident", "Step", "TimelineEntry", "UnknownRun", "filename", "gather",
           "latest_run", "relevant_lines", "render", "render_markdown", "render_mrkdwn", "subject_run", "when"]
