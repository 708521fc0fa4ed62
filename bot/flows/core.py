"""The Flows object: what the Slack side (bot/app.py) and the server hand work to. It builds the services
(approvals, escalation, the migration desk) and the command handlers, each given what it needs, runs every
command on the bounded executor (bot/flows/work.py) after admitting it (bot/flows/admission.py), and
reconciles messages a Slack outage left behind. The handlers, grouped by runbook section, are in
checks.py, runs.py, backups.py and alerts.py; what they leave behind (event, answer) in replies.py."""
from __future__ import annotations

import logging
import threading
from concurrent.futures import Future
from typing import Any, Callable

from slack_sdk import WebClient

from bot import approvals, blocks
from bot.commands import Command
from bot.flows.admission import Admission
from bot.flows.alerts import Alerts
from bot.flows.backups import Backups
from bot.flows.checks import Checks
from bot.flows.replies import Replies
from bot.flows.runs import Runs
from bot.flows.work import Busy, WorkQueue
from bot.gateway import SlackGateway
from bot.origin import Origin
from bot.redaction import Redactor
from bot.restores import restore_kind
from runbook import precheck
from runbook.config import ConfigError, Settings
from runbook.revisions import AlembicProject, RevisionError
from runbook.state import StateError, Store
from runbook.target import TargetError

log = logging.getLogger(__name__)


