"""Block Kit renderers of issue 4's Slack half: the migrate / rollback approval request, the live
monitor of a run (§4), lock-timeout reports, the §5 validation report, the §6.5 recommendation
with its one button, and interrupted runs (migrate, rollback and restore runs: the request closed in
place, the live monitor's final word, the notice of runs found interrupted).

Pure like bot/render/ (dataclasses and dicts in, `Message` or blocks out), and built from
bot/render/core.py's helpers: untrusted text through `escape()`/`code()`, mentions only through its
helpers, every message through `validate()`. Kept in a module of its own so the renderers of one
feature stay together; the session, lock and root lines of the §4 picture are bot/render/activity.py's,
shared with `/migrate activity` and the watch.
"""
from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Mapping, Sequence

from bot.render.activity import _lock_line, _root_line, _session_line
from bot.render.core import (
    titled_section,
    MAX_BLOCKS,
    MAX_CONTEXT_TEXT,
    MAX_SECTION_TEXT,
    SQL_INLINE_LIMIT,
    FileUpload,
    Message,
    _who,
    actions,
    bounded_lines,
    button,
    code,
    code_block,
    context,
    divider,
    duration,
    escape,
    header,
    mention,
    one_line,
    section,
    size,
    slack_time,
    truncate,
    validate,
)
from bot.render.restore import restore_result_blocks
from bot.render.status import _revs

# Action ids of the buttons this feature adds; bot/app.py routes every `migrate_*` one to bot/migrations.py.
ACTION_BACKUP_FIRST = "migrate_backup_first"
ACTION_RECOMMENDED = "migrate_recommended"
ACTION_REHEARSE_FIRST = "migrate_rehearse_first"
ACTION_PATTERN = re.compile(r"^migrate_")

VERBS = {"upgrade": "Migration", "downgrade": "Rollback"}
CHECK_MARK = {"pass": ":white_check_mark:", "fail": ":x:", "skip": ":heavy_minus_sign:"}
LEVELS = {"none": "not verified", "toc": "TOC read", "full": "full read", "restore": "restored into a scratch database"}
# How many sessions of each kind the live monitor lists; the rest is counted.
MONITOR_ROWS = 8


def _rev_text(revisions: Sequence[str]) -> str:
    return _revs(list(revisions)) if revisions else "`base`"


def _target_text(target: str) -> str:
    return "`base`" if target == "base" else code(target, 60)


# --------------------------------------------------------------------------
# the approval request

def migration_summary(params: Mapping[str, Any], environment: str) -> str:
    """One line: the text fallback, the confirm dialog, the audit event."""
    steps = params.get("revisions") or []
    current = ", ".join(params.get("current") or []) or "base"
    n = len(steps)
    if params.get("direction") == "downgrade":
        return (f"Roll back {environment} from {current} to {params.get('target')} "
                f"(undoes {n} revision{'s' if n != 1 else ''})")
    return f"Migrate {environment} from {current} to {params.get('target')} ({n} revision{'s' if n != 1 else ''})"


def _revision_line(rev: Mapping[str, Any]) -> str:
    message = escape(one_line(rev.get("message"), 120)) if rev.get("message") else "_(no message)_"
    if rev.get("reversible"):
        tail = "reversible"
    else:
        reason = rev.get("irreversible_reason")
        tail = ":rotating_light: *IRREVERSIBLE*" + (f" ({escape(one_line(reason, 160))})" if reason else "")
    return f"• {code(rev.get('revision'), 60)} {message} — {tail}"


def backup_line(backup: Any) -> str:
    """A catalogue entry (runbook.backup.Backup) in one line: number, time, level, size."""
    finished = backup.finished_at or backup.started_at
    return (f"#{backup.id} {code(backup.name, 80)} · {slack_time(finished)} · "
            f"verified: {escape(LEVELS.get(backup.level, backup.level))} · {size(backup.size_bytes)}")


