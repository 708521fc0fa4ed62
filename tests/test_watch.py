"""The scheduled watch (issue 5) against a real PostgreSQL, with Slack on LocalSlack.

The job function (bot.watch.WatchRunner.run) is driven directly with an injected clock and
slot, so alert lifetimes (grace, re-open window, escalation after 10 minutes) take no real
time; what the target reports is real: blocking sessions in threads (tests/support/sessions).
"""
from __future__ import annotations

import json
import os
import tempfile
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from bot.app import make_client
from bot.flows import Redactor
from bot.localslack import LocalSlack
from bot.watch import WatchMetrics, WatchRunner
from runbook.config import parse_settings
from runbook.state import Store
from runbook.watch import AlertBook
from tests.support.configs import config_text
from tests.support.sessions import Sessions
from tests.support.waiting import wait_for

OWNER = "U0OWNER001"
PASSWORD = "Watch-Db-Passw0rd"


class Clock:
    """The watch's idea of now; tests move it forward instead of waiting."""

    def __init__(self) -> None:
        self.now = datetime.now(timezone.utc).replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


def watch_config(tmp_path: Path, url: str, *, thresholds: dict | None = None, watch: dict | None = None,
                 escalation: str = "", state_url: str | None = None) -> Path:
    text = config_text(url, thresholds=thresholds or {}, state_url=state_url or f"sqlite:///{tmp_path}/state.db",
                       extra_env=f"    watch: {json.dumps(watch or {})}")
    path = tmp_path / "runbook-bot.yaml"
    path.write_text(text + escalation)
    return path


def load(path: Path):
    return parse_settings(path.read_text(), source=path)


