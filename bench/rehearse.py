"""Rehearsal benchmark (issue 16): the bot's rehearsal against a restore and an upgrade by hand, same run.

    .venv/bin/python bench/rehearse.py [--size-mb 500] [--rounds 3] [--to head] [--sample-ms 20,10]

On the sample app (examples/home_budget) at 0001, with expenses and incomes generated on the server
(generate_series, the seed's kinds of rows) until pg_database_size reaches --size-mb, it takes one
verified backup with the bot's own code (runbook.backup.backup), then in interleaved rounds measures:

  a. by hand, runbook §6.4: a fresh database, `pg_restore -d` of that backup (one job, as the
     rehearsal on the target's own server), then the app's `alembic upgrade <to>` on the copy
     (its own alembic, DATABASE_URL): the baseline is the sum;
  b. the bot's rehearsal of the same range from the same backup (runbook.rehearse.rehearse with
     backup_id, what `runbook-bot rehearse --backup ID` runs): wall time;
  c. the same rehearsal without the lock sampler (sample_locks=False), and with the sampler at each
     --sample-ms period: the migration's time (the sum of the revisions' alembic calls) with and
     without sampling;
  d. the sampler's own CPU at each period (its server backend and its thread, as a share of one core),
     against a session holding locks: what sampling can take from a migration at most. The machine's
     noise swamps a 5 % difference in c's minute-long migrations; d does not drown in it.

Targets (issue 16): b at most 1.3x a; sampling costs the migration at most 5 %.

What is compared: the issue's baseline is one upgrade, while a rehearsal goes up, down and up again.
The default range (0001 -> head) ends at 0003, a data backfill that is irreversible, so its way down
stops at once (reported) and the rehearsal's migration is the same upgrade as the baseline's, one
revision per alembic process: that ratio is the like-for-like one. `--to 0002_categories` rehearses a
reversible range: up, down, up; the bench then prints the ratio of the whole rehearsal and of its
first way up (restore + upgrade + measurements), since a second upgrade is work the baseline never
does.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402

from bot.embedded import start_server  # noqa: E402
from bot.sample_app import ALEMBIC_ARGV, APP_DIR, REV_0001, URL_ENV, alembic, upgrade  # noqa: E402

RATIO_TARGET = 1.3
SAMPLING_TARGET = 0.05

# Rows like examples/home_budget/seed.py's: (free-text category or NULL, description, amount range).
# One row in eight has no category, so 0003 guesses its category from the description (its regexes);
# 0003 updates every row (each gets its category_id): the whole table is rewritten, its indexes too.
EXPENSE_KINDS = [
    ("groceries", "Whole Foods weekly shop", 15, 220), ("Rent", "Monthly rent", 1200, 2400),
    ("transport", "Uber to airport", 5, 85), ("Dining", "Sushi with friends", 4, 120),
    ("utilities", "Electric bill", 25, 180), ("Health", "Dentist check-up", 10, 160),
    ("fun", "Cinema tickets", 8, 140),
    (None, "Groceries at Aldi", 10, 90), (None, "Internet - fiber 1Gb", 25, 90), (None, "Parking downtown", 4, 60),
    (None, "Dinner - Italian restaurant", 8, 95), ("", "Birthday gift for Sam", 12, 75),
    (None, "Hardware store - paint", 12, 75),
]
CATEGORISED = sum(1 for k in EXPENSE_KINDS if k[0])
INCOME_KINDS = [("Salary", "Monthly salary - Acme Corp"), ("Freelance", "Freelance invoice"),
                ("Interest", "Savings account interest"), ("Refund", "Tax refund"), ("Sale", "Sold old bike")]


def _array(values) -> str:
    return "ARRAY[" + ", ".join("NULL::text" if v is None else "'" + v.replace("'", "''") + "'" for v in values) + "]"


def _expenses_sql(rows: int) -> str:
    n, c = len(EXPENSE_KINDS), CATEGORISED
    cats, descs = _array(k[0] for k in EXPENSE_KINDS), _array(k[1] for k in EXPENSE_KINDS)
    lows = "ARRAY[" + ", ".join(str(k[2]) for k in EXPENSE_KINDS) + "]"
    highs = "ARRAY[" + ", ".join(str(k[3]) for k in EXPENSE_KINDS) + "]"
    # kind k: one of the uncategorised ones for every eighth row, else a categorised one
    kind = f"CASE WHEN g % 8 = 0 THEN {c + 1} + (g / 8) % {n - c} ELSE 1 + (g::bigint * 7919 % {c})::int END"
    return ("INSERT INTO expenses (date, amount, category, description, created_at) "
            f"SELECT current_date - (random() * 3000)::int, "
            f"round((({lows})[k] + random() * (({highs})[k] - ({lows})[k]))::numeric, 2), "
            f"({cats})[k], ({descs})[k] || CASE WHEN g % 5 = 0 THEN ' #' || (g % 997) ELSE '' END, "
            "now() - g * interval '1 minute' "
            f"FROM (SELECT g, {kind} AS k FROM generate_series(1, {rows}) g) s")


def _incomes_sql(rows: int) -> str:
    m = len(INCOME_KINDS)
    return ("INSERT INTO incomes (date, amount, source, description) "
            f"SELECT current_date - (random() * 3000)::int, round((10 + random() * 5000)::numeric, 2), "
            f"({_array(k[0] for k in INCOME_KINDS)})[k], ({_array(k[1] for k in INCOME_KINDS)})[k] "
            f"FROM (SELECT g, 1 + (g % {m}) AS k FROM generate_series(1, {rows}) g) s")


def generate(url: str, size_mb: int, expenses_share: float) -> tuple[int, int, int]:
    """The sample app at 0001 filled to `size_mb`, `expenses_share` of it in expenses (the table the
    pending revisions work on), the rest in incomes (which they leave alone, as most of a real
    database): (bytes, expenses, incomes). A first slice of each measures its bytes per row; the rest
    is one INSERT ... SELECT generate_series per table."""
    upgrade(url, REV_0001)
    target = size_mb * 2**20
    with psycopg.connect(url, autocommit=True) as conn:
        def size(what: str = "current_database()") -> int:
            if what == "current_database()":
                return conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
            return conn.execute("SELECT pg_total_relation_size(%s::regclass)", [what]).fetchone()[0]

        first = max(1000, min(100_000, size_mb * 200))
        room = target - size()
        for table, share, fill in (("expenses", expenses_share, _expenses_sql), ("incomes", 1 - expenses_share,
                                                                                  _incomes_sql)):
            conn.execute(fill(first))
            per_row = max(1.0, size(table) / first)
            rest = int((room * share - size(table)) / per_row * 1.02)
            if rest > 0:
                conn.execute(fill(rest))
        conn.execute("VACUUM ANALYZE")
        while size() < target:        # the estimate fell short (free space, the indexes' growth): top up
            conn.execute(_incomes_sql(int((target - size()) / (size("incomes") / max(1, counts(conn)[1])) * 1.05)
                                      + 1000))
            conn.execute("VACUUM ANALYZE incomes")
        conn.execute("CHECKPOINT")
        expenses, incomes = counts(conn)
        return size(), expenses, incomes


def counts(conn: psycopg.Connection) -> tuple[int, int]:
    return tuple(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("expenses", "incomes"))


def environment(work: Path, url: str, bin_dir: Path, sample_ms: int = 20):
    from runbook.config import parse_settings
    from runbook.state import Store

    work.mkdir(parents=True, exist_ok=True)
    config = work / f"runbook-bot-{sample_ms}.yaml"
    config.write_text(
        "state_url: sqlite:///state.db\n"
        "environments:\n"
        "  production:\n"
        f"    database_url: '{url}'\n"
        f"    app_dir: '{APP_DIR}'\n"
        f"    alembic: [{', '.join(repr(a) for a in ALEMBIC_ARGV)}]\n"
        f"    url_env: {URL_ENV}\n"
        f"    pg_bin_dir: '{bin_dir}'\n"
        "    backups: {dir: backups, keep: 2}\n"
        f"    rehearsal: {{lock_sample_ms: {sample_ms}}}\n"
        "    validation: {tables: [expenses, incomes]}\n")
    # state.db and backups/ are relative to the configuration's directory: every period's configuration
    # shares one catalogue, so the one backup serves them all
    settings = parse_settings(config.read_text(), source=config)
    store = Store(settings.state_url)
    store.migrate()
    name, env = settings.environment(None)
    return settings, name, env, store


def by_hand(server, bin_dir: Path, archive: Path, to: str) -> tuple[float, float]:
    """Runbook §6.4: a fresh database, `pg_restore -d`, `alembic upgrade <to>`: (restore s, upgrade s)."""
    dbname = "bench_by_hand"
    server.drop_database(dbname)
    started = time.perf_counter()
    with psycopg.connect(server.admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{dbname}" TEMPLATE template0')
    url = server.url_for(dbname)
    subprocess.run([str(bin_dir / "pg_restore"), "--no-owner", f"--dbname={url}", str(archive)],
                   check=True, capture_output=True)
    restored = time.perf_counter()
    alembic(url, "upgrade", to, timeout=3600)
    upgraded = time.perf_counter()
    server.drop_database(dbname)
    return restored - started, upgraded - restored


def rehearsal(name, env, store, settings, backup_id: int, to: str, sample_locks: bool) -> dict:
    from runbook import rehearse as engine

    started = time.perf_counter()
    result = engine.rehearse(name, env, store, target=to, backup_id=backup_id, settings=settings,
                             actor="bench", sample_locks=sample_locks)
    wall = time.perf_counter() - started
    if result.outcome != "passed":
        raise SystemExit(f"the rehearsal did not pass: {result.outcome}: {result.error}")
    up = sum(r.seconds for r in result.revisions)
    down = sum(r.downgrade_seconds or 0.0 for r in result.revisions)
    locks = sum(len(r.locks) for r in result.revisions)
    ae = [f"{lock.relation} {lock.held_seconds:.2f}s" for r in result.revisions for lock in r.locks
          if lock.mode == "ACCESS EXCLUSIVE"]
    return {"wall": wall, "restore": result.restore_seconds, "up": up, "down": down,
            "again": result.upgrade_again_ok is not None, "locks": locks, "access_exclusive": ae,
            "result": result}


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")     # utime + stime


def sampler_duty(url: str, period_ms: int, seconds: float) -> dict:
    """The engine's LockSampler at `period_ms` against a session holding locks, for `seconds`: samples
    taken and the CPU they cost (the sampler's server backend, read from /proc, and this process,
    whose other thread only sleeps), as a share of one core. Unlike the migration's time, this does not
    drown in the machine's noise, and it bounds what sampling can take from a migration: a migration
    that needs every core loses at most this."""
    import resource

    from runbook.rehearse import LockSampler
    from runbook.target import Target

    app = "rbmigrate/bench-duty"
    with psycopg.connect(url, application_name=app) as holder:       # a transaction holding locks, as a migrator
        holder.execute("LOCK TABLE expenses IN SHARE MODE")
        holder.execute("LOCK TABLE incomes IN ACCESS SHARE MODE")
        sampler = LockSampler(Target(url), app, period_ms / 1000.0)
        with sampler, psycopg.connect(url, autocommit=True) as probe:
            deadline = time.monotonic() + 10
            while sampler.samples == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            backend = probe.execute("SELECT pid FROM pg_stat_activity WHERE application_name LIKE %s",
                                    ["%/rehearse-locks"]).fetchone()[0]
            server0, client0 = _cpu_seconds(backend), resource.getrusage(resource.RUSAGE_SELF)
            samples0, started = sampler.samples, time.perf_counter()
            time.sleep(seconds)
            server1, client1 = _cpu_seconds(backend), resource.getrusage(resource.RUSAGE_SELF)
            samples1, elapsed = sampler.samples, time.perf_counter() - started
        holder.rollback()
    if sampler.error:
        raise SystemExit(f"the sampler failed: {sampler.error}")
    client = (client1.ru_utime + client1.ru_stime) - (client0.ru_utime + client0.ru_stime)
    server = server1 - server0
    return {"rate": (samples1 - samples0) / elapsed, "server": server / elapsed, "client": client / elapsed,
            "seen": len(sampler.seen)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--expenses-share", type=float, default=0.3,
                        help="of the size, in expenses (which 0002 indexes and 0003 rewrites); the rest in incomes")
    parser.add_argument("--to", default="head", help="the rehearsed range's end (default head: 0001 -> 0003)")
    parser.add_argument("--duty-seconds", type=float, default=10.0, help="the sampler's CPU measured this long")
    parser.add_argument("--sample-ms", default="20,10", help="sampler periods to measure, comma-separated (5-50)")
    args = parser.parse_args()
    periods = [int(p) for p in args.sample_ms.split(",") if p]

    from runbook import backup as backups

    server = start_server()
    work = Path(tempfile.mkdtemp(prefix="rb-bench-rehearse-"))
    try:
        url = server.create_database("bench_rehearse")
        started = time.perf_counter()
        size, expenses, incomes = generate(url, args.size_mb, args.expenses_share)
        generated = time.perf_counter() - started
        load = os.getloadavg()[0]
        print(f"database: {size / 2**20:.0f} MB (pg_database_size) at {REV_0001}, {expenses:,} expenses and "
              f"{incomes:,} incomes, "
              f"generated in {generated:.1f} s; {os.cpu_count()} CPUs, load {load:.1f}; "
              f"{args.rounds} rounds, interleaved")
        if size < args.size_mb * 2**20:
            print(f"  (under {args.size_mb} MB)")
        bin_dir = server.bin_dir
        envs = {p: environment(work, url, bin_dir, p) for p in periods}
        settings, name, env, store = envs[periods[0]]
        started = time.perf_counter()
        item = backups.backup(name, env, store, reason="bench", actor="bench")
        assert item.status == "verified" and item.kind == "full", (item.status, item.kind)
        archive = Path(item.location)
        if not archive.is_absolute():
            archive = Path(env.backups.dir) / archive
        print(f"backup #{item.id}: verified, {item.size_bytes / 2**20:.0f} MB custom format, "
              f"taken in {time.perf_counter() - started:.1f} s")
        samples: dict[str, list[float]] = {}

        def add(key: str, value: float) -> None:
            samples.setdefault(key, []).append(value)

        last: dict = {}
        for round_ in range(args.rounds):
            steps = ["hand", "off", *periods]
            steps = steps[round_ % len(steps):] + steps[:round_ % len(steps)]      # rotate the order
            for what in steps:
                if what == "hand":
                    restore_s, upgrade_s = by_hand(server, bin_dir, archive, args.to)
                    add("hand_restore", restore_s)
                    add("hand_upgrade", upgrade_s)
                    add("hand", restore_s + upgrade_s)
                    continue
                sample = what != "off"
                s, n, e, st = envs[what] if sample else envs[periods[0]]
                done = rehearsal(n, e, st, s, item.id, args.to, sample)
                key = f"{what}ms" if sample else "off"
                add(f"{key}_wall", done["wall"])
                add(f"{key}_restore", done["restore"])
                add(f"{key}_up", done["up"])
                add(f"{key}_down", done["down"])
                last[key] = done
            print(f"  round {round_ + 1}: by hand {samples['hand'][-1]:.1f} s, rehearsal "
                  + ", ".join(f"{k} {samples[k + '_wall'][-1]:.1f} s" for k in [f"{p}ms" for p in periods] + ["off"])
                  + f"; load {os.getloadavg()[0]:.1f}", flush=True)

        m = {k: statistics.median(v) for k, v in samples.items()}

        def runs(key: str) -> str:
            return ", ".join(f"{v:.1f}" for v in samples[key])

        main_key = f"{periods[0]}ms"
        first = last[main_key]["result"]
        print(f"\nrange {first.from_revisions[0]} -> {first.target}: "
              + ", ".join(f"{r.revision} {'reversible' if r.reversible else 'irreversible'}" for r in first.revisions))
        print("\na. by hand (runbook §6.4), medians")
        print(f"  pg_restore -d (one job)             {m['hand_restore']:7.1f} s   ({runs('hand_restore')})")
        print(f"  alembic upgrade {args.to:<20}{m['hand_upgrade']:7.1f} s   ({runs('hand_upgrade')})")
        print(f"  sum                                 {m['hand']:7.1f} s   ({runs('hand')})")
        print(f"\nb. the rehearsal from backup #{item.id} (sampling every {periods[0]} ms), medians")
        print(f"  wall                                {m[main_key + '_wall']:7.1f} s   ({runs(main_key + '_wall')})")
        print(f"  of which restore                    {m[main_key + '_restore']:7.1f} s")
        print(f"  of which revisions up               {m[main_key + '_up']:7.1f} s")
        if last[main_key]["again"]:
            print(f"  of which revisions down             {m[main_key + '_down']:7.1f} s  (then up again)")
        ratio = m[main_key + "_wall"] / m["hand"]
        verdict = "met" if ratio <= RATIO_TARGET else "MISSED"
        print(f"  ratio rehearsal / by hand: {ratio:.2f}x  (target <= {RATIO_TARGET}x: {verdict})")
        if last[main_key]["again"]:
            # the second way up is one alembic call for the range, timed only as part of the wall: taken
            # as long as the first way up (the same revisions on the same data)
            once = statistics.median(w - d - u for w, d, u in zip(samples[main_key + "_wall"],
                                                                  samples[main_key + "_down"],
                                                                  samples[main_key + "_up"]))
            print(f"  without the way down and up again  {once:7.1f} s   (wall - down - a second up as long as the "
                  "first)")
            print(f"  ratio of that part / by hand: {once / m['hand']:.2f}x  (the like-for-like figure: the baseline "
                  "goes up once)")
        print("\nc. lock sampling: the migration's time (its revisions' alembic calls), medians")
        print(f"  sampling off                        {m['off_up']:7.1f} s   ({runs('off_up')})")
        for p in periods:
            key = f"{p}ms"
            cost = m[key + "_up"] / m["off_up"] - 1
            seen = last[key]
            print(f"  sampling every {p:>2} ms               {m[key + '_up']:7.1f} s   ({runs(key + '_up')})  "
                  f"cost {cost * 100:+.1f} %  (target <= {SAMPLING_TARGET * 100:.0f} %: "
                  f"{'met' if cost <= SAMPLING_TARGET else 'MISSED'}); {seen['locks']} locks seen, "
                  f"ACCESS EXCLUSIVE: {', '.join(seen['access_exclusive']) or 'none'}")
        print(f"  rehearsal wall, sampling off        {m['off_wall']:7.1f} s   ({runs('off_wall')})")
        print(f"\nd. the sampler's own CPU, {args.duty_seconds:.0f} s against a session holding 2 table locks "
              "(share of one core)")
        for p in periods:
            duty = sampler_duty(url, p, args.duty_seconds)
            total = duty["server"] + duty["client"]
            print(f"  every {p:>2} ms: {duty['rate']:5.1f} samples/s, server backend {duty['server'] * 100:4.1f} %, "
                  f"sampler thread {duty['client'] * 100:4.1f} %, total {total * 100:4.1f} % "
                  f"(saw {duty['seen']} locks): {'within' if total <= SAMPLING_TARGET else 'OVER'} "
                  f"{SAMPLING_TARGET * 100:.0f} %")
        print(f"\nload average at the end {os.getloadavg()[0]:.1f}")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
