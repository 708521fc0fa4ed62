"""Backup benchmark: the bot's verified backup against runbook §2.1 by hand, in the same run.

On a generated database of at least 200 MB (four tables of mixed, realistic columns made with
generate_series: md5 text, random amounts and timestamps, so zlib gets ~2-3x, not 100x), it measures:
  1. runbook §2.1 by hand, as written: `pg_dump --format=custom --verbose --file=...`, then
     `pg_restore --list` (the runbook's "Backup verified successfully");
  2. the bot's backup in a running bot (runbook.backup.backup, what /migrate backup runs):
     operation lock, exported snapshot with row counts, the dump streamed through sha256 and a
     full read (`pg_restore -f /dev/null`, which catches the truncation --list passes), the TOC
     read, fsync, the catalogue and retention;
  3. the same from the command line (`runbook-bot backup --json`, a fresh process each time);
  4. pg_dump directory format with 2 jobs against single-job custom format (the dumps alone), and
     the bot's backup in each format (directory: dump, then TOC and full read of the directory).

Targets (issue 3): (2) at most 1.25x (1); directory -j2 faster than single-job custom on 2 cores.
Run: `.venv/bin/python bench/backup.py [--runs N] [--rows N]`.
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
from bot.sample_app import ALEMBIC_ARGV, APP_DIR  # noqa: E402

# Four tables of similar size, so a parallel dump has something to share between its workers.
SCHEMA = """
CREATE TABLE accounts (id int PRIMARY KEY, name text NOT NULL, email text NOT NULL, balance numeric(14,2),
                       created date NOT NULL, notes text);
CREATE TABLE events (id bigint PRIMARY KEY, at timestamptz NOT NULL, account_id int NOT NULL, kind text NOT NULL,
                     amount numeric(12,2), payload text);
CREATE TABLE orders (id bigint PRIMARY KEY, account_id int NOT NULL, placed timestamptz NOT NULL,
                     status text NOT NULL, total numeric(12,2) NOT NULL, items int NOT NULL, address text);
CREATE TABLE audit_log (id bigint PRIMARY KEY, at timestamptz NOT NULL, actor text NOT NULL, action text NOT NULL,
                        detail text);