@pytest.fixture(params=["sqlite", "postgresql"])
def state_url(request, tmp_path):
    """Alert state on either kind of state database (claims and conditional updates differ by dialect)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/state.db"
        return
    server = request.getfixturevalue("pg_server")
    name = "state_" + uuid.uuid4().hex[:10]
    yield server.create_database(name)
    server.drop_database(name)


@pytest.fixture
def slack():
    with LocalSlack(joined=("C0TESTCHAN", "C0RUNBOOK1")) as local:   # the configured channel, the commands' one
        yield local


class Watch:
    """A runner on a fresh state database, its clock, and a way to run one slot."""

    def __init__(self, settings, slack: LocalSlack, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.slack = slack
        self.clock = Clock()
        self.store = Store(settings.state_url)
        self.store.migrate()
        self.registry = registry or CollectorRegistry()
        self.runner = WatchRunner(settings, self.store, make_client("xoxb-watch-test", slack.url),
                                  redactor=Redactor(settings), metrics=WatchMetrics(self.registry), clock=self.clock)

    def run(self, advance: float = 60.0, environment: str = "production") -> str:
        return self.runner.run(environment, slot=self.clock.advance(advance))

    def posts(self) -> list:
        return [m for m in self.slack.messages(kind="message") if m.thread_ts is None]

    def replies(self) -> list:
        return [m for m in self.slack.messages(kind="message") if m.thread_ts is not None]

    def close(self) -> None:
        self.store.close()


@pytest.fixture
def make_watch(slack, tmp_path):
    made: list[Watch] = []

    def make(url: str, **kwargs) -> Watch:
        watch = Watch(load(watch_config(tmp_path, url, **kwargs)), slack)
        made.append(watch)
        return watch

    yield make
    for watch in made:
        watch.close()


def make_table(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
        conn.execute("INSERT INTO t SELECT generate_series(1, 3)")


def waited_longer_than(s: Sessions, pid: int, seconds: float) -> bool:
    rows = s.observe("SELECT extract(epoch FROM now() - waitstart) FROM pg_locks WHERE pid = %s AND NOT granted", (pid,))
    return bool(rows and rows[0][0] is not None and rows[0][0] > seconds)


def state_older_than(s: Sessions, pid: int, seconds: float) -> bool:
    rows = s.observe("SELECT extract(epoch FROM now() - state_change) FROM pg_stat_activity WHERE pid = %s", (pid,))
    return bool(rows and rows[0][0] > seconds)


def everything(slack: LocalSlack) -> str:
    return "\n".join(json.dumps(c.body, default=str) for c in slack.calls())


# -- lock waits ----------------------------------------------------------------------------------

def test_lock_queue_gives_one_alert_naming_the_root_blocker_updated_then_resolved(pg_url, make_watch, slack):
    make_table(pg_url)
    watch = make_watch(pg_url, thresholds={"lock_wait_seconds": 0.3},
                       escalation="  dashboards: {database: 'https://grafana.example/d/db?var=1&x=2'}\n")
    with Sessions(pg_url) as s:
        holder = s.open(autocommit=False, application_name="report-job")
        holder.execute("SELECT count(*) FROM t")                       # idle in transaction, holds ACCESS SHARE
        alter = s.start("ALTER TABLE t ADD COLUMN c int", application_name="migrator")
        s.wait_until_waiting(alter.pid)
        readers = [s.start("SELECT count(*) FROM t /* reader */") for _ in range(3)]
        for reader in readers:
            s.wait_until_waiting(reader.pid)
        assert watch.run() == "ran"
        assert watch.posts() == [], "nobody has waited 0.3 s yet, or the threshold is not applied"

        wait_for(lambda: waited_longer_than(s, alter.pid, 0.4), timeout=10, what="the ALTER to wait 0.4 s")
        assert watch.run() == "ran"
        [alert] = watch.posts()
        blocks = json.dumps(alert.blocks)
        assert f"root blocker pid {holder.info.backend_pid} holds up 4 sessions" in alert.text
        assert f"queue head: pid {alter.pid}" in blocks and "AccessExclusiveLock" in blocks
        assert "ALTER TABLE t ADD COLUMN c int" in blocks and "`report-job`" in blocks
        assert "<https://grafana.example/d/db?var=1&x=2|database>" in blocks     # dashboards link in the alert

        watch.run()
        watch.run()
        assert len(watch.posts()) == 1 and alert.updates == 0              # nothing changed: not edited
        watch.run(advance=300)
        assert len(watch.posts()) == 1 and alert.updates == 1              # figures refreshed by ts, never re-posted
        assert slack.calls("chat.update")[-1].body["ts"] == alert.ts

        holder.commit()                                                    # the root blocker lets go
        wait_for(lambda: alter.done and all(r.done for r in readers), timeout=10, what="the queue to drain")
        assert watch.run() == "ran"                                        # first poll without it: grace
        assert not alert.text.startswith("RESOLVED")
        watch.run()
        assert alert.text.startswith("RESOLVED: Lock wait production") and "lasted at least" in alert.text
        assert "Resolved" in json.dumps(alert.blocks)
        assert len(watch.posts()) == 1
    events = [(e.action, e.outcome) for e in watch.store.events()]
    assert events == [("alert", "resolved"), ("alert", "opened")]


# -- long queries and idle in transaction ----------------------------------------------------------

def test_pg_sleep_over_the_threshold_is_one_alert(pg_url, make_watch, slack):
    watch = make_watch(pg_url, thresholds={"long_query_seconds": 0.5}, watch={"resolve_after_seconds": 0})
    with Sessions(pg_url) as s:
        long = s.start("SELECT pg_sleep(60) /* nightly <@U0EVIL> & report */", application_name="etl")
        s.wait_until_active(long.pid, "nightly")
        wait_for(lambda: state_older_than(s, long.pid, 0.7), timeout=10, what="the query to pass 0.7 s")
        watch.run()
        watch.run()
        [alert] = watch.posts()
        assert f"pid {long.pid} running for" in alert.text and "Long query" in alert.text
        blocks = json.dumps(alert.blocks)
        assert "pg_sleep(60)" in blocks and "`etl`" in blocks
        assert "&lt;@U0EVIL&gt; &amp; report" in blocks and "<@U0EVIL>" not in blocks   # escaped, no mention
        s.observe("SELECT pg_cancel_backend(%s)", (long.pid,))
        wait_for(lambda: long.done, timeout=10, what="the cancelled query to end")
        watch.run()
        assert alert.text.startswith("RESOLVED: Long query")
        assert len(watch.posts()) == 1


def test_idle_in_transaction_session_is_one_alert(pg_url, make_watch):
    watch = make_watch(pg_url, thresholds={"idle_in_transaction_seconds": 0.5})
    with Sessions(pg_url) as s:
        idle = s.open(autocommit=False, application_name="forgotten-shell")
        idle.execute("SELECT 1 /* forgot to commit */")
        wait_for(lambda: state_older_than(s, idle.info.backend_pid, 0.7), timeout=10, what="0.7 s idle")
        for _ in range(3):
            watch.run()
        [alert] = watch.posts()
        assert f"pid {idle.info.backend_pid} idle in transaction for" in alert.text
        assert "forgot to commit" in json.dumps(alert.blocks) and "forgotten-shell" in json.dumps(alert.blocks)
        assert alert.updates == 0                 # what it says has not changed: no edit
        watch.run(advance=300)
        assert alert.updates == 1                 # its figures are refreshed every 5 minutes


# -- flapping -------------------------------------------------------------------------------------

def test_flapping_updates_one_message_and_never_reposts(pg_url, make_watch, state_url):
    """Gone for one poll (inside the grace): still open. Resolved then back inside the re-open window:
    the same message again. Only after the window does the same session make a new message."""
    watch = make_watch(pg_url, thresholds={"idle_in_transaction_seconds": 0.3}, state_url=state_url,
                       watch={"resolve_after_seconds": 60, "reopen_within_seconds": 900})
    with Sessions(pg_url) as s:
        conn = s.open(autocommit=False)
        pid = conn.info.backend_pid

        def idle_again() -> None:
            conn.execute("SELECT 1")
            wait_for(lambda: state_older_than(s, pid, 0.4), timeout=10, what="idle 0.4 s")

        idle_again()
        watch.run()
        [alert] = watch.posts()
        conn.commit()
        watch.run()                               # gone once: within the grace, nothing resolves
        assert not alert.text.startswith("RESOLVED")
        idle_again()
        watch.run()                               # back: the same alert, still open
        conn.commit()
        watch.run()
        watch.run()                               # gone for the whole grace: resolved
        assert alert.text.startswith("RESOLVED")
        idle_again()
        watch.run()                               # back within 15 min: re-opened, same message
        assert len(watch.posts()) == 1 and not alert.text.startswith("RESOLVED")
        assert "came back 1 time" in json.dumps(alert.blocks)
        conn.commit()
        watch.run()
        watch.run()
        assert alert.text.startswith("RESOLVED")
        assert len(watch.posts()) == 1 and len(watch.slack.calls("chat.postMessage")) == 1

        watch.clock.advance(3600)                 # long after: the same session idle again is a new incident
        idle_again()
        watch.run()
        assert len(watch.posts()) == 2
    outcomes = [e.outcome for e in reversed(watch.store.events())]
    assert outcomes == ["opened", "resolved", "reopened", "resolved", "opened"]


# -- escalation -------------------------------------------------------------------------------------

def escalating_to(owner: str, pg_url: str, make_watch, **kwargs) -> Watch:
    """A watch whose idle-in-transaction alerts tag `owner` after 10 minutes."""
    watch = make_watch(pg_url, thresholds={"idle_in_transaction_seconds": 0.3}, escalation="  escalate_after_seconds: 600\n",
                       **kwargs)
    watch.settings = watch.runner.settings = watch.settings.model_copy(update={"escalation": watch.settings.escalation.model_copy(
        update={"owner": watch.settings.escalation.owner.model_copy(update={"slack": owner})})})
    return watch


def idle_in_transaction_alert(s: Sessions, watch: Watch):
    """A session idle in its transaction for 0.4 s, and the alert the watch posts about it."""
    conn = s.open(autocommit=False)
    conn.execute("SELECT 1")
    wait_for(lambda: state_older_than(s, conn.info.backend_pid, 0.4), timeout=10, what="idle 0.4 s")
    watch.run()
    [alert] = watch.posts()
    return alert


@pytest.mark.parametrize("owner, mention", [("U0OWNER001", "<@U0OWNER001>"), ("S0ONCALL01", "<!subteam^S0ONCALL01>")])
def test_escalation_tags_the_owner_once_in_the_thread(pg_url, make_watch, owner, mention, state_url):
    watch = escalating_to(owner, pg_url, make_watch, state_url=state_url)
    with Sessions(pg_url) as s:
        alert = idle_in_transaction_alert(s, watch)
        watch.run(advance=300)
        assert watch.replies() == []                          # 5 min open: not yet
        watch.run(advance=301)
        [tag] = watch.replies()
        assert tag.thread_ts == alert.ts and tag.text.startswith(mention)
        assert "open for 10 min" in tag.text
        for _ in range(3):
            watch.run(advance=600)
        assert len(watch.replies()) == 1                      # once
    assert [e.outcome for e in watch.store.events(action="alert")][0] == "escalated"


def test_slack_out_of_reach_when_an_escalation_is_due_leaves_it_to_a_later_poll(pg_url, make_watch, caplog):
    """Slack unreachable past the client's retries (a network failure, not an error answer): the poll ends its
    Slack work with one log line rather than raising, and the owner is tagged at the first poll after Slack is
    back: the escalation's claim is released, not kept by a tag that never went out."""
    watch = escalating_to(OWNER, pg_url, make_watch)
    reachable = watch.runner.gateway.client
    with LocalSlack() as gone:
        unreachable = make_client("xoxb-watch-test", gone.url)         # its port closed once it stops
    with Sessions(pg_url) as s:
        alert = idle_in_transaction_alert(s, watch)
        watch.runner.gateway.client = unreachable
        assert watch.run(advance=601) == "ran"                          # due, but Slack cannot be reached
        assert "the watch of production stopped posting for this poll" in caplog.text
        assert watch.replies() == []
        watch.runner.gateway.client = reachable
        watch.run(advance=60)
        [tag] = watch.replies()
        assert tag.thread_ts == alert.ts and tag.text.startswith(f"<@{OWNER}>")
    assert [e.outcome for e in watch.store.events(action="alert")][0] == "escalated"