def migration_request_blocks(params: Mapping[str, Any], *, request_id: str, pending: bool, protection: Any,
                             risk: Sequence[dict[str, Any]] = (), rehearsal: Any = None,
                             environment: str = "", finished: bool = False) -> list[dict[str, Any]]:
    """What approvers approve: current -> target, the revisions (with reversibility), the SQL preview
    (inline when short, else a file in the request's thread), the tables touched, the backup that
    stands behind it, and the guards the run keeps. `backup`: the latest verified full backup or None;
    without a fresh one (and while pending) a "Back up first" button. A `finished` request (done,
    failed, rejected...) keeps what was asked for, not what the run would do: its result says that."""
    downgrade = params.get("direction") == "downgrade"
    revisions = params.get("revisions") or []
    steps = params.get("steps") or []
    head = (f"*{'Now at' if not (downgrade or finished) else 'From'}* {_rev_text(params.get('current') or [])} → "
            f"*{'target' if not downgrade else 'back to'}* {_target_text(str(params.get('target')))}"
            f" · {len(steps)} alembic call{'s' if len(steps) != 1 else ''}"
            + (" (one revision at a time, §3.2)" if len(steps) > 1 else ""))
    title = "*Revisions undone* (newest first)" if downgrade else "*Revisions applied* (in order)"
    lines = [_revision_line(r) for r in revisions[:200]]
    out = [section(head), titled_section(title, lines, total=len(revisions))]
    tables = params.get("touched_tables") or []
    if tables:
        out.append(section(truncate("*Tables touched* " + ", ".join(code(t, 60) for t in tables[:30])
                                    + (f" … and {len(tables) - 30} more" if len(tables) > 30 else ""),
                                    MAX_SECTION_TEXT)))
    sql = str(params.get("sql_preview") or "")
    label = "*Downgrade SQL preview*" if downgrade else "*SQL preview*"
    what = "the downgrade() of these revisions" if downgrade else "these revisions only"
    unrendered = sql.lstrip().startswith("-- the ") and "could not be rendered offline" in sql[:300]
    if not sql.strip() or unrendered:
        why = escape(one_line(sql.strip().lstrip("- "), 300)) if unrendered else \
            "the revisions could not be rendered offline"
        out.append(section(truncate(f"{label}: none ({why}); read {what} in the revision files", MAX_SECTION_TEXT)))
    elif sql_inline(sql):
        out.append(section(f"{label} ({what})\n{code_block(sql.strip())}"))
    else:
        out.append(section(f"{label}: {sql.count(chr(10)) + 1} lines, attached as a file in this "
                           "message's thread :page_facing_up:"))
    out.extend(list(risk))
    out.extend(rehearsal_blocks(rehearsal, environment, params, request_id=request_id,
                                pending=pending and not finished, finished=finished))
    if finished:        # the backup taken (or not) and the run's guards are in its result, in the past
        return out
    if protection.relied_on:
        out.append(section(truncate(f":floppy_disk: *Protected by* {backup_line(protection.backup)}: "
                                    f"{escape(protection.reason)}", MAX_SECTION_TEXT)))
    else:
        out.append(section(truncate(
            f":warning: *No backup protects this run yet*: {escape(protection.reason)}. Approving takes one "
            "first, under the run's own lock; or take it now.", MAX_SECTION_TEXT)))
        if pending:
            out.append(actions(button("Back up first", ACTION_BACKUP_FIRST, request_id),
                               block_id="migrate_backup_first"))
    current = _rev_text(params.get("current") or [])
    out.append(context(truncate(
        f"The run stops, changing nothing, if the database is no longer at {current} when it starts, or if "
        "the no-go gate is closed then (lock waits, long queries or idle transactions on its tables, an "
        "unacknowledged HIGH risk) · one operation at a time (advisory lock) · lock timeouts retried with backoff · "
        "validated after (§5) · live progress in this thread", MAX_CONTEXT_TEXT)))
    return out


def rehearsal_blocks(match: Any, environment: str, params: Mapping[str, Any], *, request_id: str | None = None,
                     pending: bool = False, finished: bool = False) -> list[dict[str, Any]]:
    """The latest rehearsal of the request's range (runbook.rehearse.Match), one revision a line with the
    risk review's findings against what was measured, or why there is none that counts, with a "Rehearse
    first" button while the request is pending (issue 16); a `finished` request only says so."""
    from runbook.rehearsal_record import check_line, match_line, range_to_rehearse, revision_line_json

    downgrade = params.get("direction") == "downgrade"
    if match is None or not match.valid:
        rangeof = range_to_rehearse(str(params.get("direction")), params.get("current") or [],
                                    str(params.get("target")))
        button_here = pending and request_id is not None and rangeof is not None
        if downgrade:
            frm = _rev_text(rangeof[0]) if rangeof else _rev_text([str(params.get("target"))])
            how = (f"a rollback counts the rehearsal of {frm} → {_rev_text(params.get('current') or [])} "
                   f"(its way down is this rollback), on a copy of a verified full backup taken at {frm}")
            ask = "*Rehearse first* runs it" if button_here else "none can run from here"
        else:
            how = "no rehearsal of this range on a restored copy"
            ask = ("*Rehearse first* (or " if button_here else "") + \
                f"`/migrate rehearse {escape(environment)} {escape(one_line(str(params.get('target')), 60))}`" + \
                (") runs it" if button_here else " runs it")
        if finished:
            text = (":grey_question: *Not rehearsed*: " + how if match is None
                    else f":warning: *Rehearsal void*: {escape(match_line(match))}")
        elif match is None:
            text = f":grey_question: *Not rehearsed*: {how}; {ask} (the target is not touched)"
        else:
            text = f":warning: *Rehearsal void*: {escape(match_line(match))}; {ask} again"
        out = [section(truncate(text, MAX_SECTION_TEXT))]
        if button_here:
            out.append(actions(button("Rehearse first", ACTION_REHEARSE_FIRST, request_id),
                               block_id="migrate_rehearse_first"))
        return out
    icon = ":test_tube:" if match.passed else ":x:"
    when = f" {match.finished_at:%Y-%m-%d %H:%M} UTC" if match.finished_at else ""
    report = match.report
    lines = []
    for rev in (report.get("revisions") or [])[:20]:
        lines.append(f"• {escape(revision_line_json(rev))}")
        lines += [f"    ↳ {escape(check_line(c))}" for c in rev.get("risk_checks") or []]
    if report.get("outcome") != "passed" and report.get("error"):
        lines.append(f"• {escape(one_line(str(report['error']), 300))}")
    head = (f"{icon} *Rehearsed*{when} on a copy of backup #{report.get('backup_id')}: "
            f"*{escape(str(report.get('outcome')))}* in {duration(report.get('total_seconds'))} "
            f"(run {escape(match.run_id[:8])})")
    if any(rev.get("risk_checks") for rev in report.get("revisions") or []):
        head += "; lock times are lower bounds (sampled)"
    return [section(head + "\n" + bounded_lines(lines, MAX_SECTION_TEXT - len(head) - 1))]


