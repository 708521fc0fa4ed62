"""runbook.activity against a real PostgreSQL: real long queries, real lock queues, real
prepared transactions. Blocking statements run in threads on their own connections
(tests/support/sessions.py); every wait polls with a deadline.
"""
from __future__ import annotations

import uuid
from urllib.parse import urlsplit

import psycopg
import pytest

from runbook.activity import Activity, Poll, find_roots, poll, queue_depths, snapshot
from runbook.target import Target
from tests.support.pgsettings import start_server_with
from tests.support.sessions import Sessions
from tests.support.waiting import wait_for

HOUR = 3600.0


def take(url: str, *, long_query_seconds: float = HOUR, idle_in_transaction_seconds: float = HOUR,
         **kwargs) -> tuple[Activity, Poll]:
    """A snapshot and a poll through the bot's own monitor connection, as the engine takes them."""
    with Target(url).connect("precheck") as conn:
        activity = snapshot(conn, long_query_seconds=long_query_seconds,
                            idle_in_transaction_seconds=idle_in_transaction_seconds, **kwargs)
        counts = poll(conn, long_query_seconds=long_query_seconds,
                      idle_in_transaction_seconds=idle_in_transaction_seconds)
    return activity, counts


def make_table(url: str, name: str = "t", rows: int = 3) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, v int NOT NULL DEFAULT 0)")
        conn.execute(f"INSERT INTO {name} (id) SELECT generate_series(1, %s)", (rows,))


def server_user(url: str) -> str:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT current_user").fetchone()[0]


# -- a quiet database ---------------------------------------------------------------------------

def test_quiet_database_reports_nothing(pg_url):
    activity, counts = take(pg_url, long_query_seconds=0, idle_in_transaction_seconds=0)

    assert counts == Poll(active_count=0, lock_waiters=0, long_queries=0, idle_in_transaction=0,
                          oldest_xact_seconds=None, oldest_lock_wait_seconds=None)
    assert counts.quiet
    assert activity == Activity(active_count=0)


def test_needs_an_autocommit_connection(pg_url):
    with psycopg.connect(pg_url) as conn:
        with pytest.raises(ValueError, match="autocommit"):
            poll(conn)
        with pytest.raises(ValueError, match="autocommit"):
            snapshot(conn, long_query_seconds=1, idle_in_transaction_seconds=1)


# -- 1. long-running queries ----------------------------------------------------------------------

def test_long_query_is_reported_and_a_short_one_is_not(pg_url):
    with Sessions(pg_url) as s:
        long = s.start("SELECT pg_sleep(30) /* long-one */", application_name="report-job")
        s.wait_until_active(long.pid, "long-one")

        def long_reported():
            activity, _ = take(pg_url, long_query_seconds=1.0)
            return activity if any(q.pid == long.pid for q in activity.long_queries) else None

        wait_for(long_reported, timeout=15, what="the long query to pass 1 s")

        short = s.start("SELECT pg_sleep(30) /* short-one */", application_name="report-job")
        s.wait_until_active(short.pid, "short-one")
        activity, counts = take(pg_url, long_query_seconds=1.0)
        truncated, _ = take(pg_url, long_query_seconds=1.0, query_chars=10)

    by_pid = {q.pid: q for q in activity.long_queries}
    assert set(by_pid) == {long.pid}, "the short query (well under 1 s) must not be reported"
    found = by_pid[long.pid]
    assert found.seconds >= 1.0
    assert "SELECT pg_sleep(30) /* long-one */" == found.query
    assert found.application == "report-job"
    assert found.user == server_user(pg_url)
    assert found.state == "active"
    assert found.xact_seconds is not None and found.xact_seconds >= found.seconds - 0.01
    assert activity.active_count == 2                       # both sleeps, never the monitor
    assert (counts.active_count, counts.long_queries) == (2, 1)
    assert counts.oldest_xact_seconds is not None and counts.oldest_xact_seconds >= 1.0
    assert activity.lock_waits == [] and activity.roots == []

    assert [q.query for q in truncated.long_queries] == ["SELECT pg_"]


