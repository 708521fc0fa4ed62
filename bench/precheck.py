"""Precheck benchmark: the bot against runbook §1 done by hand, in the same run.

Measures, on a copy of the sample app at its first revision (two revisions pending; its env.py
imports the app's models, as a real app's does), in interleaved rounds so that a machine shared
with others slows every figure alike:
  1. runbook §1 by hand, exactly as written: five `psql` calls (§1.1), then `alembic current`,
     `alembic history --verbose`, `alembic upgrade head --sql` (§1.2);
  2. `runbook-bot precheck --json` cold: a fresh process right after a revision file's stamp
     changed, so no cached SQL preview helps (the first precheck after a revision lands);
  3. the same, warm: a fresh process with the preview cached;
  4. the precheck inside a running bot (the same Flows, its parsed scripts and cached preview);
  5. slash-command ack latency of `runbook-bot serve --http` under 20 concurrent signed requests.

Targets (issue 18): cold CLI at most 0.50 of §1 by hand, warm CLI at most 0.35, in the bot at
most 0.05; ack p99 under 300 ms. Ratios are of medians within this run.
Run: `make bench` or `.venv/bin/python bench/precheck.py [--runs N]`.
"""
from __future__ import annotations

import argparse
import compileall
import hashlib
import hmac
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bot.embedded import start_server  # noqa: E402
from bot.localslack import LocalSlack  # noqa: E402
from bot.sample_app import ALEMBIC_ARGV, APP_DIR, REV_0001, REV_0003, sample_db_at  # noqa: E402

RUNBOOK_1_1 = (
    "SELECT 1;",
    "SELECT pg_size_pretty(pg_database_size(current_database()));",
    "SELECT count(*) FROM pg_stat_activity WHERE state = 'active';",
    "SELECT pid, now() - pg_stat_activity.query_start AS duration, query \nFROM pg_stat_activity \n"
    "WHERE (now() - pg_stat_activity.query_start) > interval '5 minutes' \nAND state != 'idle';",
    "SELECT relation::regclass, mode, granted \nFROM pg_locks \nWHERE NOT granted;",
)
RUNBOOK_1_2 = (("current",), ("history", "--verbose"), ("upgrade", "head", "--sql"))
SIGNING_SECRET = "bench-signing-secret"


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def by_hand(url: str, psql: Path, app_dir: Path = APP_DIR) -> None:
    for query in RUNBOOK_1_1:
        subprocess.run([str(psql), url, "-c", query], check=True, capture_output=True)
    env = dict(os.environ, DATABASE_URL=url)
    for args in RUNBOOK_1_2:
        subprocess.run([*ALEMBIC_ARGV, *args], cwd=app_dir, env=env, check=True, capture_output=True)


def touch(path: Path) -> None:
    """A new stamp (mtime) for `path`: every cached SQL preview of its app is stale."""
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, max(time.time_ns(), stat.st_mtime_ns + 1_000_000)))


def write_config(directory: Path, url: str, bin_dir: Path, app_dir: Path = APP_DIR) -> Path:
    config = directory / "runbook-bot.yaml"
    config.write_text(
        "state_url: sqlite:///state.db\n"
        "slack: {channel: C0BENCH001}\n"
        "environments:\n"
        "  production:\n"
        f"    database_url: '{url}'\n"
        f"    app_dir: '{app_dir}'\n"
        f"    alembic: [{', '.join(repr(a) for a in ALEMBIC_ARGV)}]\n"
        f"    pg_bin_dir: '{bin_dir}'\n"
        "    approvals: {approvers: [U0BENCH001]}\n"
    )
    return config


def cli_precheck(config: Path) -> None:
    result = subprocess.run([str(ROOT / ".venv" / "bin" / "runbook-bot"), "--config", str(config),
                             "precheck", "--json"], capture_output=True)
    if result.returncode not in (0, 1):
        raise SystemExit(f"precheck failed: {result.stderr.decode()[-500:]}")