def rehearsal_progress_message(environment: str, typed: str, phase: str) -> Message:
    text = f"Rehearsing {environment} up to {typed} on a restored copy: {phase}"
    return Message(text=escape(text), blocks=[section(f":hourglass_flowing_sand: *Rehearsing {escape(environment)}* "
                                                      f"up to `{escape(one_line(typed, 80))}` on a restored copy · "
                                                      f"{escape(one_line(phase, 200))}")])


def rehearsal_message(report: Mapping[str, Any], *, environment: str) -> Message:
    """A finished rehearsal (runbook.rehearse.to_json): one line per revision, the validation, the notes."""
    from runbook.rehearsal_record import check_line, revision_line_json

    outcome = str(report.get("outcome"))
    icon = {"passed": ":white_check_mark:", "failed": ":x:", "nothing to do": ":zzz:"}.get(outcome, ":warning:")
    frm = _rev_text(report.get("from") or [])
    head = f"{icon} *Rehearsal of {escape(environment)}* {frm} → {_target_text(str(report.get('to')))}: *{escape(outcome)}*"
    out = [section(truncate(head + (f"\n{escape(one_line(str(report['error']), 500))}"
                                    if report.get("error") and outcome != "passed" else ""), MAX_SECTION_TEXT))]
    lines = []
    for rev in report.get("revisions") or []:
        if rev.get("ok") or rev.get("error"):
            lines.append(f"• {escape(revision_line_json(rev))}")
            lines += [f"    ↳ {escape(check_line(c))}" for c in rev.get("risk_checks") or []]
    if lines:
        out.append(section(bounded_lines(lines[:80], MAX_SECTION_TEXT, total=len(lines))))
    if any(rev.get("risk_checks") for rev in report.get("revisions") or []):
        out.append(context("↳ the risk review's findings against what was measured: a lock's time is a lower "
                           "bound (seen from its first sample to its last), and one shorter than a sample may not "
                           "be seen at all"))
    validation = report.get("validation")
    if validation is not None:
        failed = [c for c in validation.get("checks") or [] if c.get("status") == "fail"]
        out.append(section(truncate("*Validation (§5) on the copy*: " + (
            "passed" if validation.get("passed") else
            "failed: " + "; ".join(f"{escape(c['name'])}: {escape(one_line(c.get('detail') or '', 200))}"
                                   for c in failed)), MAX_SECTION_TEXT)))
    bits = []
    if report.get("backup_id") is not None:
        bits.append(f"backup #{escape(report['backup_id'])}" + (" (taken for it)" if report.get("backup_taken") else "")
                    + f" restored into {escape(report.get('scratch'))} in {duration(report.get('restore_seconds'))},"
                    " dropped")
    if report.get("upgrade_again_ok") is not None:
        bits.append("up again " + ("ok" if report["upgrade_again_ok"] else "FAILED"))
    bits.append(f"total {duration(report.get('total_seconds'))}")
    bits += [escape(one_line(n, 300)) for n in report.get("notes") or []]
    out.append(context(truncate(" · ".join(bits), MAX_CONTEXT_TEXT)))
    text = f"Rehearsal of {environment}: {outcome}"
    return Message(text=escape(text), blocks=out)


def sql_inline(sql: str) -> bool:
    """Whether a SQL preview fits in the request message (else it goes up as a file)."""
    return len(code_block(sql.strip())) + 60 <= SQL_INLINE_LIMIT and sql.count("\n") < 60


def sql_file(sql: str, environment: str, direction: str) -> FileUpload:
    name = "".join(c if c.isalnum() or c in "_.-" else "_" for c in environment)[:40] or "env"
    verb = "rollback" if direction == "downgrade" else "migration"
    return FileUpload(f"SQL preview of the {verb} — {environment}", f"{verb}-sql-{name}.sql", sql)


