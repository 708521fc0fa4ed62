"""`precheck` (§1, the cold path of issue 18: keep its imports lazy) and `ack-risk`."""
from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from runbook.config import Settings

from bot.cli.common import EXIT_ERROR, EXIT_NO_GO, EXIT_OK, cli_actor, collect_garbage_again, open_store


def cmd_precheck(settings: Settings, args, *, sidecar=None) -> int:
    from runbook import precheck, review
    from runbook.state.records import StateError
    from runbook.state.sidecar import StoreSidecar

    collect_garbage_again()

    name, env = settings.environment(args.env)
    if sidecar is None:
        with StoreSidecar.start() as own:
            return cmd_precheck(settings, args, sidecar=own)
    # The state store lives in a child process (see runbook.state.sidecar): SQLAlchemy loads there,
    # on the other core, while this one reads the target; the reads are asked for up front.
    opened = sidecar.open(settings.state_url, cli_actor())
    acks = sidecar.events(environment=name, action=review.ACK_ACTION, limit=review.ACK_READ_LIMIT)
    backup = sidecar.last_backup_at(name)
    rehearsals = sidecar.events(environment=name, action="rehearse", limit=20)

    def rehearsed(current, head):
        from runbook.precheck import project_of
        from runbook.rehearsal_record import match_in_events      # not runbook.rehearse: it loads backup, migrate

        return match_in_events(answered(rehearsals, []), project_of(env), current, head)

    def answered(pending, fallback):
        try:
            return pending.result()
        except StateError:             # the store's own error is reported just below
            return fallback

    report = precheck.run_precheck(name, env, last_backup_at=lambda: answered(backup, None),
                                   acknowledgements=lambda: review.acknowledgements_in(answered(acks, [])),
                                   rehearsal=rehearsed)
    try:
        for line in opened.result():
            print(f"runbook-bot: {line}", file=sys.stderr)
        sidecar.record(actor=cli_actor(), action="precheck", environment=name, outcome=report.verdict,
                       summary="; ".join(report.reasons)[:2000],
                       details={"checks": {c.name: c.status for c in report.checks}})
    except StateError as exc:
        print(f"runbook-bot: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if args.json:
        print(json.dumps(precheck.report_to_json(report), indent=2))
    else:
        from bot.text import precheck_text

        print(precheck_text(report))
    return EXIT_OK if report.verdict == "go" else EXIT_NO_GO


def cmd_ack_risk(settings: Settings, args) -> int:
    """`ack-risk [--env NAME] REV --reason TEXT` (issue 7): the CLI's acknowledgement, recorded as
    cli:<user> like --yes; bound to the revision file as it is now."""
    from runbook import precheck, review
    from runbook.revisions import RevisionError
    from runbook.state import StateError
    from runbook.target import TargetError

    name, env = settings.environment(args.env)
    try:
        store = open_store(settings)
        project = precheck.project_of(env)
        with precheck.target_of(env).connect("ack-risk") as conn:
            current = project.current(conn)
        ack = review.acknowledge(store, name, env, args.revision, args.reason, cli_actor(), project=project,
                                 current=current)
    except review.AcknowledgeError as exc:
        print(f"runbook-bot: ack-risk refused: {exc}", file=sys.stderr)
        return EXIT_NO_GO
    except (StateError, TargetError, RevisionError) as exc:
        print(f"runbook-bot: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print(f"Risk of {ack.revision} on {name} acknowledged by {ack.actor}: {ack.reason} "
          f"(bound to {ack.file_sha256[:12]}…; an edit to the file needs a new acknowledgement)")
    return EXIT_OK


__all__ = ["cmd_ack_risk", "cmd_precheck"]
