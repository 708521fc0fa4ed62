"""One function per command: calls runbook/, records events, posts messages.

Slack listeners hand commands to `Flows.submit`, which returns at once; the work
runs on our own bounded executor, never on Bolt's listener pool (design rule 1).
"""
from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

from slack_sdk import WebClient

from bot import approvals, blocks
from bot.gateway import Posted, SlackGateway
from bot.commands import Command, backup_args, escalate_args, restore_args
from bot.origin import Origin  # noqa: F401  (re-exported: callers and tests import it from here too)
from bot.redaction import Redactor  # noqa: F401  (re-exported, as Origin)
from bot.restores import restore_kind, restore_with_yes  # noqa: F401  (restore_with_yes re-exported, as Origin)
from runbook import authz, precheck
from runbook.config import ConfigError, Settings
from runbook.revisions import AlembicProject, RevisionError
from runbook.state import StateError, Store
from runbook.target import TargetError

log = logging.getLogger(__name__)


def channel_refusal(settings: Settings, channel_id: str | None) -> "blocks.Mrkdwn | None":
    """None when `/migrate` may be typed in `channel_id` (slack.command_channels: channel IDs and
    `dm`; default slack.channel and DMs); else the one line saying where to go instead. Pure: the
    ack gives the line at once, and Flows records the refusal."""
    if settings.slack is None:
        return None          # no channel configured: the bot answers wherever it is asked
    allowed = settings.slack.allowed_command_channels
    if channel_id in allowed or ("dm" in allowed and (channel_id or "").startswith("D")):
        return None
    places = [blocks.channel(c) for c in allowed if c != "dm"]
    if "dm" in allowed:
        places.append(blocks.Mrkdwn("a direct message with the bot"))
    if not places:
        return blocks.mrkdwn("`/migrate` is not taken in any channel (see slack.command_channels); nothing was done.")
    listed = ", ".join(places[:-1]) + " or " + places[-1] if len(places) > 1 else places[0]
    return blocks.mrkdwn("`/migrate` is not taken in this channel: use it in {}. Nothing was done.",
                         blocks.Mrkdwn(listed))


class Busy(Exception):
    """The executor's queue is full."""


