"""The live monitor of a migrate or rollback run (runbook §4): ONE message in the request's thread,
updated in place (chat.update by its ts) at most every `LiveRun.every` seconds from its own thread: the
step, elapsed time, active queries, idle transactions and lock waits with their roots, from
runbook.activity.snapshot on a monitor connection of its own; the migration's session (application_name
rbmigrate/<run id>) is marked, and called out when it waits on a lock. A lock timeout's root blocker is
posted in the thread as it happens. At the end: the log file (§3.3), the validation report (§5), and,
when something went wrong, the §6.5 recommendation.

The monitor posts through the desk that made it (bot.migrations.Migrations, handed in as `desk`): its
thread, its recommendation, its follow-ups. Split from bot/migrations.py."""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from bot import blocks
from bot import migration_blocks as mblocks
from runbook import activity as activities
from runbook import migrate, rollback
from runbook.ops import RunWatcher
from runbook.state.approvals import ApprovalRequest
from runbook.state.runs import INTERRUPTED, RunStore
from runbook.target import Target, TargetError

log = logging.getLogger(__name__)


class LiveRun(RunWatcher):
    """One run's messages in its request's thread: the monitor (posted once, then chat.update by its
    ts at most every `every` seconds, from a thread of its own so Slack never slows the supervisor),
    lock-timeout reports as they happen, and at the end the log, validation and recommendation.

    Slack's chat.update budget is shared with the request's own updates and backup progress: after
    a 429 the monitor waits out its Retry-After and doubles its interval (up to `slowest`) rather than
    dropping updates into more 429s; the final view waits its turn and is always written (it retries
    past rate limits: Flows.update(final=True))."""

    every = 2.0
    slowest = 16.0

    def __init__(self, desk: Any, request: ApprovalRequest, run_id: str):
        self.desk, self.request, self.run_id = desk, request, run_id
        self.env = desk.settings.environments[request.environment]
        self.migrator_app = migrate.migrator_application_name(run_id)
        self.ts: str | None = None
        self._latest: tuple[migrate.Progress, float] | None = None     # (progress, when it arrived)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._written_at = 0.0
        self._outcome: str | None = None
        self._thread: threading.Thread | None = None

    # -- what the supervisor calls (its thread) ----------------------------------------------

    def progress(self, progress: migrate.Progress) -> None:
        with self._lock:
            self._latest = (progress, time.monotonic())
            start = self._thread is None and progress.phase not in ("locking", "checking")
            if start:
                self._thread = threading.Thread(target=self._watch, name=f"monitor-{self.run_id}", daemon=True)
        if start:
            self._thread.start()

    def blocker(self, report: migrate.BlockerReport) -> None:
        self.desk.post_in_thread(self.request, mblocks.blocker_message(report, self.request.environment))

    def finished(self, result: migrate.MigrationResult, backup: Any) -> None:
        self._outcome = result.outcome
        self._stop.set()
        if self._thread is None:
            return                      # refused before it started: the request's result says why
        self._thread.join(timeout=60)
        self._upload_log(result)
        if result.validation is not None:
            self.desk.post_in_thread(self.request, mblocks.validation_message(result.validation))
        if result.recommendation is not None:
            self.desk.recommend(result.environment, rollback.recommendation_to_json(result.recommendation),
                                run_facts(result), backup=backup, requester=self.request.requester,
                                thread=(self.request.channel, self.request.message_ts))
        if not result.ok and result.outcome != "refused" and self.desk.after_run is not None:
            try:
                self.desk.after_run(result.run_id, thread=(self.request.channel, self.request.message_ts))
            except Exception as exc:   # the failure is reported already; a follow-up must not hide it
                log.error("run %s: after_run failed: %s", result.run_id, self.desk.redactor(repr(exc)))

    # -- the monitor's own thread ----------------------------------------------------------

    def _watch(self) -> None:
        target = Target(self.env.dsn, connect_timeout=self.env.connect_timeout_seconds)
        try:
            with target.connect("migrate-live", statement_timeout=self.env.watch.statement_timeout,
                                lock_timeout=self.env.watch.lock_timeout) as conn:
                self._render_until_stopped(conn)
        except TargetError as exc:
            log.warning("run %s: the live monitor has no connection (%s)", self.run_id, self.desk.redactor(str(exc)))
            self._render_until_stopped(None)

    def _wait_before_next(self) -> float:
        """Until the next write is due: `every` after the last one, and not before a rate limit Slack
        put on the thread's channel has passed."""
        cooling = self.desk.flows.gateway.cooling(self.request.channel) if self.ts is not None else 0.0
        return max(0.0, self._written_at + self.every - time.monotonic(), cooling)

    def _render_until_stopped(self, conn: Any) -> None:
        while not self._stop.wait(self._wait_before_next()):
            self._write(conn)
        # the last word waits for its turn too: never two writes within `every`
        remaining = self._wait_before_next()
        if remaining > 0:
            time.sleep(remaining)
        self._write(conn, final=True)

    def _write(self, conn: Any, final: bool = False) -> None:
        with self._lock:
            progress, arrived = self._latest if self._latest else (None, 0.0)
        if progress is None:
            return
        if not final:      # the elapsed time keeps counting between two reports of the supervisor
            late = time.monotonic() - arrived
            progress = replace(progress, elapsed_seconds=progress.elapsed_seconds + late,
                               step_elapsed_seconds=progress.step_elapsed_seconds + late
                               if progress.step_elapsed_seconds else 0.0)
        notes: list[str] = []
        snapshot = None
        if conn is not None:
            try:
                snapshot = activities.snapshot(conn, long_query_seconds=0.0, idle_in_transaction_seconds=0.0,
                                               query_chars=300)
            except Exception as exc:      # psycopg errors and a lost connection alike: say so, keep going
                notes.append(f"activity not read: {type(exc).__name__}")
        message = mblocks.monitor_message(progress, snapshot, run_id=self.run_id, migrator_app=self.migrator_app,
                                          outcome=self._outcome if final else None, notes=notes)
        try:
            interrupted = self._interrupted() if final and self.ts is not None else None
            if interrupted is not None:
                # marked interrupted while it ran (a shutdown): the same final word the follow-up writes, once
                self.desk.close_monitor(interrupted, where=(self.request.channel, self.ts))
            elif self.ts is None:
                self.ts = self.desk.post_in_thread(self.request, message)
                if self.ts is not None:
                    self._remember_monitor(final)
            elif self.desk.flows.update(self.request.channel, self.ts, message, final=final):
                if final:
                    self._mark_final()
            elif not final and self.desk.flows.gateway.cooling(self.request.channel):
                self.every = min(self.every * 2, self.slowest)      # rate limited: slow down, for this run
                log.warning("run %s: Slack rate-limited the monitor; updating every %.0f s now", self.run_id,
                            self.every)
        except Exception as exc:   # a Slack hiccup must never stop the monitor, let alone the run
            log.warning("run %s: monitor message not written (%s)", self.run_id, type(exc).__name__)
        self._written_at = time.monotonic()

    def _remember_monitor(self, final: bool = False) -> None:
        """Where the monitor is, kept on the run: after this process dies, whoever follows the run up
        closes it (Migrations.close_monitor); the ts in memory dies with the process. "rendered": the run
        state it shows, so a final update Slack never took is made again (Migrations.reconcile_monitors)."""
        try:
            runs = RunStore(self.desk.store)
            run = runs.get(self.run_id) if final else None
            runs.set_details(self.run_id, monitor={"channel": self.request.channel, "ts": self.ts,
                                                   "rendered": run.state if run is not None else "running"})
        except Exception as exc:   # the state database failing must not stop the monitor
            log.warning("run %s: the monitor's ts was not kept (%s)", self.run_id, self.desk.redactor(repr(exc)))

    def _mark_final(self) -> None:
        """Its final view reached Slack: the monitor shows the run as it ended."""
        try:
            runs = RunStore(self.desk.store)
            run = runs.get(self.run_id)
            if run is not None and run.state != "running":
                runs.mark_monitor(self.run_id, run.state)
        except Exception as exc:   # the reconcile writes it once more at worst
            log.warning("run %s: the monitor's final view was not marked (%s)", self.run_id,
                        self.desk.redactor(repr(exc)))

    def _interrupted(self) -> Any:
        try:
            run = RunStore(self.desk.store).get(self.run_id)
        except Exception:
            return None
        return run if run is not None and run.state == INTERRUPTED else None

    def _upload_log(self, result: migrate.MigrationResult) -> None:
        if not result.log_path:
            return
        try:
            text = Path(result.log_path).read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            self.desk.post_in_thread(self.request, blocks.error_message(f"The log could not be read ({exc.strerror})."))
            return
        upload = mblocks.log_file(text, result.environment, result.direction, result.run_id,
                                  Path(result.log_path).name)
        self.desk.upload_in_thread(self.request.channel, self.request.message_ts, upload)


def run_facts(result: migrate.MigrationResult) -> dict[str, Any]:
    return {"environment": result.environment, "what": mblocks.VERBS.get(result.direction, "The run"),
            "from": list(result.from_revisions), "to": list(result.to_revisions),
            "at": result.started_at.isoformat(), "error": result.error, "log_tail": result.log_tail,
            "run_id": result.run_id}


__all__ = ["LiveRun", "run_facts"]