# -- 2 and 6. a real lock queue behind an ALTER TABLE ---------------------------------------------

@pytest.fixture
def lock_queue(pg_url):
    """holder idle in transaction after reading t; ALTER TABLE waiting for ACCESS EXCLUSIVE;
    three readers queued behind the ALTER, each one waiting before the next is sent."""
    make_table(pg_url)
    with Sessions(pg_url) as s:
        holder = s.open(application_name="holder", autocommit=False)
        holder.execute("SELECT count(*) FROM t").fetchone()
        alter = s.start("ALTER TABLE t ADD COLUMN note text", application_name="migrator")
        s.wait_until_waiting(alter.pid)
        readers = []
        for i in range(3):
            reader = s.start("SELECT count(*) FROM t", application_name=f"reader-{i + 1}")
            s.wait_until_waiting(reader.pid)
            readers.append(reader)
        yield {"holder": holder.info.backend_pid, "alter": alter.pid, "readers": [r.pid for r in readers]}
    # Sessions cancelled the waiters and closed the holder; the ALTER never ran.


def test_lock_queue_root_head_and_details(pg_url, lock_queue):
    holder, alter, readers = lock_queue["holder"], lock_queue["alter"], lock_queue["readers"]

    activity, _ = take(pg_url)

    waits = {w.pid: w for w in activity.lock_waits}
    assert set(waits) == {alter, *readers}
    assert all(w.root_blocker == holder for w in waits.values())
    assert waits[alter].blocked_by == [holder]
    for pid in readers:
        assert alter in waits[pid].blocked_by, "readers queue behind the ALTER (soft block)"

    assert waits[alter].mode == "AccessExclusiveLock"
    assert waits[alter].relation == "t"
    assert waits[alter].locktype == "relation"
    assert waits[alter].query == "ALTER TABLE t ADD COLUMN note text"
    assert waits[alter].application == "migrator"
    for pid in readers:
        assert (waits[pid].mode, waits[pid].relation) == ("AccessShareLock", "t")
    # pg_locks.waitstart: the ALTER has waited longest, then the readers in the order they came.
    assert waits[alter].seconds >= waits[readers[0]].seconds >= waits[readers[1]].seconds >= waits[readers[2]].seconds

    assert len(activity.roots) == 1
    root = activity.roots[0]
    assert root.pid == holder and root.prepared_gid is None
    assert root.session is not None
    assert root.session.state == "idle in transaction"
    assert root.session.application == "holder"
    assert root.session.query == "SELECT count(*) FROM t"
    assert root.head is not None and root.head.pid == alter
    assert [w.pid for w in root.queue] == [alter, *readers]


def test_poll_counts_match_the_snapshot_in_a_lock_queue(pg_url, lock_queue):
    activity, counts = take(pg_url, long_query_seconds=0, idle_in_transaction_seconds=0)

    assert counts.lock_waiters == len(activity.lock_waits) == 4
    assert counts.active_count == activity.active_count == 4          # the four waiters
    assert counts.long_queries == len(activity.long_queries) == 4
    assert counts.idle_in_transaction == len(activity.idle_in_transaction) == 1
    assert activity.idle_in_transaction[0].pid == lock_queue["holder"]
    assert not counts.quiet
    assert counts.oldest_lock_wait_seconds is not None
    assert counts.oldest_lock_wait_seconds >= max(w.seconds for w in activity.lock_waits) - 0.01