def test_kinds_left_out_of_escalate_kinds_never_escalate(pg_url, make_watch):
    watch = make_watch(pg_url, thresholds={"idle_in_transaction_seconds": 0.3},
                       escalation="  escalate_after_seconds: 60\n  escalate_kinds: [lock_wait, unreachable]\n")
    with Sessions(pg_url) as s:
        conn = s.open(autocommit=False)
        conn.execute("SELECT 1")
        wait_for(lambda: state_older_than(s, conn.info.backend_pid, 0.4), timeout=10, what="idle 0.4 s")
        for _ in range(4):
            watch.run(advance=120)
        assert len(watch.posts()) == 1 and watch.replies() == []


# -- an unreachable target ---------------------------------------------------------------------------

def test_target_going_down_gives_one_alert_and_one_recovery(make_watch, slack):
    """A private server is stopped and started again: one 'cannot reach', one recovery, no secret."""
    os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.gettempdir())
    import pgserver

    data_dir = Path(tempfile.mkdtemp(prefix="rbwd-", dir="/tmp"))
    server = pgserver.get_server(data_dir, cleanup_mode="stop")
    try:
        url = server.get_uri()
        watch = make_watch(url.replace("postgres:@", f"postgres:{PASSWORD}@", 1) if "postgres:@" in url else url,
                           watch={"resolve_after_seconds": 0})
        assert watch.run() == "ran" and watch.posts() == []
        server.cleanup()                                     # the target goes down
        for _ in range(4):
            assert watch.run() == "ran"
        [alert] = watch.posts()
        assert alert.text.startswith(":electric_plug: Cannot reach production")
        assert "cannot connect" in json.dumps(alert.blocks)
        state = AlertBook(watch.store).state("production")
        assert state.last_poll_ok is False and state.last_error
        server = pgserver.get_server(data_dir, cleanup_mode="stop")   # and comes back
        watch.run()
        watch.run()
        assert alert.text.startswith("REACHABLE AGAIN") and len(watch.posts()) == 1
        assert AlertBook(watch.store).state("production").last_poll_ok is True
        assert PASSWORD not in everything(slack)
    finally:
        server.cleanup()


