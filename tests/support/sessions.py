"""Real client sessions for tests: statements that block, run in threads on their own connections.

    with Sessions(url) as s:
        holder = s.open(autocommit=False); holder.execute("SELECT count(*) FROM t")
        alter = s.start("ALTER TABLE t ADD COLUMN c int")     # returns at once; runs in a thread
        s.wait_until_waiting(alter.pid)                         # polls pg_stat_activity, deadline
    # on exit: every background statement is cancelled, every connection closed

Nothing here sleeps a fixed time; waits poll pg_stat_activity with a deadline.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field

import psycopg

from tests.support.waiting import wait_for

# A statement left behind by a failing test must not outlive it by much.
SAFETY_STATEMENT_TIMEOUT = "60s"


@dataclass
class Background:
    """One statement running in its own thread on its own connection."""

    conn: psycopg.Connection
    sql: str
    pid: int
    error: BaseException | None = None
    thread: threading.Thread = field(init=False)

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._run, name=f"pg-{self.pid}", daemon=True)

    def _run(self) -> None:
        try:
            self.conn.execute(self.sql)
        except BaseException as exc:  # reported to the test, never lost in the thread
            self.error = exc

    @property
    def done(self) -> bool:
        return not self.thread.is_alive()


class Sessions:
    def __init__(self, url: str) -> None:
        self.url = url
        self._conns: list[psycopg.Connection] = []
        self._background: list[Background] = []
        self._spawned: list[threading.Thread] = []

    def __enter__(self) -> "Sessions":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self, *, application_name: str = "test-client", autocommit: bool = True) -> psycopg.Connection:
        conn = psycopg.connect(
            self.url,
            application_name=application_name,
            autocommit=autocommit,
            options=f"-c statement_timeout={SAFETY_STATEMENT_TIMEOUT}",
        )
        self._conns.append(conn)
        return conn

    def start(self, sql: str, *, application_name: str = "test-client") -> Background:
        """Send `sql` on a new connection from a thread; returns as soon as the thread runs."""
        conn = self.open(application_name=application_name)
        job = Background(conn=conn, sql=sql, pid=conn.info.backend_pid)
        self._background.append(job)
        job.thread.start()
        return job

    def spawn(self, target, *args) -> threading.Thread:
        """Run `target(*args)` in a thread that uses connections of these sessions: joined before they
        are closed (a connection closed under a thread still inside libpq can crash the process)."""
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._spawned.append(thread)
        thread.start()
        return thread

    def observe(self, sql: str, params: tuple | dict | None = None) -> list[tuple]:
        with psycopg.connect(self.url, autocommit=True, application_name="test-observer") as conn:
            return conn.execute(sql, params).fetchall()

    def state_of(self, pid: int) -> tuple | None:
        rows = self.observe(
            "SELECT state, wait_event_type, wait_event, query FROM pg_stat_activity WHERE pid = %s", (pid,)
        )
        return rows[0] if rows else None

    def wait_until_waiting(self, pid: int, timeout: float = 10.0) -> None:
        """Until `pid` waits on a heavyweight lock."""
        wait_for(lambda: (self.state_of(pid) or (None, None))[1] == "Lock", timeout, what=f"pid {pid} to wait on a lock")

    def wait_until_active(self, pid: int, marker: str, timeout: float = 10.0) -> None:
        """Until `pid` is running a query containing `marker`."""
        def running() -> bool:
            state = self.state_of(pid)
            return bool(state and state[0] == "active" and marker in (state[3] or ""))
        wait_for(running, timeout, what=f"pid {pid} to run {marker!r}")

    def close(self) -> None:
        """Cancel what still runs, then close every connection (the database can then be dropped)."""
        running = [job for job in self._background if not job.done]
        if running:
            self.observe("SELECT pg_cancel_backend(pid) FROM unnest(%s::int[]) AS pid", ([j.pid for j in running],))
        for job in self._background:
            job.thread.join(timeout=10)
        still = [job.pid for job in self._background if not job.done]
        if still:
            self.observe("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", (still,))
            for job in self._background:
                job.thread.join(timeout=10)
        for thread in self._spawned:
            thread.join(timeout=10)
        if any(thread.is_alive() for thread in self._spawned):   # stuck in a query: end every session
            pids = [conn.info.backend_pid for conn in self._conns if not conn.closed]
            self.observe("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", (pids,))
            for thread in self._spawned:
                thread.join(timeout=10)
        for conn in self._conns:
            try:
                conn.close()
            except Exception:
                pass