def test_row_lock_pileup_head_is_the_first_waiter(pg_url):
    """UPDATEs of one row: the first waiter holds the tuple lock the others queue on."""
    make_table(pg_url)
    with Sessions(pg_url) as s:
        holder = s.open(application_name="holder", autocommit=False)
        holder.execute("UPDATE t SET v = v + 1 WHERE id = 1")
        holder_pid = holder.info.backend_pid
        first = s.start("UPDATE t SET v = v + 10 WHERE id = 1", application_name="first")
        s.wait_until_waiting(first.pid)
        second = s.start("UPDATE t SET v = v + 100 WHERE id = 1", application_name="second")
        s.wait_until_waiting(second.pid)

        activity, counts = take(pg_url)

    waits = {w.pid: w for w in activity.lock_waits}
    assert waits[first.pid].blocked_by == [holder_pid]
    assert waits[first.pid].locktype == "transactionid" and waits[first.pid].mode == "ShareLock"
    assert first.pid in waits[second.pid].blocked_by
    assert [r.pid for r in activity.roots] == [holder_pid]
    assert [w.pid for w in activity.roots[0].queue] == [first.pid, second.pid]
    assert counts.lock_waiters == 2


# -- 3. idle in transaction -----------------------------------------------------------------------

def test_idle_in_transaction_over_threshold_including_aborted(pg_url):
    with Sessions(pg_url) as s:
        forgetful = s.open(application_name="forgetful", autocommit=False)
        forgetful.execute("SELECT 1 /* forgot to commit */").fetchone()
        aborted = s.open(application_name="aborted", autocommit=False)
        with pytest.raises(psycopg.errors.DivisionByZero):
            aborted.execute("SELECT 1/0")
        idle = s.open(application_name="idle")
        idle.execute("SELECT 1").fetchone()                    # idle, no transaction: never reported
        forgetful_pid, aborted_pid = forgetful.info.backend_pid, aborted.info.backend_pid
        pids = {forgetful_pid, aborted_pid}

        def both_reported():
            activity, counts = take(pg_url, idle_in_transaction_seconds=0.3)
            return (activity, counts) if {i.pid for i in activity.idle_in_transaction} == pids else None

        activity, counts = wait_for(both_reported, timeout=15, what="both sessions to pass 0.3 s idle")
        under_threshold, quiet = take(pg_url, idle_in_transaction_seconds=HOUR)

    by_pid = {i.pid: i for i in activity.idle_in_transaction}
    assert by_pid[forgetful_pid].state == "idle in transaction"
    assert by_pid[forgetful_pid].query == "SELECT 1 /* forgot to commit */"
    assert by_pid[aborted_pid].state == "idle in transaction (aborted)"
    for info in by_pid.values():
        assert info.seconds >= 0.3
    forgetful_info = by_pid[forgetful_pid]
    assert forgetful_info.xact_seconds is not None and forgetful_info.xact_seconds >= forgetful_info.seconds - 0.01
    assert by_pid[aborted_pid].xact_seconds is None        # PostgreSQL clears xact_start once it aborts
    assert counts.idle_in_transaction == 2 and counts.active_count == 0
    assert activity.long_queries == [] and activity.active_count == 0

    assert under_threshold.idle_in_transaction == [] and quiet.idle_in_transaction == 0


# -- 4. prepared transactions ---------------------------------------------------------------------