def test_the_monitor_session_has_its_own_timeouts_and_name(pg_url, make_watch, monkeypatch):
    """The poll runs on a connection with the watch's statement_timeout and lock_timeout, named so
    that every check leaves it out (it never shows up in, or blocks, what it reports)."""
    import runbook.watch as watch_module

    seen: dict = {}
    real_poll = watch_module.poll

    def recording_poll(conn, **kwargs):
        for name in ("statement_timeout", "lock_timeout", "application_name"):
            seen[name] = conn.execute(f"SHOW {name}").fetchone()[0]
        return real_poll(conn, **kwargs)

    monkeypatch.setattr(watch_module, "poll", recording_poll)
    watch = make_watch(pg_url, watch={"lock_timeout": "150ms", "statement_timeout": "3s"})
    assert watch.run() == "ran"
    assert seen == {"statement_timeout": "3s", "lock_timeout": "150ms", "application_name": "runbook-bot/watch"}


# -- pause switch, metrics -----------------------------------------------------------------------------

def test_paused_environment_is_not_polled(pg_url, make_watch):
    watch = make_watch(pg_url, thresholds={"idle_in_transaction_seconds": 0.3})
    book = AlertBook(watch.store)
    assert book.set_paused("production", True, "U0TESTER1") is True
    assert book.set_paused("production", True, "U0TESTER1") is False          # already off
    with Sessions(pg_url) as s:
        conn = s.open(autocommit=False)
        conn.execute("SELECT 1")
        wait_for(lambda: state_older_than(s, conn.info.backend_pid, 0.4), timeout=10, what="idle 0.4 s")
        assert watch.run() == "paused" and watch.posts() == []
        assert book.state("production").last_poll_at is None
        book.set_paused("production", False, "U0TESTER1")
        assert watch.run() == "ran" and len(watch.posts()) == 1


