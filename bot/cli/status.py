"""`status` (revisions, the last event and run) and `activity` (§4's live picture)."""
from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from runbook.config import Settings

from bot.cli.common import EXIT_ERROR, EXIT_OK, cli_actor, open_store


def cmd_status(settings: Settings, args) -> int:
    from runbook import precheck
    from runbook.revisions import RevisionError
    from runbook.state import StateError
    from runbook.target import TargetError

    name, env = settings.environment(args.env)
    try:
        store = open_store(settings)
        state = precheck.alembic_status(env)
    except (StateError, TargetError, RevisionError) as exc:
        print(f"runbook-bot: {exc}", file=sys.stderr)
        return EXIT_ERROR
    last = store.last_event(name)
    from runbook.incident import latest_run

    run = latest_run(store, name)
    store.record(actor=cli_actor(), action="status", environment=name, outcome="ok")
    if args.json:
        print(json.dumps({
            "environment": name, "current": state.current, "heads": state.heads,
            "pending": [{"revision": r.revision, "message": r.message, "reversible": r.reversible}
                        for r in state.pending],
            "last_event": None if last is None else {
                "actor": last.actor, "action": last.action, "at": last.at.isoformat(), "outcome": last.outcome},
            "last_run": None if run is None else {
                "id": run.id, "kind": run.kind, "state": run.state, "step": run.step, "actor": run.actor,
                "started_at": run.started_at.isoformat(), "summary": run.summary},
        }, indent=2))
    else:
        from bot.text import status_text

        print(status_text(name, state, last, run))
    return EXIT_OK


def cmd_activity(settings: Settings, args) -> int:
    from runbook.activity import activity_to_json
    from runbook.state import StateError
    from runbook.target import TargetError
    from runbook.watch import live_activity

    name, env = settings.environment(args.env)
    try:
        snapshot, target = live_activity(env)
        store = open_store(settings)
    except (StateError, TargetError) as exc:
        print(f"runbook-bot: {exc}", file=sys.stderr)
        return EXIT_ERROR
    store.record(actor=cli_actor(), action="activity", environment=name, outcome="ok",
                 summary=f"{len(snapshot.long_queries)} long, {len(snapshot.idle_in_transaction)} idle in transaction, "
                         f"{len(snapshot.lock_waits)} waiting on locks")
    if args.json:
        print(json.dumps({"environment": name, "target": target, **activity_to_json(snapshot)}, indent=2))
    else:
        from bot.text import activity_text

        print(activity_text(name, target, snapshot))
    return EXIT_OK


__all__ = ["cmd_activity", "cmd_status"]