def test_prepared_transactions_empty_on_the_default_server(pg_url):
    """The shared test server runs with max_prepared_transactions = 0: PREPARE is refused and
    the snapshot reports no prepared transaction. The real case is the next test, on a server
    of its own."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        allowed = int(conn.execute("SHOW max_prepared_transactions").fetchone()[0])
        if allowed == 0:
            conn.execute("BEGIN")
            with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState):
                conn.execute("PREPARE TRANSACTION 'refused'")
            conn.execute("ROLLBACK")
    activity, counts = take(pg_url)
    assert activity.prepared == [] and counts.quiet


@pytest.fixture(scope="module")
def prepared_server(pg_server):
    """A server where PREPARE TRANSACTION works: the session server if it allows it (a
    TEST_DATABASE_URL server may), else a private embedded one with max_prepared_transactions=10."""
    with psycopg.connect(pg_server.admin_url) as conn:
        allowed = int(conn.execute("SHOW max_prepared_transactions").fetchone()[0])
    if allowed > 0:
        yield pg_server
        return
    server = start_server_with({"max_prepared_transactions": "10"})
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def prepared_url(prepared_server):
    name = "t_" + uuid.uuid4().hex[:12]
    url = prepared_server.create_database(name)
    yield url
    prepared_server.drop_database(name)


def test_prepared_transactions_are_listed_and_named_as_root_blockers(prepared_url):
    make_table(prepared_url, "t1")
    make_table(prepared_url, "t2")
    gids = ["rb-alter-" + uuid.uuid4().hex[:6], "rb-update-" + uuid.uuid4().hex[:6]]
    try:
        with Sessions(prepared_url) as s:
            preparer = s.open(application_name="preparer")
            preparer.execute("BEGIN")
            preparer.execute("ALTER TABLE t1 ADD COLUMN x int")          # ACCESS EXCLUSIVE on t1
            preparer.execute(f"PREPARE TRANSACTION '{gids[0]}'")
            preparer.execute("BEGIN")
            preparer.execute("UPDATE t2 SET v = 1 WHERE id = 1")         # a row lock on t2
            preparer.execute(f"PREPARE TRANSACTION '{gids[1]}'")

            reader = s.start("SELECT count(*) FROM t1", application_name="reader")
            s.wait_until_waiting(reader.pid)
            updater = s.start("UPDATE t2 SET v = 2 WHERE id = 1", application_name="updater")
            s.wait_until_waiting(updater.pid)

            activity, counts = take(prepared_url)
    finally:
        with psycopg.connect(prepared_url, autocommit=True) as conn:
            for (gid,) in conn.execute("SELECT gid FROM pg_prepared_xacts WHERE database = current_database()"):
                conn.execute(f"ROLLBACK PREPARED '{gid}'")

    assert [p.gid for p in activity.prepared] == gids                      # oldest first
    for p in activity.prepared:
        assert p.owner == server_user(prepared_url)
        assert p.database == urlsplit(prepared_url).path.lstrip("/")
        assert p.seconds >= 0

    waits = {w.pid: w for w in activity.lock_waits}
    assert set(waits) == {reader.pid, updater.pid} and counts.lock_waiters == 2
    for w in waits.values():
        assert w.blocked_by == [0] and w.root_blocker == 0
    assert (waits[reader.pid].mode, waits[reader.pid].relation) == ("AccessShareLock", "t1")
    assert (waits[updater.pid].locktype, waits[updater.pid].mode) == ("transactionid", "ShareLock")

    roots = {r.prepared_gid: r for r in activity.roots}
    assert set(roots) == set(gids), "each waiter is tied to the prepared transaction in its way"
    assert all(r.pid == 0 and r.session is None for r in roots.values())
    assert [w.pid for w in roots[gids[0]].queue] == [reader.pid]
    assert [w.pid for w in roots[gids[1]].queue] == [updater.pid]


# -- 5. the bot's own sessions --------------------------------------------------------------------

def test_bot_sessions_are_left_out_even_when_long_running(pg_url):
    with Sessions(pg_url) as s:
        bot_long = s.start("SELECT pg_sleep(30) /* bot-long */", application_name="runbook-bot/watch")
        s.wait_until_active(bot_long.pid, "bot-long")
        bot_idle = s.open(application_name="runbook-bot/precheck", autocommit=False)
        bot_idle.execute("SELECT 1").fetchone()
        client = s.start("SELECT pg_sleep(30) /* client-long */", application_name="app")
        s.wait_until_active(client.pid, "client-long")

        def client_reported():
            activity, counts = take(pg_url, long_query_seconds=0.2, idle_in_transaction_seconds=0.2)
            return (activity, counts) if [q.pid for q in activity.long_queries] == [client.pid] else None

        # The bot's sleep started first, so it is over the threshold whenever the client's is.
        activity, counts = wait_for(client_reported, timeout=15, what="only the client's query to be reported")

    assert activity.idle_in_transaction == []
    assert activity.active_count == 1
    assert (counts.active_count, counts.long_queries, counts.idle_in_transaction) == (1, 1, 0)


def test_a_bot_session_that_blocks_others_is_still_named_as_their_root(pg_url):
    make_table(pg_url)
    with Sessions(pg_url) as s:
        bot = s.open(application_name="runbook-bot/migrate", autocommit=False)
        bot.execute("LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
        bot_pid = bot.info.backend_pid
        reader = s.start("SELECT count(*) FROM t", application_name="app")
        s.wait_until_waiting(reader.pid)

        activity, counts = take(pg_url, idle_in_transaction_seconds=0)

    assert activity.idle_in_transaction == []                  # the bot's own session: not reported
    assert [w.pid for w in activity.lock_waits] == [reader.pid]
    assert activity.roots[0].pid == bot_pid
    assert activity.roots[0].session is not None
    assert activity.roots[0].session.application == "runbook-bot/migrate"
    assert counts.lock_waiters == 1 and counts.idle_in_transaction == 0


# -- root resolution on odd graphs (pure) -------------------------------------------------------

def test_root_resolution_survives_cycles_and_odd_graphs():
    # A deadlock before the detector breaks it: no root, and the walk ends.
    assert find_roots({1: [2], 2: [1]}, 1) == []
    assert find_roots({1: [1]}, 1) == []
    # A cycle hanging off a real root still finds it.
    assert find_roots({1: [2], 2: [3, 1], 3: [9]}, 1) == [9]
    # Diamond: two paths to one root, reported once; nearest root first.
    assert find_roots({1: [2, 3], 2: [9], 3: [9, 8]}, 1) == [8, 9]
    assert find_roots({1: [2, 7], 2: [9]}, 1) == [7, 9]
    # Prepared transaction, and a waiter whose lock was granted meanwhile (empty list).
    assert find_roots({1: [0]}, 1) == [0]
    assert find_roots({1: [2], 2: []}, 1) == [2]
    assert find_roots({}, 1) == []

    graph = {10: [1], 11: [10], 12: [10, 11], 13: [1]}
    assert queue_depths(graph, 1) == {10: 1, 13: 1, 11: 2, 12: 2}
    assert queue_depths({1: [2], 2: [1]}, 1) == {2: 1}


def test_deep_row_lock_queue_resolves_every_waiter():
    """The worst shape (postgres.md §2): waiter k is blocked by every waiter ahead of it."""
    n = 400
    graph = {1000 + k: [1000 + j for j in range(k - 1, -1, -1)] or [1] for k in range(n)}
    assert find_roots(graph, 1000 + n - 1) == [1]
    depths = queue_depths(graph, 1)
    assert len(depths) == n and depths[1000] == 1 and max(depths.values()) == 2


def test_a_waiting_bot_session_in_the_middle_of_a_chain_is_followed_not_reported(pg_url):
    """A bot-run ALTER queued behind an app's transaction, app readers queued behind the ALTER:
    the readers' root is the app's transaction; the bot's own wait is not listed."""
    make_table(pg_url)
    with Sessions(pg_url) as s:
        holder = s.open(application_name="app-holder", autocommit=False)
        holder.execute("SELECT count(*) FROM t").fetchone()
        holder_pid = holder.info.backend_pid
        alter = s.start("ALTER TABLE t ADD COLUMN note text", application_name="runbook-bot/migrate")
        s.wait_until_waiting(alter.pid)
        reader = s.start("SELECT count(*) FROM t", application_name="app")
        s.wait_until_waiting(reader.pid)

        activity, counts = take(pg_url)

    assert [w.pid for w in activity.lock_waits] == [reader.pid]
    assert activity.lock_waits[0].blocked_by == [alter.pid]
    assert activity.lock_waits[0].root_blocker == holder_pid
    assert [(r.pid, [w.pid for w in r.queue]) for r in activity.roots] == [(holder_pid, [reader.pid])]
    assert counts.lock_waiters == 1