def signed_slash(url: str, text: str) -> float:
    body = urllib.parse.urlencode({"command": "/migrate", "text": text, "user_id": "U0BENCH001",
                                   "channel_id": "C0BENCH001", "team_id": "T0BENCH01",
                                   "trigger_id": f"b.{time.time_ns()}"}).encode()
    ts = str(int(time.time()))
    signature = "v0=" + hmac.new(SIGNING_SECRET.encode(), f"v0:{ts}:".encode() + body, hashlib.sha256).hexdigest()
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "X-Slack-Request-Timestamp": ts, "X-Slack-Signature": signature,
        "Content-Type": "application/x-www-form-urlencoded"})
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()
        if response.status != 200:
            raise SystemExit(f"ack status {response.status}")
    return time.perf_counter() - started


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def ack_latency(config: Path, concurrency: int = 20, rounds: int = 10) -> list[float]:
    with LocalSlack(joined=("C0BENCH001",)) as slack:
        port = free_port()
        env = dict(os.environ, SLACK_BOT_TOKEN="xoxb-bench", SLACK_SIGNING_SECRET=SIGNING_SECRET,
                   SLACK_API_URL=slack.url)
        server = subprocess.Popen([str(ROOT / ".venv" / "bin" / "runbook-bot"), "--config", str(config), "serve",
                                   "--http", "--host", "127.0.0.1", "--port", str(port)], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            health = f"http://127.0.0.1:{port}/health"
            deadline = time.monotonic() + 30
            while True:
                try:
                    with urllib.request.urlopen(health, timeout=1):
                        break
                except OSError:
                    if time.monotonic() > deadline or server.poll() is not None:
                        raise SystemExit("serve --http did not come up")
                    time.sleep(0.05)
            url = f"http://127.0.0.1:{port}/slack/events"
            samples: list[float] = []
            with ThreadPoolExecutor(max_workers=concurrency) as pool:
                for _ in range(rounds):
                    samples += list(pool.map(lambda _i: signed_slash(url, "status"), range(concurrency)))
            return samples
        finally:
            server.terminate()
            server.wait(15)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(share * (len(ordered) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="rounds (default 7)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rb-bench-"))
    os.environ["RUNBOOK_BOT_CACHE_DIR"] = str(work / "cache")
    server = start_server()
    try:
        url = server.create_database("bench_precheck")
        sample_db_at(url, REV_0001, seed_rows=2000)
        psql = server.bin_dir / "psql"
        app_dir = work / "home_budget"          # a copy: its revision's stamp changes for the cold runs
        shutil.copytree(APP_DIR, app_dir, ignore=shutil.ignore_patterns("__pycache__"))
        head_file = app_dir / "alembic" / "versions" / f"{REV_0003}.py"
        config = write_config(work, url, server.bin_dir, app_dir)

        # Every figure starts with .pyc files written, as an installed package and a deployed app have
        # them (PYTHONDONTWRITEBYTECODE, set in many shells and images, would make each run compile).
        for directory in (ROOT / "runbook", ROOT / "bot", app_dir):
            compileall.compile_dir(directory, quiet=2)
        by_hand(url, psql, app_dir)
        cli_precheck(config)
        hand, cold, cli = [], [], []
        for _ in range(args.runs):              # interleaved: a busy machine slows each alike
            hand.append(timed(lambda: by_hand(url, psql, app_dir)))
            touch(head_file)
            cold.append(timed(lambda: cli_precheck(config)))
            cli.append(timed(lambda: cli_precheck(config)))

        from runbook import precheck
        from runbook.config import parse_settings

        # As Flows does in the running bot: one AlembicProject per environment, kept warm.
        env = parse_settings(config.read_text(), source=config).environments["production"]
        project = precheck.project_of(env)
        precheck.run_precheck("production", env, project=project)
        warm = [timed(lambda: precheck.run_precheck("production", env, project=project)) for _ in range(args.runs)]
        hand_after = [timed(lambda: by_hand(url, psql, app_dir)) for _ in range(max(3, args.runs // 2))]

        acks = ack_latency(config)

        m_hand = statistics.median(hand + hand_after)
        m_cold, m_cli, m_warm = statistics.median(cold), statistics.median(cli), statistics.median(warm)
        print(f"runbook §1 by hand (5 psql + 3 alembic)      median {m_hand * 1000:7.1f} ms  "
              f"({len(hand) + len(hand_after)} runs)")
        print(f"runbook-bot precheck, cold (a revision changed) median {m_cold * 1000:7.1f} ms  "
              f"ratio {m_cold / m_hand:.2f}  (target <= 0.50)")
        print(f"runbook-bot precheck, warm (preview cached)     median {m_cli * 1000:7.1f} ms  "
              f"ratio {m_cli / m_hand:.2f}  (target <= 0.35)")
        print(f"precheck inside the running bot (warm)          median {m_warm * 1000:7.1f} ms  "
              f"ratio {m_warm / m_hand:.3f}  (target <= 0.05)")
        print(f"slash-command ack, 20 concurrent, {len(acks)} requests: p50 {percentile(acks, 0.5) * 1000:.1f} ms, "
              f"p99 {percentile(acks, 0.99) * 1000:.1f} ms  (target p99 < 300 ms)")
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