"""
FILL = (
    "INSERT INTO accounts SELECT g, 'user ' || md5(g::text), substr(md5(random()::text), 1, 12) || '@example.com',"
    " round((random() * 1e6)::numeric, 2), date '2019-01-01' + (random() * 2000)::int,"
    " md5(random()::text) || md5(random()::text) FROM generate_series(1, {n}) g",
    "INSERT INTO events SELECT g, now() - g * interval '7 seconds', 1 + (random() * ({n} - 1))::int,"
    " (ARRAY['login','logout','purchase','refund','view','search','click'])[1 + (random() * 6)::int],"
    " round((random() * 1000)::numeric, 2), md5(random()::text) || ' ' || substr(md5(g::text), 1,"
    " (random() * 32)::int) || ' note ' || (random() * 1e6)::int FROM generate_series(1, {n} * 2) g",
    "INSERT INTO orders SELECT g, 1 + (random() * ({n} - 1))::int, now() - g * interval '13 seconds',"
    " (ARRAY['new','paid','shipped','delivered','returned'])[1 + (random() * 4)::int],"
    " round((random() * 5000)::numeric, 2), 1 + (random() * 9)::int,"
    " (random() * 9999)::int || ' ' || md5(random()::text) || ' street, ' || substr(md5(random()::text), 1, 8)"
    " FROM generate_series(1, {n} * 2) g",
    "INSERT INTO audit_log SELECT g, now() - g * interval '3 seconds', 'U' || upper(substr(md5((g % 500)::text), 1, 9)),"
    " (ARRAY['create','update','delete','approve','export'])[1 + (random() * 4)::int],"
    " md5(random()::text) || md5(random()::text) || ' ' || (random() * 1e9)::bigint FROM generate_series(1, {n} * 2) g",
)


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def median(values: list[float]) -> float:
    return statistics.median(values)


def generate(url: str, rows: int) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(SCHEMA)
        for statement in FILL:
            conn.execute(statement.format(n=rows))
        conn.execute("VACUUM ANALYZE")
        return conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]


def runbook_by_hand(url: str, bin_dir: Path, out: Path) -> None:
    """§2.1 exactly: dump (custom, verbose), then the TOC check."""
    out.unlink(missing_ok=True)
    subprocess.run([str(bin_dir / "pg_dump"), url, "--format=custom", "--verbose", f"--file={out}"],
                   check=True, capture_output=True)
    subprocess.run([str(bin_dir / "pg_restore"), "--list", str(out)], check=True, stdout=subprocess.DEVNULL)


def raw_dump(url: str, bin_dir: Path, out: Path, fmt: str, jobs: int) -> None:
    shutil.rmtree(out, ignore_errors=True) if out.is_dir() else out.unlink(missing_ok=True)
    argv = [str(bin_dir / "pg_dump"), url, f"--format={fmt}", f"--file={out}"]
    if fmt == "directory":
        argv.append(f"--jobs={jobs}")
    subprocess.run(argv, check=True, capture_output=True)


def environment(work: Path, url: str, bin_dir: Path, **backups):
    from runbook.config import parse_settings
    from runbook.state import Store

    work.mkdir(parents=True, exist_ok=True)
    config = work / "runbook-bot.yaml"
    extra = "".join(f", {k}: {v}" for k, v in backups.items())
    config.write_text(
        "state_url: sqlite:///state.db\n"
        "environments:\n"
        "  production:\n"
        f"    database_url: '{url}'\n"
        f"    app_dir: '{APP_DIR}'\n"
        f"    alembic: [{', '.join(repr(a) for a in ALEMBIC_ARGV)}]\n"
        f"    pg_bin_dir: '{bin_dir}'\n"
        f"    backups: {{dir: backups, keep: 2{extra}}}\n")
    settings = parse_settings(config.read_text(), source=config)
    store = Store(settings.state_url)
    store.migrate()
    name, env = settings.environment(None)
    return config, name, env, store


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rows", type=int, default=250_000, help="accounts; the other tables get twice as many")
    args = parser.parse_args()

    from runbook import backup as engine

    server = start_server()
    work = Path(tempfile.mkdtemp(prefix="rb-bench-backup-"))
    try:
        url = server.create_database("bench_backup")
        started = time.perf_counter()
        size = generate(url, args.rows)
        print(f"database: {size / 2**20:.0f} MB in 4 tables, generated in {time.perf_counter() - started:.1f} s; "
              f"{os.cpu_count()} CPUs; {args.runs} runs each, interleaved")
        if size < 200 * 2**20:
            print("  (under 200 MB: pass a larger --rows)")
        bin_dir = server.bin_dir
        hand_file = work / "by-hand.dump"
        _config, name, env, store = environment(work / "custom", url, bin_dir)
        config = _config
        _c, _n, env_dir, store_dir = environment(work / "directory", url, bin_dir, parallel_above_bytes=0, jobs=2)
        samples: dict[str, list[float]] = {k: [] for k in (
            "hand", "bot", "cli", "raw_custom", "raw_dir2", "bot_dir2")}
        sizes: dict[str, int] = {}
        for _ in range(args.runs):
            samples["hand"].append(timed(lambda: runbook_by_hand(url, bin_dir, hand_file)))
            made = {}
            samples["bot"].append(timed(lambda: made.update(b=engine.backup(name, env, store))))
            assert made["b"].status == "verified" and made["b"].level == "full"
            sizes["bot"] = made["b"].size_bytes
            samples["cli"].append(timed(lambda: subprocess.run(
                [sys.executable, "-m", "bot.cli", "--config", str(config), "backup", "--json"],
                check=True, capture_output=True)))
            samples["raw_custom"].append(timed(lambda: raw_dump(url, bin_dir, work / "raw.dump", "custom", 1)))
            samples["raw_dir2"].append(timed(lambda: raw_dump(url, bin_dir, work / "raw.dir", "directory", 2)))
            samples["bot_dir2"].append(timed(lambda: made.update(d=engine.backup(name, env_dir, store_dir))))
            assert made["d"].format == "directory" and made["d"].status == "verified"
            sizes["dir"] = made["d"].size_bytes
        sizes["hand"] = hand_file.stat().st_size
        m = {k: median(v) for k, v in samples.items()}

        def line(label: str, key: str) -> str:
            runs = ", ".join(f"{v:.2f}" for v in samples[key])
            return f"  {label:<62} {m[key]:6.2f} s   ({runs})"

        print(f"\ncustom-format archive {sizes['bot'] / 2**20:.0f} MB (by hand {sizes['hand'] / 2**20:.0f} MB), "
              f"directory archive {sizes['dir'] / 2**20:.0f} MB\n")
        print("1. verified backup against runbook §2.1 by hand (medians)")
        print(line("runbook §2.1: pg_dump -Fc --verbose + pg_restore --list", "hand"))
        print(line("bot: backup() with full read, sha256, row counts, catalogue", "bot"))
        print(line("bot: `runbook-bot backup --json` (fresh process)", "cli"))
        ratio = m["bot"] / m["hand"]
        print(f"  ratio bot / by hand: {ratio:.2f}x  (target <= 1.25x: {'met' if ratio <= 1.25 else 'MISSED'})")
        print(f"  ratio CLI / by hand: {m['cli'] / m['hand']:.2f}x")
        print("\n2. parallel directory format against single-job custom format (medians)")
        print(line("pg_dump -Fc (single job)", "raw_custom"))
        print(line("pg_dump -Fd -j2", "raw_dir2"))
        print(line("bot: backup() in directory format, 2 jobs (dump, then full read)", "bot_dir2"))
        speed = m["raw_custom"] / m["raw_dir2"]
        print(f"  -Fd -j2 is {speed:.2f}x as fast as -Fc  (target > 1: {'met' if speed > 1 else 'MISSED'})")
        print(f"  bot directory -j2 / bot custom: {m['bot_dir2'] / m['bot']:.2f}x")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
