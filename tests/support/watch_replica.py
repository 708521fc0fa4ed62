"""One bot replica running only the watch scheduler, as a separate process (tests/test_scheduler.py).

    python -m tests.support.watch_replica CONFIG LOG

Runs the real WatchScheduler (APScheduler, the leader gate for the configured state database)
until its standard input closes, then shuts down. Every run appends one JSON line to LOG:
{"slot": ..., "outcome": ...}. Slack is whatever SLACK_API_URL points at.
"""
from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path

from bot.app import make_client
from bot.flows import Redactor
from bot.scheduler import WatchScheduler
from bot.watch import WatchRunner, slot_of
from runbook.config import load_settings
from runbook.state import Store


class LoggingRunner(WatchRunner):
    log_path: Path
    _lock = threading.Lock()

    def run(self, environment, slot=None):
        slot = slot or slot_of(self.clock(), self.settings.environments[environment].watch.every_seconds)
        outcome = super().run(environment, slot)
        with self._lock, self.log_path.open("a") as log:
            log.write(json.dumps({"slot": slot.isoformat(), "outcome": outcome, "pid": os.getpid()}) + "\n")
        return outcome


def main(config: str, log_path: str) -> int:
    settings = load_settings(config)
    store = Store(settings.state_url)
    store.migrate()
    runner = LoggingRunner(settings, store, make_client("xoxb-replica", os.environ["SLACK_API_URL"]),
                           redactor=Redactor(settings))
    runner.log_path = Path(log_path)
    scheduler = WatchScheduler(settings, runner).start()
    print("started", flush=True)
    sys.stdin.read()                  # until the test closes our standard input
    scheduler.shutdown(wait=True)
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