class Flows:
    def __init__(self, settings: Settings, store: Store, client: WebClient, *,
                 redactor: Redactor, max_workers: int = 4, max_queued: int = 64):
        self.settings = settings
        self.store = store
        self.client = client
        self.redactor = redactor
        self.gateway = SlackGateway(client, redactor)
        self.work = WorkQueue(redactor, max_workers=max_workers, max_queued=max_queued)
        self.replies = Replies(settings, store, self.gateway, redactor)
        self._projects: dict[str, AlembicProject] = {}
        self._projects_lock = threading.Lock()
        self._homes_lock = threading.Lock()
        self._homes_in_flight: set[str] = set()
        self.approvals = approvals.ApprovalService(settings, store, client, redactor=redactor,
                                                   submit=self.submit_call,
                                                   user_errors=(TargetError, RevisionError))
        from bot.escalate import Escalator

        self.escalator = Escalator(settings, store, client, redactor=redactor)
        self.approvals.register(restore_kind(settings, store, on_progress=self.approvals.progress,
                                             on_failed=self.escalator.after_restore))
        self.admission = Admission(settings, self.replies, self.approvals.group_members)
        from bot.migrations import Migrations

        self.migrations = Migrations(self, escalate=self.escalator.escalate, after_run=self.escalator.after_run)
        self.backups = Backups(settings, self.replies, self.approvals)
        # the handler of each /migrate action (bot.commands.ACTIONS), grouped by runbook section
        self.handlers: dict[str, Callable[[Command, Origin], None]] = {
            **Checks(settings, self.replies, self.project).handlers(),
            **Runs(settings, self.replies, self.migrations).handlers(),
            **self.backups.handlers(),
            **Alerts(settings, self.replies, self.escalator).handlers()}

    def environment_names(self) -> list[str]:
        return list(self.settings.environments)

    def project(self, name: str) -> AlembicProject:
        """One AlembicProject per environment, so a warm bot keeps its parsed scripts."""
        with self._projects_lock:
            if name not in self._projects:
                self._projects[name] = precheck.project_of(self.settings.environments[name])
            return self._projects[name]

    # -- work on the executor -------------------------------------------------------------

    def submit(self, command: Command, origin: Origin) -> Future:
        return self.submit_call(self._run, command, origin)

    def submit_call(self, fn: Callable[..., Any], *args: Any) -> Future:
        """Any work (a command, a click, an approved action) on the bounded executor (`Busy` when full)."""
        return self.work.submit(fn, *args)

    def submit_click(self, click: "approvals.Click") -> Future:
        """An Approve/Reject click, acked already; decided on the executor."""
        return self._submit_click(self.approvals.handle_click, click)

    def submit_migration_click(self, click: "approvals.Click") -> Future:
        """A "Back up first" or recommended-action click (bot/migrations.py), acked already."""
        return self._submit_click(self.migrations.handle_click, click)

    def _submit_click(self, handle: Callable[..., Any], click: "approvals.Click") -> Future:
        """A click refused because the executor is full is audited like any refused click (the listener
        then tells the clicker, bot.app._report_submit_failure); it changed nothing."""
        try:
            return self.submit_call(handle, click)
        except Busy as exc:
            action = click.action_id.split("_", 1)[-1] if click.action_id else "click"
            try:
                self.store.record(actor=(click.user_id or "unknown")[:120], action=action[:40], environment=None,
                                  outcome="busy", summary=f"click refused, nothing was changed: {exc}",
                                  details={"button_value": click.value[:40], "action_id": click.action_id[:80]})
            except Exception as inner:  # the state database may be down too: the refusal still reaches the user
                log.error("could not record a click refused as busy: %s", self.redactor(repr(inner)))
            raise

    def submit_home(self, user_id: str) -> Future | None:
        """`app_home_opened` (acked already): the user's Home tab is read and published on the executor.
        A user whose Home is still being prepared is not queued again (tab switching sends many)."""
        with self._homes_lock:
            if user_id in self._homes_in_flight:
                return None
            self._homes_in_flight.add(user_id)
        try:
            return self.submit_call(self.publish_home, user_id)
        except Exception:
            with self._homes_lock:
                self._homes_in_flight.discard(user_id)
            raise

    def publish_home(self, user_id: str) -> bool:
        """The App Home tab (issue 14 §4): where each environment stands, published for `user_id`
        through the gateway. Read-only: no event is recorded. False when Slack refused it (logged)."""
        from bot.home_blocks import home_view
        from runbook.home import home

        try:
            with self._homes_lock:
                self._homes_in_flight.discard(user_id)   # from here on a new opening publishes again
            view = home_view(home(self.settings, self.store, project=self.project))
            return self.gateway.publish_home(user_id, view) is None
        except StateError as exc:
            log.error("the Home tab of %s was not published: %s", user_id[:40], self.redactor(str(exc)))
            return False

    @property
    def submitted(self) -> int:
        """How many pieces of work were ever handed to the executor."""
        return self.work.submitted

    def wait_idle(self, timeout: float, *, after: int | None = None) -> bool:
        """Until no work is queued or running (bot.flows.work.WorkQueue.wait_idle)."""
        return self.work.wait_idle(timeout, after=after)

    def reconcile(self, *, settle_seconds: float = 30.0) -> dict[str, list[str]]:
        """Stored messages behind the state database (updates lost to a Slack outage) brought up to date
        by their stored ts: approval requests, live monitors, backup progress messages. Each kind is
        tried on its own: one failing does not stop the others. What was updated, by kind."""
        done: dict[str, list[str]] = {}
        for kind, reconcile in (("requests", self.approvals.reconcile),
                                ("monitors", self.migrations.reconcile_monitors),
                                ("backups", self.backups.reconcile_backups)):
            try:
                done[kind] = list(reconcile(settle_seconds=settle_seconds))
            except Exception as exc:  # the next tick retries
                log.error("reconciling %s failed: %s", kind, self.redactor(repr(exc)))
                done[kind] = []
        if any(done.values()):
            log.info("messages brought up to date: %s", ", ".join(f"{len(v)} {k}" for k, v in done.items() if v))
        return done

    def shutdown(self, wait: bool = True) -> None:
        self.work.shutdown(wait)

    # -- commands -------------------------------------------------------------------------

    def _run(self, command: Command, origin: Origin) -> None:
        handler = self.handlers[command.action]
        try:
            if not self.admission.admitted(command, origin):
                return
            handler(command, origin)
        except (ConfigError, TargetError, RevisionError, StateError) as exc:
            self.replies.fail(command, origin, str(exc))
        except Exception as exc:  # the user gets one line, the log gets the (redacted) trace
            log.error("%s failed: %s", command.text, self.redactor(repr(exc)),
                      exc_info=self.redactor.safe_exc_info(exc))
            self.replies.fail(command, origin, f"`{command.text}` failed unexpectedly ({type(exc).__name__}); "
                                               "the bot's log has the details.")

    def admits(self, command: Command, origin: Origin) -> bool:
        """Whether a button that runs what a command runs passes what the command would (Admission.admits)."""
        return self.admission.admits(command, origin)

    # -- answers: bot/migrations.py and bot/live_run.py answer through the Flows they are given ------

    def actor(self, origin: Origin) -> str:
        return self.replies.actor(origin)

    def post(self, origin: Origin, message: "blocks.Message", thread_ts: str | None = None, *,
             stateful: bool = False) -> str | None:
        return self.replies.post(origin, message, thread_ts, stateful=stateful)

    def deliver(self, origin: Origin, message: "blocks.Message", *, thread_ts: str | None = None,
                stateful: bool = False) -> tuple[str | None, str | None]:
        return self.replies.deliver(origin, message, thread_ts=thread_ts, stateful=stateful)

    def update(self, channel: str, ts: str, message: "blocks.Message", *, final: bool = False) -> bool:
        return self.replies.update(channel, ts, message, final=final)

    def reply_ephemeral(self, origin: Origin, message: "blocks.Message") -> None:
        self.replies.reply_ephemeral(origin, message)

    def respond(self, origin: Origin, message: "blocks.Message", *, why: str) -> bool:
        return self.replies.respond(origin, message, why=why)