def test_metrics_per_environment(pg_url, make_watch):
    watch = make_watch(pg_url, thresholds={"idle_in_transaction_seconds": 0.3})
    with Sessions(pg_url) as s:
        conn = s.open(autocommit=False)
        conn.execute("SELECT 1")
        wait_for(lambda: state_older_than(s, conn.info.backend_pid, 0.4), timeout=10, what="idle 0.4 s")
        watch.run()
    text = generate_latest(watch.registry).decode()
    for line in ('runbook_bot_watch_idle_in_transaction{environment="production"} 1.0',
                 'runbook_bot_watch_lock_waiters{environment="production"} 0.0',
                 'runbook_bot_watch_long_queries{environment="production"} 0.0',
                 'runbook_bot_watch_open_alerts{environment="production",kind="idle_in_transaction"} 1.0',
                 'runbook_bot_watch_up{environment="production"} 1.0',
                 'runbook_bot_scheduler_leader 1.0',
                 'runbook_bot_watch_poll_seconds_count{environment="production"} 1.0'):
        assert line in text, line
    assert 'runbook_bot_watch_oldest_transaction_seconds{environment="production"}' in text
    stamp = next(l for l in text.splitlines() if l.startswith("runbook_bot_watch_last_success_timestamp_seconds"))
    assert abs(float(stamp.split()[-1]) - datetime.now(timezone.utc).timestamp()) < 60


def test_two_replicas_on_one_slot_run_it_once(pg_url, make_watch):
    """The claim row alone: a second runner given the same slot does nothing."""
    watch = make_watch(pg_url, thresholds={"idle_in_transaction_seconds": 0.3})
    other = WatchRunner(watch.settings, watch.store, watch.runner.client, redactor=Redactor(watch.settings),
                        identity="other-replica", clock=watch.clock)
    with Sessions(pg_url) as s:
        conn = s.open(autocommit=False)
        conn.execute("SELECT 1")
        wait_for(lambda: state_older_than(s, conn.info.backend_pid, 0.4), timeout=10, what="idle 0.4 s")
        slot = watch.clock.advance(60)
        assert watch.runner.run("production", slot=slot) == "ran"
        assert other.run("production", slot=slot) == "claimed"
        assert len(watch.posts()) == 1 and watch.posts()[0].updates == 0