class Flows:
    def __init__(self, settings: Settings, store: Store, client: WebClient, *,
                 redactor: "Redactor", max_workers: int = 4, max_queued: int = 64):
        self.settings = settings
        self.store = store
        self.client = client
        self.redactor = redactor
        self.gateway = SlackGateway(client, redactor)
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="runbook-flow")
        self._slots = threading.BoundedSemaphore(max_queued)
        self._projects: dict[str, AlembicProject] = {}
        self._projects_lock = threading.Lock()
        self._in_flight = 0
        self._submitted = 0
        self._idle = threading.Condition()
        self._homes_in_flight: set[str] = set()
        self.approvals = approvals.ApprovalService(settings, store, client, redactor=redactor,
                                                   submit=self.submit_call,
                                                   user_errors=(TargetError, RevisionError))
        from bot.escalate import Escalator

        self.escalator = Escalator(settings, store, client, redactor=redactor)
        self.approvals.register(restore_kind(settings, store, on_progress=self.approvals.progress,
                                             on_failed=self.escalator.after_restore))
        from bot.migrations import Migrations

        self.migrations = Migrations(self, escalate=self.escalator.escalate, after_run=self.escalator.after_run)

    # -- plumbing -------------------------------------------------------------------------

    def environment_names(self) -> list[str]:
        return list(self.settings.environments)

    def project(self, name: str) -> AlembicProject:
        """One AlembicProject per environment, so a warm bot keeps its parsed scripts."""
        with self._projects_lock:
            if name not in self._projects:
                self._projects[name] = precheck.project_of(self.settings.environments[name])
            return self._projects[name]

    def submit(self, command: Command, origin: Origin) -> Future:
        return self.submit_call(self._run, command, origin)

    def submit_call(self, fn: Callable[..., Any], *args: Any) -> Future:
        """Any work (a command, a click, an approved action) on the bounded executor."""
        if not self._slots.acquire(blocking=False):
            raise Busy("the bot is busy with too many commands; try again in a minute")
        with self._idle:
            self._in_flight += 1
            self._submitted += 1
        future = self._executor.submit(self._logged, fn, *args)
        future.add_done_callback(self._finished)
        return future

    def _logged(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except Exception as exc:  # nobody waits on these futures: an escaped error would vanish
            log.error("%s failed: %s", getattr(fn, "__name__", "work"), self.redactor(repr(exc)),
                      exc_info=self.redactor.safe_exc_info(exc))
            return None

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
        with self._idle:
            if user_id in self._homes_in_flight:
                return None
            self._homes_in_flight.add(user_id)
        try:
            return self.submit_call(self.publish_home, user_id)
        except Exception:
            with self._idle:
                self._homes_in_flight.discard(user_id)
            raise

    def publish_home(self, user_id: str) -> bool:
        """The App Home tab (issue 14 §4): where each environment stands, published for `user_id`
        through the gateway. Read-only: no event is recorded. False when Slack refused it (logged)."""
        from bot.home_blocks import home_view
        from runbook.home import home

        try:
            with self._idle:
                self._homes_in_flight.discard(user_id)   # from here on a new opening publishes again
            view = home_view(home(self.settings, self.store, project=self.project))
            return self.gateway.publish_home(user_id, view) is None
        except StateError as exc:
            log.error("the Home tab of %s was not published: %s", user_id[:40], self.redactor(str(exc)))
            return False

    def _finished(self, _future: Future) -> None:
        self._slots.release()
        with self._idle:
            self._in_flight -= 1
            self._idle.notify_all()

    @property
    def submitted(self) -> int:
        """How many pieces of work were ever handed to the executor."""
        with self._idle:
            return self._submitted

    def wait_idle(self, timeout: float, *, after: int | None = None) -> bool:
        """Until no work is queued or running (the console demo and tests use it). With `after`,
        first until more than `after` pieces of work were submitted: the ack of a command comes
        back before its listener has handed the work over."""
        with self._idle:
            return self._idle.wait_for(
                lambda: self._in_flight == 0 and (after is None or self._submitted > after), timeout)

    def reconcile(self, *, settle_seconds: float = 30.0) -> dict[str, list[str]]:
        """Stored messages behind the state database (updates lost to a Slack outage) brought up to date
        by their stored ts: approval requests, live monitors, backup progress messages. Each kind is
        tried on its own: one failing does not stop the others. What was updated, by kind."""
        done: dict[str, list[str]] = {}
        for kind, reconcile in (("requests", self.approvals.reconcile),
                                ("monitors", self.migrations.reconcile_monitors),
                                ("backups", self.reconcile_backups)):
            try:
                done[kind] = list(reconcile(settle_seconds=settle_seconds))
            except Exception as exc:  # the next tick retries
                log.error("reconciling %s failed: %s", kind, self.redactor(repr(exc)))
                done[kind] = []
        if any(done.values()):
            log.info("messages brought up to date: %s", ", ".join(f"{len(v)} {k}" for k, v in done.items() if v))
        return done

    def reconcile_backups(self, *, settle_seconds: float = 30.0) -> list[int]:
        """Backup progress messages still showing a backup as running (or any state it left since):
        updated to its result, from the catalogue."""
        from datetime import timedelta

        from runbook import backup as backups
        from runbook.state.models import utcnow

        updated = []
        for item, channel, ts in backups.messages_behind(self.store, settled_before=utcnow() - timedelta(
                seconds=settle_seconds)):
            if self.update(channel, ts, blocks.backup_message(item.environment, item)):
                backups.mark_message(self.store, item.id, item.status)
                updated.append(item.id)
        return updated

    def shutdown(self, wait: bool = True) -> None:
        self._executor.shutdown(wait=wait, cancel_futures=not wait)

    def _run(self, command: Command, origin: Origin) -> None:
        handler: Callable[[Command, Origin], None] = getattr(self, "do_" + command.action.replace("-", "_"))
        try:
            if not self._admitted(command, origin):
                return
            handler(command, origin)
        except (ConfigError, TargetError, RevisionError, StateError) as exc:
            self._fail(command, origin, str(exc))
        except Exception as exc:  # the user gets one line, the log gets the (redacted) trace
            log.error("%s failed: %s", command.text, self.redactor(repr(exc)), exc_info=self.redactor.safe_exc_info(exc))
            self._fail(command, origin, f"`{command.text}` failed unexpectedly ({type(exc).__name__}); "
                                        "the bot's log has the details.")

    def _admitted(self, command: Command, origin: Origin) -> bool:
        """Before any command runs: typed where commands are taken, not a replay of a request that
        was run already, and by someone allowed to (runbook.authz decides). A refusal is one line
        (the channel refusal was the ack's already) and an event."""
        name = self.settings.environment(command.environment)[0] if command.environment else None
        if origin.source == "slack" and command.action != "help":
            where = channel_refusal(self.settings, origin.channel_id)
            if where is not None:
                self.record(origin, command.action, name, "unauthorised", where,
                            {"channel": origin.channel_id, "command": command.text})
                return False
        if command.changes_state and origin.request_key:
            from runbook.state.replays import first_delivery

            if not first_delivery(self.store, origin.request_key, claimed_by=self.actor(origin)):
                log.warning("ignored a replayed request: %s by %s", command.text[:200], origin.user_id[:40])
                self.record(origin, command.action, name, "replayed", f"a replay of `{command.text}` was ignored")
                return False
        permission = command.permission
        if permission is None or name is None:
            return True
        try:
            if authz.allowed(self.settings, name, permission, self.actor(origin),
                             members_of=self.approvals.group_members):
                return True
            line = blocks.Mrkdwn(authz.refusal_line(self.settings, name, permission, mention=blocks.mention,
                                                    escape=blocks.escape))
        except approvals.Refusal as exc:       # a user group Slack would not expand
            line = exc.text
        self.record(origin, command.action, name, "unauthorised", line, {"permission": permission})
        self.reply_ephemeral(origin, blocks.error_message(line))
        return False

    def admits(self, command: Command, origin: Origin) -> bool:
        """Whether `command` from `origin` passes what every typed command passes (`_admitted`: the channel,
        replays, runbook.authz). A button that runs what a command runs ("Rehearse first",
        bot/migrations.py) is held to the same rules through this; a refusal is answered and recorded here
        (the channel's too, which for a typed command the ack answered already)."""
        if self._admitted(command, origin):
            return True
        where = channel_refusal(self.settings, origin.channel_id) if origin.source == "slack" else None
        if where is not None:
            self.reply_ephemeral(origin, blocks.error_message(where))
        return False

    def _fail(self, command: Command, origin: Origin, text: str) -> None:
        text = self.redactor(text)
        try:
            self.record(origin, command.action, command.environment, "error", text)
        except Exception as exc:  # the state database may be what failed: the user still gets the one line
            log.error("could not record an event: %s", self.redactor(str(exc)))
        self.reply_ephemeral(origin, blocks.error_message(text))

    def actor(self, origin: Origin) -> str:
        return origin.user_id

    def record(self, origin: Origin, action: str, environment: str | None, outcome: str,
               summary: str = "", details: dict[str, Any] | None = None):
        return self.store.record(actor=self.actor(origin), action=action, environment=environment,
                                 outcome=outcome, summary=self.redactor(summary),
                                 details=self.redactor.tree(details or {}))

    # -- posting --------------------------------------------------------------------------

    def channel_for(self, origin: Origin) -> str:
        if origin.channel_id:
            return origin.channel_id
        if self.settings.slack is not None:
            return self.settings.slack.channel
        raise ConfigError("slack.channel is not configured and the command came from no channel")

    def post(self, origin: Origin, message: "blocks.Message", thread_ts: str | None = None, *,
             stateful: bool = False) -> str | None:
        """Post a durable message (and its files) in the command's channel; returns its ts, or None
        when it could not go there (see `deliver`)."""
        channel, ts = self.deliver(origin, message, thread_ts=thread_ts, stateful=stateful)
        return ts if channel == self.channel_for(origin) else None

    def deliver(self, origin: Origin, message: "blocks.Message", *, thread_ts: str | None = None,
                stateful: bool = False) -> tuple[str | None, str | None]:
        """Post in the command's channel; where the bot cannot post (not invited, a private channel,
        a DM), the answer goes another way (design rule 19, README "Slack set-up"):
        - a stateful message (updated later, or with a thread others act in: `stateful`), or one with
          files (a response_url carries none), goes to `slack.channel`, and the user gets a one-line
          pointer to it through the command's response_url;
        - any other answer goes through the response_url itself, seen only by the user.
        Returns (channel, ts) of the durable message, (None, None) when there is none."""
        channel = self.channel_for(origin)
        posted = self.gateway.post(channel, message, thread_ts=thread_ts)
        if posted.ts is not None or posted.failure is None or not posted.failure.unreachable \
                or thread_ts is not None or not origin.channel_id:
            self._file_failed(origin, posted)
            return (posted.channel, posted.ts) if posted.ts is not None else (None, None)
        home = self.settings.slack.channel if self.settings.slack is not None else None
        if (stateful or message.files) and home and home != channel:
            moved = self.gateway.post(home, message)
            if moved.ts is not None:
                self._file_failed(origin, moved)
                self.respond(origin, blocks.moved_pointer(home, message.text), why=str(posted.failure))
                return moved.channel, moved.ts
        self.respond(origin, message, why=str(posted.failure))
        return None, None

    def _file_failed(self, origin: Origin, posted: Posted) -> None:
        """The message is in Slack but a file of it is not: the user hears it as it is."""
        if posted.ts is not None and posted.file_failure is not None:
            self.reply_ephemeral(origin, blocks.error_message(
                f"The message was posted, but its file could not be attached ({posted.file_failure}); "
                "the bot's log has the details."))

    # a final update (a run's or a backup's last word) outlasts this many rate limits before it gives up
    FINAL_UPDATE_ATTEMPTS = 6

    def update(self, channel: str, ts: str, message: "blocks.Message", *, final: bool = False) -> bool:
        """Replace a posted message in place (chat.update by its stored ts); False if it did not
        happen (a rate limit included: `gateway.cooling(channel)` then says for how long). A `final`
        update is the state people are left with: it waits out Slack's Retry-After and tries again
        rather than being dropped."""
        import time

        for _ in range(self.FINAL_UPDATE_ATTEMPTS if final else 1):
            if final:
                time.sleep(self.gateway.cooling(channel))
            failure = self.gateway.update(channel, ts, message)
            if failure is None:
                return True
            if not failure.rate_limited:
                return False
        if final:
            log.error("undeliverable: the final state of message %s in %s was not written (rate limited "
                      "%d times)", ts, channel, self.FINAL_UPDATE_ATTEMPTS)
        return False

    def reply_ephemeral(self, origin: Origin, message: "blocks.Message") -> None:
        """Transient feedback only the user sees: an ephemeral in the command's channel, else (the bot
        is not there, or the command came from a DM) through the command's response_url."""
        if origin.source != "slack":
            self.gateway.prepare(message, attach=False)     # still checked: the CLI shares these renderers
            return
        failure = None
        if origin.channel_id:
            failure = self.gateway.ephemeral(origin.channel_id, origin.user_id, message)
            if failure is None or not failure.unreachable:
                return
        self.respond(origin, message, why=str(failure) if failure else "the command came from no channel")

    def respond(self, origin: Origin, message: "blocks.Message", *, why: str) -> bool:
        """Through the command's response_url (5 uses in 30 minutes: a command needs at most two,
        its answer or a pointer, and an error after a pointer). When that fails too, one line in the
        log says what was lost: nothing else can reach the user."""
        failure = self.gateway.respond(origin.response_url, message) if origin.response_url else None
        if origin.response_url and failure is None:
            return True
        log.error("undeliverable: a reply to %s in %s could not be posted (%s) nor sent through the "
                  "response_url (%s): %s", origin.user_id or "?", origin.channel_id or "no channel", why,
                  failure or "the command has none", self.redactor(blocks.one_line(message.text, 120)))
        return False

    # -- commands -------------------------------------------------------------------------

    def do_help(self, command: Command, origin: Origin) -> None:
        """Slack gets the help in the ack itself (no Web API call); here it is only recorded."""
        self.record(origin, "help", None, "ok")

    def do_precheck(self, command: Command, origin: Origin) -> None:
        from runbook.backup import last_backup_at

        name, env = self.settings.environment(command.environment)
        from runbook.review import acknowledgements

        from runbook import ops

        project = self.project(name)
        report = precheck.run_precheck(name, env, project=project,
                                       last_backup_at=last_backup_at(self.store, name),
                                       acknowledgements=lambda: acknowledgements(self.store, name),
                                       rehearsal=lambda current, head: ops.rehearsal_of_range(
                                           self.store, name, env, current, head, project))
        self.record(origin, "precheck", name, report.verdict, "; ".join(report.reasons)[:2000],
                    {"duration_seconds": round(report.duration_seconds, 3),
                     "checks": {c.name: c.status for c in report.checks},
                     "pending": [r.revision for r in (report.alembic.pending if report.alembic else [])]})
        self.post(origin, blocks.precheck_message(report))

    def do_ack_risk(self, command: Command, origin: Origin) -> None:
        """`/migrate ack-risk [env] REV reason` (issue 7): an approver of the environment records that a
        pending revision's HIGH risk rating was reviewed; the precheck then counts it as cleared. An
        append-only event, bound to the revision file as it is now."""
        from bot.commands import ack_risk_args
        from bot.review_blocks import ack_message
        from runbook import review

        revision, reason = ack_risk_args(command.args)     # who may: the ack_risk permission (_admitted)
        name, env = self.settings.environment(command.environment)
        project = self.project(name)
        with precheck.target_of(env).connect("ack-risk") as conn:
            current = project.current(conn)
        try:
            ack = review.acknowledge(self.store, name, env, revision, reason, self.actor(origin), project=project,
                                     current=current)
        except review.AcknowledgeError as exc:
            self._fail(command, origin, f"`/migrate ack-risk` refused: {exc}")
            return
        self.post(origin, ack_message(ack))

    def do_status(self, command: Command, origin: Origin) -> None:
        name, env = self.settings.environment(command.environment)
        state = precheck.alembic_status(env, project=self.project(name))
        last = self.store.last_event(name)
        from runbook.incident import latest_run

        self.record(origin, "status", name, "ok",
                    f"current {', '.join(state.current) or 'none'}, {len(state.pending)} pending")
        self.post(origin, blocks.status_message(name, state, last, latest_run(self.store, name)))

    def do_activity(self, command: Command, origin: Origin) -> None:
        """§4 on demand: the same snapshot the watch takes, against the environment's thresholds."""
        from runbook.watch import live_activity

        name, env = self.settings.environment(command.environment)
        snapshot, target = live_activity(env)
        self.record(origin, "activity", name, "ok",
                    f"{len(snapshot.long_queries)} long, {len(snapshot.idle_in_transaction)} idle in transaction, "
                    f"{len(snapshot.lock_waits)} waiting on locks")
        self.post(origin, blocks.activity_message(name, snapshot, target))

    def do_watch(self, command: Command, origin: Origin) -> None:
        """`/migrate watch [env] on | off | status`: the pause switch lives in the state database."""
        from runbook.watch import AlertBook

        name, env = self.settings.environment(command.environment)
        verb = command.args[0] if command.args else "status"
        book = AlertBook(self.store)
        changed = None
        if verb in ("on", "off"):
            changed = book.set_paused(name, verb == "off", self.actor(origin))
        self.record(origin, "watch", name, "ok", verb if changed is not False else f"{verb} (unchanged)")
        self.post(origin, blocks.watch_message(name, book.state(name), book.alerts(name), env.watch.every_seconds,
                                               changed=changed))

    def do_run(self, command: Command, origin: Origin) -> None:
        """`/migrate run [env] [head | +1 | REV]` (§3): resolved against the scripts, refused up front in
        one line or asked for approval; bot/migrations.py runs it once approved, watched live."""
        from bot.commands import migration_args

        self._ask_migration(command, origin, "upgrade", *migration_args(command.args, "run"))

    def do_rollback(self, command: Command, origin: Origin) -> None:
        """`/migrate rollback [env] [-1 | REV]` (§6.1): an irreversible downgrade is refused before anyone
        is asked (pointing to `/migrate restore`); otherwise the same approval and supervised run."""
        from bot.commands import migration_args

        self._ask_migration(command, origin, "downgrade", *migration_args(command.args, "rollback"))

    def _ask_migration(self, command: Command, origin: Origin, direction: str, typed: str,
                       override: str | None) -> None:
        from bot.migrations import Refused

        name, _env = self.settings.environment(command.environment)
        try:
            request = self.migrations.request(name, direction, typed, self.actor(origin), command.text,
                                              origin.channel_id, override=override)
        except Refused as exc:
            self._fail(command, origin, str(exc))
            return
        if origin.channel_id and request.channel != origin.channel_id:
            self.reply_ephemeral(origin, blocks.approval_pointer(request.channel, command.action, name))

    def do_rehearse(self, command: Command, origin: Origin) -> None:
        """`/migrate rehearse [env] [head | +1 | REV]` (issue 16): the pending range on a restored copy, on
        this executor like every long command (bot.migrations.Migrations.rehearse, which the "Rehearse
        first" button of an approval request runs too)."""
        from bot.commands import rehearse_args

        name, _env = self.settings.environment(command.environment)
        self.migrations.rehearse(name, rehearse_args(command.args), origin)

    def do_validate(self, command: Command, origin: Origin) -> None:
        """`/migrate validate [env]` (§5): the report; a failure gets the §6.5 recommendation in its thread."""
        name, _env = self.settings.environment(command.environment)
        self.migrations.validate(name, origin)

    def do_restore(self, command: Command, origin: Origin) -> None:
        """`/migrate restore [env] ID [tables=a,b]` (§6.2–6.3): checked against the catalogue and the
        backup, shown with what it replaces, then asked for approval; the approvals service runs it."""
        from runbook import backup as backups

        name, env = self.settings.environment(command.environment)
        backup_id, tables = restore_args(command.args)
        try:
            plan = backups.plan_restore(name, env, self.store, backup_id, tables=tables)
            if plan.blockers:
                raise approvals.ApprovalError("; ".join(plan.blockers))
            request = self.approvals.request("restore", name, self.actor(origin), backups.plan_to_params(plan),
                                             channel=origin.channel_id)
        except (backups.BackupError, approvals.ApprovalError) as exc:
            self._fail(command, origin, f"`{command.text}` refused: {exc}")
            return
        if origin.channel_id and request.channel != origin.channel_id:
            self.reply_ephemeral(origin, blocks.approval_pointer(request.channel, "restore", name))

    def do_backup(self, command: Command, origin: Origin) -> None:
        """`/migrate backup [env] [schema | tables=a,b]` (§2): verified, catalogued; a dump that runs
        longer than a few seconds posts one progress message and updates it, then the result."""
        from runbook import backup as backups

        name, env = self.settings.environment(command.environment)
        kind, tables = backup_args(command.args)
        live = BackupProgress(self, origin, name, kind, tables)
        try:
            made = backups.backup(name, env, self.store, kind=kind, tables=tables, actor=self.actor(origin),
                                  progress=live, progress_every=live.every)
        except backups.BackupFailed as exc:
            made = exc.backup
        except backups.BackupError as exc:
            live.finish(blocks.error_message(f"`{command.text}` refused: {exc}"), or_post=False)
            self._fail(command, origin, f"`{command.text}` refused: {exc}")
            return
        self.record(origin, "backup", name, made.status,
                    f"#{made.id} {made.name}: {made.status}" + (f" ({made.error})" if made.error else
                                                                 f", level {made.level}"),
                    {"backup_id": made.id, "kind": made.kind, "level": made.level, "size_bytes": made.size_bytes,
                     "sha256": made.sha256, "location": made.location, "tables": list(tables)})
        live.finish(blocks.backup_message(name, made), status=made.status)

    def do_backups(self, command: Command, origin: Origin) -> None:
        """`/migrate backups [env]`: the catalogue, newest first."""
        from runbook import backup as backups

        name, _env = self.settings.environment(command.environment)
        found = backups.list_backups(self.store, name, limit=30)
        self.record(origin, "backups", name, "ok", f"{len(found)} listed")
        self.post(origin, blocks.backups_message(name, found))

    def do_escalate(self, command: Command, origin: Origin) -> None:
        """`/migrate escalate [env] [1 | 2 | 3] [reason]` (§7.2): 1 points to the runbook section that
        fits the current state; 2 tags the owner with the incident summary; 3 is the emergency (the
        owner and @here, pause the application, the pause hook). The escalator posts and records it."""
        name, _env = self.settings.environment(command.environment)
        level, reason = escalate_args(command.args)
        try:
            report = self.escalator.escalate(name, level, reason=reason, actor=self.actor(origin),
                                             origin_channel=origin.channel_id)
        except ValueError as exc:
            self._fail(command, origin, f"`{command.text}` refused: {exc}")
            return
        if report.ts is None:
            self.reply_ephemeral(origin, blocks.error_message(
                f"The level {level} escalation was recorded, but its message was not posted "
                f"({report.slack_error or 'no channel'}): tell the owner another way."))
            return
        if report.file_error:
            self.reply_ephemeral(origin, blocks.error_message(
                f"The level {level} escalation was posted, but its incident file could not be attached "
                f"({report.file_error}): `runbook-bot incident` prints it."))
        if origin.channel_id and report.channel != origin.channel_id:
            self.reply_ephemeral(origin, blocks.escalation_pointer(report.channel, level, name))


def post_message(client: Any, redactor: "Redactor", channel: str, message: "blocks.Message", *,
                 thread_ts: str | None = None, broadcast: bool = False) -> Posted:
    """Post a durable message through the gateway (redacted, validated, within the text budget) and
    upload its files into its thread. `Posted.ts` is set once the message is in Slack, even when a
    file of it failed (`Posted.file_failure`); `Posted.failure` says why it is not.
    `broadcast`: a thread reply also shown in the channel."""
    return SlackGateway(client, redactor).post(channel, message, thread_ts=thread_ts, broadcast=broadcast)


class BackupProgress:
    """The progress callback of a Slack backup: after `post_after` seconds it posts one message,
    remembers its ts in the catalogue, and updates it every `every` seconds; `finish` turns it into
    the result (or posts the result when the dump was quick)."""

    post_after = 3.0
    every = 1.0
    update_every = 3.0

    def __init__(self, flows: "Flows", origin: Origin, environment: str, kind: str, tables: tuple[str, ...]):
        self.flows, self.origin, self.environment = flows, origin, environment
        self.kind, self.tables = kind, tables
        self.channel: str | None = None
        self.ts: str | None = None
        self.backup_id: int | None = None
        self._last_update = 0.0

    def __call__(self, progress: Any) -> None:
        import time

        from runbook.backup import remember_message

        if progress.elapsed < self.post_after:
            return
        message = blocks.backup_progress_message(self.environment, self.kind, self.tables, progress)
        if self.ts is None:
            # stateful: updated in place, so where the command's channel is closed to the bot it is
            # posted in slack.channel (and the user gets a pointer)
            self.channel, self.ts = self.flows.deliver(self.origin, message, stateful=True)
            self._last_update = time.monotonic()
            if self.ts and progress.backup_id is not None:
                self.backup_id = progress.backup_id
                remember_message(self.flows.store, progress.backup_id, self.channel, self.ts)
        elif time.monotonic() - self._last_update >= self.update_every and self.channel \
                and not self.flows.gateway.cooling(self.channel):
            self.flows.update(self.channel, self.ts, message)
            self._last_update = time.monotonic()

    def finish(self, message: "blocks.Message", *, or_post: bool = True, status: str | None = None) -> None:
        """`status`: the backup's, once its final view reached Slack (else the reconcile writes it)."""
        if self.ts is not None and self.channel is not None:
            if self.flows.update(self.channel, self.ts, message, final=True) and status and self.backup_id:
                from runbook.backup import mark_message

                mark_message(self.flows.store, self.backup_id, status)
        elif or_post:
            self.flows.post(self.origin, message)