def migration_result_blocks(result: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """Under the request once it ran: where the database is, what ran, and for how long."""
    if not result:
        return []
    if result.get("outcome") == "interrupted":
        return interrupted_result_blocks(result)
    frm, to = result.get("from") or [], result.get("to") or []
    bits = [f"*Revision* {_rev_text(frm)} → {_rev_text(to)}",
            f"{result.get('attempts', 0)} attempt{'s' if result.get('attempts') != 1 else ''}",
            f"took {duration(result.get('duration_seconds'))}"]
    validation = result.get("validation")
    if validation is not None:
        bits.append("validation " + (":white_check_mark: passed" if validation else ":x: failed"))
    if result.get("backup_id"):
        bits.append(f"backup #{escape(result['backup_id'])} before it")
    bits.append(f"run {code(result.get('run_id', '?'), 20)}")
    out = [section(truncate(" · ".join(bits), MAX_SECTION_TEXT))]
    rehearsed = result.get("rehearsal")
    if rehearsed and rehearsed.get("revisions"):
        from runbook.rehearsal_record import timing_line

        title = (f":test_tube: *Against its rehearsal* (run {escape(str(rehearsed.get('run_id'))[:8])}, "
                 f"{escape(str(rehearsed.get('outcome')))})")
        lines = [f"• {escape(timing_line(t))}" for t in rehearsed["revisions"][:200]]
        out.append(titled_section(title, lines, total=len(rehearsed["revisions"])))
    return out


def interrupted_result_blocks(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Under a request whose run was interrupted (bot.migrations.Migrations.follow_up_interrupted):
    the step it was in, where it was going, and what to do next, since nothing resumes on its own."""
    env = one_line(str(result.get("environment") or "ENV"), 40)
    # "from" is None when the run died before it read the database's revision
    frm = _rev_text(result["from"]) if isinstance(result.get("from"), list) else "`?`"
    target = str(result.get("target") or "")
    facts = _interrupted_facts(result, f"*Revision* {frm} → {_target_text(target) if target else '`?`'}")
    next_steps = (f":point_right: *Nothing resumes on its own*: {escape(env)} may be anywhere between "
                  f"{frm} and {_target_text(target) if target else 'the target'}. Check it with "
                  f"`/migrate status {escape(env)}`, then `/migrate validate {escape(env)}`, and decide: "
                  f"`/migrate rollback {escape(env)}`, `/migrate run {escape(env)}` again, or "
                  f"`/migrate restore {escape(env)}` (§6.5). The §7.3 incident summary is posted in this thread.")
    return [facts, section(truncate(next_steps, MAX_SECTION_TEXT))]


def _interrupted_facts(result: Mapping[str, Any], *what: str) -> dict[str, Any]:
    """The first section under a request whose run was interrupted: the step, `what` it was doing, when
    it started, the run."""
    bits = [f"*Interrupted during* {code(result.get('step') or '?', 120)}", *what,
            f"started {slack_time(datetime.fromisoformat(result['started_at']))}" if result.get("started_at") else "",
            f"run {code(result.get('run_id', '?'), 20)}"]
    return section(truncate(" · ".join(b for b in bits if b), MAX_SECTION_TEXT))


def _restore_what(params: Mapping[str, Any], backup_id: Any) -> str:
    tables = params.get("tables") or []
    if params.get("mode") == "tables":
        return (f"backup #{escape(backup_id)}, {len(tables)} table{'s' if len(tables) != 1 else ''} "
                f"({', '.join(code(t, 60) for t in tables[:5])}{' …' if len(tables) > 5 else ''})")
    return f"backup #{escape(backup_id)}, the whole database"


def restore_again_command(environment: str, params: Mapping[str, Any]) -> str:
    """The `/migrate restore` that asks for the same restore again."""
    tables = params.get("tables") or []
    shown = " tables=" + ",".join(str(t) for t in tables) if params.get("mode") == "tables" and tables else ""
    return f"/migrate restore {one_line(environment, 40)} {params.get('backup_id')}{shown}"


def restore_run_blocks(result: Mapping[str, Any] | None, params: Mapping[str, Any],
                       environment: str) -> list[dict[str, Any]]:
    """Under a restore request once it ran (bot.restores.restore_kind): the revision and row counts when it
    worked, the interrupted view when its process died, and the run it was recorded as."""
    if not result:
        return []
    if result.get("outcome") == "interrupted":
        return interrupted_restore_blocks(result, params, environment)
    out = restore_result_blocks(result) if "revision_after" in result else []
    if result.get("run_id"):
        out.append(context(f"run {code(result['run_id'], 20)} · `runbook-bot incident {escape(result['run_id'])}` "
                           "prints its §7.3 summary"))
    return out


def interrupted_restore_blocks(result: Mapping[str, Any], params: Mapping[str, Any],
                               environment: str) -> list[dict[str, Any]]:
    """Under a restore request whose run was interrupted (its process died, or a shutdown stopped it):
    where it stopped and what to do, since nothing resumes on its own. A restore is one transaction."""
    env = escape(one_line(environment, 40))
    frm = _rev_text(result["from"]) if isinstance(result.get("from"), list) else "`?`"
    restoring = _restore_what(params, result.get("backup_id", params.get("backup_id")))
    facts = _interrupted_facts(result, f"*Restoring* {restoring}", f"*Revision before* {frm}")
    next_steps = (f":point_right: *Nothing resumes on its own.* A restore is one transaction: unless it reached "
                  f"its COMMIT, {env} is as it was, at {frm}. Check it with `/migrate status {env}` (and "
                  f"`/migrate validate {env}`); the safety backup, if it was taken, is in `/migrate backups {env}`. "
                  f"Then ask again: `{escape(restore_again_command(environment, params))}`. "
                  "The §7.3 incident summary is posted in this thread.")
    return [facts, section(truncate(next_steps, MAX_SECTION_TEXT))]


# --------------------------------------------------------------------------
# the live monitor (§4): one message in the request's thread, updated in place

PHASES = {"locking": "taking the operation lock", "checking": "checking", "backup": "taking the backup first",
          "migrating": "running alembic", "waiting to retry": "waiting to retry after a lock timeout",
          "validating": "validating (§5)", "done": "finished"}


def _migrator_marked(line: str) -> str:
    return ":point_right: *the migration* " + line.lstrip("• ")


def monitor_message(progress: Any, activity: Any, *, run_id: str, migrator_app: str,
                    outcome: str | None = None, notes: Sequence[str] = ()) -> Message:
    """The run as it stands: the step, elapsed time, active queries, idle transactions, lock waits
    with their roots; the migration's own session marked, and called out when it waits on a lock.
    `progress`: runbook.migrate.Progress; `activity`: runbook.activity.Activity or None (unreadable)."""
    verb = VERBS.get(progress.direction, "Run")
    env = one_line(progress.environment, 40)
    if outcome is None:
        state = PHASES.get(progress.phase, escape(progress.phase))
        emoji = ":rotating_light:" if progress.waiting_on_lock else ":hourglass_flowing_sand:"
    else:
        state = outcome
        emoji = ":white_check_mark:" if outcome in ("succeeded", "nothing to do") else ":x:"
    step = "no step yet"
    if progress.step:
        step = (f"{'upgrade' if progress.direction == 'upgrade' else 'downgrade'} to {code(progress.step, 60)} "
                f"(step {progress.step_index} of {progress.step_count}), attempt {progress.attempt}")
    fields = ([f"*Took*\n{duration(progress.elapsed_seconds)}", f"*Attempts*\n{progress.attempt}"]
              if outcome is not None else
              [f"*Elapsed*\n{duration(progress.elapsed_seconds)}",
               f"*This attempt*\n{duration(progress.step_elapsed_seconds)}"])
    blocks: list[dict[str, Any]] = [header(f"{emoji} {verb} {env}: {state}"),
                                    section(f"*{'Last step' if outcome is not None else 'Step'}* {step}",
                                            fields=fields)]
    pid = progress.migrator_pid

    def ours(item: Any) -> bool:
        return (pid is not None and item.pid == pid) or getattr(item, "application", None) == migrator_app

    if progress.waiting_on_lock and outcome is None:
        blocker = progress.blocker
        who = "a session the monitor could not see"
        if blocker is not None and blocker.root_pid is not None:
            who = (f"pid {blocker.root_pid} (app {code(blocker.application or '?', 40)}, "
                   f"{escape(blocker.state or '?')}"
                   + (f", transaction open {duration(blocker.xact_seconds)}" if blocker.xact_seconds is not None
                      else "") + f"): {code(blocker.query, 200)}")
        lock = ""
        if blocker is not None and (blocker.lock_mode or blocker.relation):
            lock = f" for {escape(blocker.lock_mode or 'a lock')}" + (
                f" on {code(blocker.relation, 60)}" if blocker.relation else "")
        blocks.append(section(truncate(f":rotating_light: *The migration (pid {pid or '?'}) is waiting{lock}*, "
                                       f"blocked by {who}. `lock_timeout` ends the attempt; it is then retried.",
                                       MAX_SECTION_TEXT)))
    if activity is None:
        blocks.append(section("_The activity could not be read this time._"))
    else:
        active = sorted(activity.long_queries, key=lambda s: (not ours(s), -s.seconds))
        lines = [_migrator_marked(_session_line(s)) if ours(s) else _session_line(s) for s in active[:MONITOR_ROWS]]
        title = f"*Active queries* ({len(active)})"
        blocks.append(section(title + ("\n" + bounded_lines(lines, MAX_SECTION_TEXT - len(title) - 1,
                                                            total=len(active)) if lines else ": none")))
        idle = activity.idle_in_transaction
        if idle:
            title = f"*Idle in transaction* ({len(idle)})"
            lines = [_session_line(s, seconds_label="idle ") for s in idle[:MONITOR_ROWS]]
            blocks.append(titled_section(title, lines, total=len(idle)))
        if activity.lock_waits:
            title = (f"*Lock waits* ({len(activity.lock_waits)}) · blocking tree: "
                     f"{len(activity.roots)} root{'s' if len(activity.roots) != 1 else ''}")
            roots = [_root_line(r) for r in activity.roots[:MONITOR_ROWS]]
            waits = sorted(activity.lock_waits, key=lambda w: not ours(w))
            lines = roots + [_migrator_marked(_lock_line(w)) if ours(w) else _lock_line(w)
                             for w in waits[:MONITOR_ROWS]]
            blocks.append(titled_section(title, lines))
        else:
            blocks.append(section("*Lock waits*: none"))
    for note in notes[:5]:
        blocks.append(section(truncate(escape(one_line(note, 500)), MAX_SECTION_TEXT)))
    blocks.append(context(f"run {code(run_id, 20)} · the migration's session is "
                          f"{code(migrator_app, 40)} · updated in place at most every 2 s · runbook §4"))
    text = f"{verb} {escape(env)}: {state}" + (f" — {escape(one_line(progress.step, 60))}" if progress.step else "")
    return validate(Message(text=text, blocks=blocks[:MAX_BLOCKS]))


def monitor_interrupted_message(run: Any, *, migrator_app: str) -> Message:
    """The live monitor's final word for a run marked interrupted (runbook.state.runs.Run): the step it
    was in, why, and that nothing resumes; no live numbers (nobody measures them any more)."""
    verb = {"migrate": "Migration", "rollback": "Rollback"}.get(run.kind, "Run")
    env = one_line(run.environment, 40)
    stopped = run.finished_at or run.heartbeat_at
    blocks: list[dict[str, Any]] = [
        header(f":warning: {verb} {env}: interrupted"),
        section(truncate(f"*Last step* {code(run.step or '?', 120)} · started {slack_time(run.started_at)} · "
                         f"marked interrupted {slack_time(stopped)}\n{escape(one_line(run.summary, 1500))}",
                         MAX_SECTION_TEXT)),
        context(truncate(f"run {code(run.id, 20)} · the migration's session was {code(migrator_app, 40)} · no longer "
                         "updated: nothing resumes on its own (what to do is on the request above) · runbook §4",
                         MAX_CONTEXT_TEXT))]
    text = f"{verb} {escape(env)}: interrupted — {escape(one_line(run.step or '?', 60))}"
    return validate(Message(text=text, blocks=blocks))


def monitor_final_message(run: Any, *, migrator_app: str) -> Message:
    """The live monitor's final word written from the bot's records (runbook.state.runs.Run) when the run's
    own last update never reached Slack (an outage): how it ended, the last step, when, and its summary."""
    verb = {"migrate": "Migration", "rollback": "Rollback"}.get(run.kind, "Run")
    env = one_line(run.environment, 40)
    ok = run.state == "succeeded"
    took = (run.finished_at - run.started_at).total_seconds() if run.finished_at else None
    blocks: list[dict[str, Any]] = [
        header(f"{':white_check_mark:' if ok else ':x:'} {verb} {env}: {escape(run.state)}"),
        section(truncate(f"*Last step* {code(run.step or '?', 120)} · started {slack_time(run.started_at)}"
                         + (f" · finished {slack_time(run.finished_at)} · took {duration(took)}" if took is not None
                            else "")
                         + (f"\n{escape(one_line(run.summary, 1500))}" if run.summary else ""), MAX_SECTION_TEXT)),
        context(truncate(f"run {code(run.id, 20)} · the migration's session was {code(migrator_app, 40)} · written "
                         "from the bot's records (Slack missed the last live update) · runbook §4", MAX_CONTEXT_TEXT))]
    text = f"{verb} {escape(env)}: {escape(run.state)} — {escape(one_line(run.step or '?', 60))}"
    return validate(Message(text=text, blocks=blocks))


def blocker_message(blocker: Any, environment: str) -> Message:
    """A lock timeout ended an attempt: who held the lock (root blocker: pid, application, transaction
    age, query) and what happens next. `blocker`: runbook.migrate.BlockerReport."""
    lock = escape(blocker.lock_mode or "a lock") + (f" on {code(blocker.relation, 60)}" if blocker.relation else "")
    if not blocker.observed:
        who = "Its blocker was not seen (the wait ended between two looks)."
    elif blocker.root_pid == 0:
        who = (f"*Root blocker*: prepared transaction {code(blocker.prepared_gid or '?', 80)} "
               "(no session: COMMIT PREPARED or ROLLBACK PREPARED it).")
    else:
        xact = f", transaction open {duration(blocker.xact_seconds)}" if blocker.xact_seconds is not None else ""
        who = (f"*Root blocker*: pid {blocker.root_pid} · app {code(blocker.application or '?', 60)} · "
               f"user {code(blocker.user or '?', 40)} · {escape(blocker.state or '?')}{xact}\n"
               f"{code(blocker.query, 400)}")
    then = (f"Retrying in {duration(blocker.retry_in_seconds)}." if blocker.retry_in_seconds is not None
            else "No retries left: the run stops here, with the database where it was.")
    line = (f":lock: *Lock timeout* on attempt {blocker.attempt}: the migration (pid {blocker.migrator_pid or '?'}) "
            f"waited {duration(blocker.waited_seconds)} for {lock}.")
    text = f"Lock timeout on {one_line(environment, 40)} (attempt {blocker.attempt}): " + (
        f"root blocker pid {blocker.root_pid}" if blocker.observed else "blocker not seen")
    return validate(Message(text=escape(text), blocks=[section(truncate(f"{line}\n{who}\n{then}",
                                                                        MAX_SECTION_TEXT))]))


def log_file(log_text: str, environment: str, direction: str, run_id: str, filename: str) -> FileUpload:
    verb = VERBS.get(direction, "Run")
    return FileUpload(f"{verb} log — {environment}, run {run_id} (§3.3)", filename, log_text)


# --------------------------------------------------------------------------
# validation (§5)

def validation_message(report: Any) -> Message:
    """The §5 report: verdict, then each check (failures first). `report`: runbook.validate.ValidationReport."""
    env = one_line(report.environment, 40)
    if report.error:
        verdict, emoji = "could not run", ":x:"
    else:
        verdict, emoji = ("PASS", ":white_check_mark:") if report.passed else ("FAIL", ":x:")
    blocks: list[dict[str, Any]] = [header(f"{emoji} Validation {env}: {verdict}"),
                                    context(truncate(f"target {code(report.target, 80)} · expected revision "
                                                     f"{_rev_text(report.expected)} · {slack_time(report.started_at)}"
                                                     f", took {duration(report.duration_seconds)}",
                                                     MAX_CONTEXT_TEXT))]
    if report.error:
        blocks.append(section(truncate(f":x: {escape(one_line(report.error, 1500))}", MAX_SECTION_TEXT)))
    order = {"fail": 0, "skip": 2, "pass": 1}
    checks = sorted(report.checks, key=lambda c: order.get(c.status, 3))
    if checks:
        failed = len(report.failed)
        title = f"*Checks* ({len(report.checks) - failed} passed or skipped, {failed} failed)"
        lines = [f"{CHECK_MARK.get(c.status, ':grey_question:')} §{escape(c.section)} *{escape(one_line(c.name, 80))}*"
                 + (f" — {escape(one_line(c.detail, 400))}" if c.detail else "") for c in checks[:200]]
        blocks.append(titled_section(title, lines, total=len(checks)))
    blocks.append(context("Runbook §5 · read-only: nothing was changed by this check"))
    text = f"Validation {escape(env)}: {verdict}" + (
        " — " + escape(", ".join(c.name for c in report.failed)[:200]) if report.failed else "")
    return validate(Message(text=text, blocks=blocks))


# --------------------------------------------------------------------------
# §6.5: what to do now, with one button

BUTTON_TEXT = {"downgrade": "Ask to roll back to {target}",
               "table_restore": "Ask to restore {n} table{s} from #{backup}",
               "full_restore": "Ask for a full restore from #{backup}",
               "escalate": "Escalate to the owner"}


def recommendation_message(rec: Mapping[str, Any], facts: Mapping[str, Any], *, recommendation_id: str | None,
                           backup: Any, owner: str | None, followed: str | None = None) -> Message:
    """The §6.5 tree walked with its evidence, the facts of what went wrong (revision, time, error, log
    tail, backup), and ONE button for the recommended action (none when there is nothing to do or
    nothing to do it with). `rec`: runbook.rollback.recommendation_to_json; `facts`: what happened
    (environment, what, from, to, at, error, log_tail, run_id). `followed` (mrkdwn): who followed the
    recommendation and what it opened, shown instead of the button."""
    env = one_line(facts.get("environment", "?"), 40)
    what = one_line(facts.get("what", "The run"), 60)
    blocks: list[dict[str, Any]] = [header(f":x: {what} {env} failed: what now (§6.5)"),
                                    section(truncate(f"*Recommended*: {escape(one_line(rec.get('headline'), 1200))}",
                                                     MAX_SECTION_TEXT))]
    walk = [f"{i}. {escape(one_line(s.get('question'), 120))} *{escape(s.get('answer', '?')).upper()}* — "
            f"{escape(one_line(s.get('evidence'), 500))}" for i, s in enumerate(rec.get("walk") or [], 1)]
    if walk:
        title = "*The decision tree, walked*"
        blocks.append(section(title + "\n" + bounded_lines(walk, MAX_SECTION_TEXT - len(title) - 1)))
    at = facts.get("at")
    fields = [f"*Revision*\n{_rev_text(facts.get('from') or [])} → now {_rev_text(facts.get('to') or [])}",
              f"*When*\n{slack_time(at) if isinstance(at, datetime) else 'unknown'}",
              "*Backup*\n" + (backup_line(backup) if backup is not None else "_none verified_"),
              f"*Run*\n{code(facts.get('run_id') or 'none', 20)}"]
    blocks.append(section("", fields=fields))
    if facts.get("error"):
        blocks.append(section(truncate(f"*Error* {code(facts['error'], 1500)}", MAX_SECTION_TEXT)))
    tail = str(facts.get("log_tail") or "").strip()
    if tail:
        lines = tail.splitlines()[-15:]
        body = truncate("\n".join(lines), MAX_SECTION_TEXT - 60)
        blocks.append(section(f"*Last lines of the log*\n{code_block(body)}"))
    label = recommended_button_text(rec, backup)
    if followed is not None:
        note = f":arrow_right: Followed by {followed}"
    elif label is not None and recommendation_id is not None:
        confirm = None
        if rec.get("action") == "escalate":
            confirm = {"title": {"type": "plain_text", "text": "Escalate?"},
                       "text": {"type": "mrkdwn", "text": "This tags the owner with what is known (§7.2)."},
                       "confirm": {"type": "plain_text", "text": "Escalate"},
                       "deny": {"type": "plain_text", "text": "Cancel"}}
        blocks.append(actions(button(label, ACTION_RECOMMENDED, recommendation_id, style="primary", confirm=confirm),
                              block_id="migrate_recommended"))
        note = ("The button asks for approval; nothing runs before approvers approve it."
                if rec.get("action") != "escalate" else "The button tags the owner.")
    elif rec.get("action") in ("escalate", "table_restore", "full_restore") and owner:
        note = f"Escalate (§7): {mention(owner)}" + (" — there is no verified backup to restore from"
                                                      if rec.get("action") != "escalate" else "")
    else:
        note = "No action to take from here."
    blocks.append(context(truncate(f"{note} · runbook §{escape(rec.get('section', '6.5'))}", MAX_CONTEXT_TEXT)))
    text = f"{escape(what)} {escape(env)} failed. Recommended: {escape(one_line(rec.get('headline'), 300))}"
    return validate(Message(text=text, blocks=blocks[:MAX_BLOCKS]))


def recommended_button_text(rec: Mapping[str, Any], backup: Any) -> str | None:
    """The one button's label, or None when the recommendation has no action (or a restore has no backup)."""
    action = rec.get("action")
    if action not in BUTTON_TEXT or (action in ("table_restore", "full_restore") and backup is None):
        return None
    tables = rec.get("tables") or []
    return truncate(BUTTON_TEXT[action].format(target=rec.get("target_revision") or "?", n=len(tables),
                                               s="s" if len(tables) != 1 else "",
                                               backup=backup.id if backup is not None else "?"), 75)


def escalation_contact_message(environment: str, owner: str | None, reason: str, clicked_by: str) -> Message:
    """The escalate button without the escalation feature: the configured owner, really mentioned."""
    who = mention(owner) if owner else "_nobody: set escalation.owner.slack_"
    line = (f":sos: {_who(clicked_by)} escalates {escape(one_line(environment, 40))} (§7.2 level 2): {who}, "
            f"please take over. {escape(one_line(reason, 500))}")
    return validate(Message(text=line, blocks=[section(truncate(line, MAX_SECTION_TEXT))]))


# --------------------------------------------------------------------------
# interrupted runs (crash safety)

def _interrupted_run_line(run: Any) -> str:
    approval = f" · approval `{escape(run.approval_id[:8])}`" if run.approval_id else ""
    if run.kind == "restore":
        params = run.details or {}
        what = (f"• *restore* of {_restore_what(params, params.get('backup_id', '?'))} on "
                f"{code(run.environment, 40)} by {_who(run.actor)} · revision before "
                f"{escape(run.from_revision or '?')}")
    else:
        what = (f"• *{escape(run.kind)}* on {code(run.environment, 40)} by {_who(run.actor)} · "
                f"{escape(run.from_revision or '?')} → {escape(run.target_revision or '?')}")
    return (f"{what} · started {slack_time(run.started_at)} · last step {code(run.step or '?', 80)} · run "
            f"{code(run.id, 20)}{approval}\n    {escape(one_line(run.summary, 400))}")


def interrupted_runs_message(runs: Sequence[Any], *, when: str = "found at start") -> Message:
    """Runs whose process died (found at start or by the reaper) or that a shutdown stopped (`when`):
    what is known, and that nothing resumes on its own (what to check depends on the kind)."""
    lines = [_interrupted_run_line(run) for run in runs[:50]]
    n = len(runs)
    advice = []
    if not runs or any(run.kind != "restore" for run in runs):
        advice.append("Not resumed: the database may be anywhere between two revisions. Check it with "
                      "`/migrate status`, then `/migrate validate`, and decide: `/migrate rollback`, "
                      "`/migrate run` again, or `/migrate restore`.")
    if any(run.kind == "restore" for run in runs):
        advice.append("A restore is not resumed either: it is one transaction, so unless it reached its COMMIT the "
                      "database is as it was. Check it with `/migrate status`, then ask again with "
                      "`/migrate restore`.")
    blocks = [header(f":warning: {n} interrupted run{'s' if n != 1 else ''} {when}"),
              section(bounded_lines(lines, MAX_SECTION_TEXT, total=n)),
              divider(),
              section(truncate("\n".join(advice), MAX_SECTION_TEXT))]
    text = f"{n} interrupted run{'s' if n != 1 else ''} {when}; not resumed"
    return validate(Message(text=text, blocks=blocks))


__all__ = ["ACTION_BACKUP_FIRST", "ACTION_PATTERN", "ACTION_RECOMMENDED", "ACTION_REHEARSE_FIRST", "backup_line", "blocker_message",
           "escalation_contact_message", "interrupted_restore_blocks", "interrupted_result_blocks",
           "interrupted_runs_message", "log_file", "monitor_final_message", "monitor_interrupted_message", "restore_again_command",
           "restore_run_blocks",
           "migration_request_blocks", "migration_result_blocks",
           "migration_summary", "monitor_message", "recommendation_message", "recommended_button_text", "sql_file",
           "sql_inline", "validation_message"]