# -- a forgotten prepared transaction --------------------------------------------------------------

from tests.test_activity import prepared_server, prepared_url  # noqa: E402,F401  (fixtures)


def test_forgotten_prepared_transaction_is_an_alert_and_names_itself_as_root_blocker(prepared_url, make_watch, slack):
    make_table(prepared_url)
    gid = "rb-forgotten-" + uuid.uuid4().hex[:6]
    watch = make_watch(prepared_url, thresholds={"idle_in_transaction_seconds": 0.3, "lock_wait_seconds": 0.3},
                       watch={"resolve_after_seconds": 0})
    try:
        with Sessions(prepared_url) as s:
            preparer = s.open(application_name="two-phase-app")
            preparer.execute("BEGIN")
            preparer.execute("ALTER TABLE t ADD COLUMN x int")               # ACCESS EXCLUSIVE on t
            preparer.execute(f"PREPARE TRANSACTION '{gid}'")
            reader = s.start("SELECT count(*) FROM t /* stuck reader */", application_name="api")
            s.wait_until_waiting(reader.pid)
            wait_for(lambda: waited_longer_than(s, reader.pid, 0.5), timeout=10, what="the reader to wait 0.5 s")
            watch.run()
            watch.run()
            posts = {m.text.split(":")[2].strip(): m for m in watch.posts()}     # ":emoji: Title: …"
            assert set(posts) == {"Old prepared transaction", "Lock wait"}, list(posts)
            lock = posts["Lock wait"]
            assert f"root blocker prepared transaction {gid} holds up 1 session" in lock.text
            assert "ROLLBACK PREPARED" in json.dumps(lock.blocks) and f"queue head: pid {reader.pid}" in json.dumps(lock.blocks)
            assert gid in posts["Old prepared transaction"].text
            with psycopg.connect(prepared_url, autocommit=True) as conn:
                conn.execute(f"ROLLBACK PREPARED '{gid}'")
            wait_for(lambda: reader.done, timeout=10, what="the reader to get its lock")
            watch.run()
            assert all(m.text.startswith("RESOLVED") for m in watch.posts()) and len(watch.posts()) == 2
    finally:
        with psycopg.connect(prepared_url, autocommit=True) as conn:
            for (left,) in conn.execute("SELECT gid FROM pg_prepared_xacts WHERE database = current_database()"):
                conn.execute(f"ROLLBACK PREPARED '{left}'")


def test_lock_manager_is_left_alone_while_no_waiter_can_be_over_the_threshold(pg_url, make_watch, monkeypatch):
    """A long query makes the watch take a snapshot; a waiter younger than lock_wait_seconds does not
    make it read pg_blocking_pids or pg_locks (design rule 10). Once it may be over, it does."""
    import runbook.activity as activity_module

    trees: list[int] = []
    real_tree = activity_module._blocking_tree
    monkeypatch.setattr(activity_module, "_blocking_tree",
                        lambda conn, params, activity, prepared: trees.append(1) or real_tree(conn, params, activity, prepared))
    make_table(pg_url)
    watch = make_watch(pg_url, thresholds={"long_query_seconds": 0.3, "lock_wait_seconds": 3600})
    with Sessions(pg_url) as s:
        long = s.start("SELECT pg_sleep(60) /* long */")
        holder = s.open(autocommit=False)
        holder.execute("SELECT count(*) FROM t")
        alter = s.start("ALTER TABLE t ADD COLUMN c int")
        s.wait_until_waiting(alter.pid)
        wait_for(lambda: state_older_than(s, long.pid, 0.4), timeout=10, what="the long query to pass 0.4 s")
        watch.run()
        assert [m.text.split(":")[2].strip() for m in watch.posts()] == ["Long query"] and trees == []
        watch.runner.settings = watch.settings = watch.settings.model_copy(update={"environments": {
            "production": watch.settings.environments["production"].model_copy(update={
                "thresholds": watch.settings.environments["production"].thresholds.model_copy(
                    update={"lock_wait_seconds": 0.1})})}})
        watch.run()
        assert trees == [1] and any("Lock wait" in m.text for m in watch.posts())
