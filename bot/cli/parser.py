"""The `runbook-bot` argument parser: a usage error is one line (exit 2), never argparse's usage dump."""
from __future__ import annotations

import argparse
import os


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, no usage dump
        raise UsageError(f"{message} (see `runbook-bot --help`)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="runbook-bot", description="Slack chat-ops for a PostgreSQL + Alembic migration runbook.")
    parser.add_argument("--config", metavar="FILE",
                        help="configuration file (default: $RUNBOOK_BOT_CONFIG, then ./runbook-bot.yaml)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("precheck", help="§1 pre-migration checklist; exit 0 go, 1 no-go, 2 error")
    p.add_argument("--env", metavar="NAME")
    p.add_argument("--json", action="store_true", help="print the report as JSON")

    p = sub.add_parser("status", help="current and pending revisions, last event")
    p.add_argument("--env", metavar="NAME")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("activity", help="§4 live picture: long queries, idle in transaction, blocking tree")
    p.add_argument("--env", metavar="NAME")
    p.add_argument("--json", action="store_true", help="print the snapshot as JSON")

    for name, default, what in (("migrate", "head", "§3 upgrade under every guard (the no-go gate re-checked "
                                                    "before the first statement), after a verified full backup "
                                                    "(§2) unless one protects it already, validated after (§5)"),
                                ("rollback", "-1", "§6.1 downgrade under the same guards, backed up first the same way")):
        exits = "exit 0 done, 1 failed or refused, 2 error (a failed backup among them: nothing is changed)"
        p = sub.add_parser(name, help=f"{what}; {exits}", description=f"{what}. {exits[0].upper()}{exits[1:]}.")
        p.add_argument("--env", metavar="NAME")
        p.add_argument("--to", metavar="REV", default=default, help=f"target revision (default {default})")
        p.add_argument("--yes", action="store_true", help="stands for the approval; recorded as yours")
        p.add_argument("--no-backup", action="store_true",
                       help="do not take the §2 backup first (taken by default unless a verified full backup "
                            "taken at the current revision, after the last run, within "
                            "approvals.require_backup_within_minutes protects the run); recorded, with a warning")
        p.add_argument("--override-gate", metavar="REASON",
                       help="let the run through a closed no-go gate (lock waits, long queries or idle "
                            "transactions on its tables, an unacknowledged HIGH risk, promotion); recorded "
                            "with the reason as its own event")
        p.add_argument("--json", action="store_true", help="print the result as JSON (with backup_id, "
                                                           "backup_taken, backup_skipped)")

    p = sub.add_parser("backup", help="§2 verified backup; exit 0 verified, 1 failed, 2 error")
    p.add_argument("--env", metavar="NAME")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--schema-only", action="store_true", help="§2.2 schema only, plain SQL")
    what.add_argument("--table", metavar="T", action="append", default=[], help="§2.3 this table (repeatable)")
    p.add_argument("--verify", choices=("full", "restore"),
                   help="top rung of the verification ladder (default: backups.verify)")
    p.add_argument("--json", action="store_true", help="print the catalogue entry as JSON")

    p = sub.add_parser("backups", help="the backup catalogue, newest first")
    p.add_argument("--env", metavar="NAME")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("restore", help="§6.2–6.3 restore a verified backup; exit 0 done, 1 failed or refused, 2 error")
    p.add_argument("id", metavar="ID", help="backup id (see `backups`)")
    p.add_argument("--env", metavar="NAME")
    p.add_argument("--table", metavar="T", action="append", default=[], help="§6.3 only this table (repeatable)")
    p.add_argument("--yes", action="store_true", help="stands for the approval; recorded as yours")
    p.add_argument("--json", action="store_true", help="print the result as JSON")

    p = sub.add_parser("rehearse", help="the pending range on a restored copy: time, locks, rewrites per revision, "
                                        "up-down-up, §5; exit 0 passed, 1 a revision or downgrade failed, 2 error")
    p.add_argument("--env", metavar="NAME")
    p.add_argument("--to", metavar="REV", default="head", help="head (default), +1 or a revision")
    p.add_argument("--backup", metavar="ID", help="restore this verified full backup (default: the latest at the "
                                                  "current revision, else a new one)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")

    p = sub.add_parser("validate", help="§5 post-migration validation; exit 0 pass, 1 fail, 2 error")
    p.add_argument("--env", metavar="NAME")
    p.add_argument("--expect", metavar="REV",
                   help="the revision the database should be at (default: where the latest completed run left it)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")

    p = sub.add_parser("doctor", help="will this configuration work? every prerequisite, one line each (ok / warn / "
                                      "fail with what to do); exit 0 ok (warnings allowed), 1 a failure, 2 a bad "
                                      "configuration")
    p.add_argument("--env", metavar="NAME", help="only this environment (default: every configured one)")
    p.add_argument("--json", action="store_true", help="print the checks as JSON")

    p = sub.add_parser("incident", help="§7.3 incident summary as Markdown (default: the latest run); exit 0, 2")
    p.add_argument("run_id", metavar="RUN_ID", nargs="?",
                   help="a migrate, rollback or restore run id (see `migrate --json`, `restore --json`)")
    p.add_argument("--env", metavar="NAME", help="the latest run of this environment")

    p = sub.add_parser("escalate", help="§7.2 escalate: 1 self-service, 2 owner, 3 emergency; "
                                        "exit 0 done, 1 a part failed (Slack, GitHub, pause hook), 2 error")
    p.add_argument("--env", metavar="NAME")
    p.add_argument("--level", type=int, choices=(1, 2, 3), default=1, help="1 (default), 2 or 3")
    p.add_argument("reason", metavar="REASON", nargs="*", help="why, in a few words")

    p = sub.add_parser("ack-risk", help="acknowledge a reviewed HIGH risk rating of a pending revision (recorded "
                                        "as yours); exit 0 recorded, 1 refused, 2 error")
    p.add_argument("--env", metavar="NAME")
    p.add_argument("revision", metavar="REV", help="a pending revision (id or unique prefix)")
    p.add_argument("--reason", required=True, help="why its risk is acceptable (shown with the rating, audited)")

    p = sub.add_parser("serve", help="run the bot (Socket Mode or HTTP)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--socket", action="store_true", help="Socket Mode (default; needs SLACK_APP_TOKEN)")
    mode.add_argument("--http", action="store_true", help="HTTP mode under a WSGI server (needs SLACK_SIGNING_SECRET)")
    p.add_argument("--port", type=int, default=int(os.environ.get("PORT", "3000")))
    p.add_argument("--host", default=os.environ.get("HOST", "0.0.0.0"))

    p = sub.add_parser("demo", help="console demo on the embedded PostgreSQL; its state, backups and "
                                    "configuration go in .demo/ here (emptied at start, kept after exit)")
    p.add_argument("--scripted", action="store_true", help="play the product's story and exit")
    p.add_argument("--transcript", action="store_true",
                   help="with --scripted: print the README's excerpt of it, times and ids made steady "
                        "(make readme-transcript writes it into README.md)")

    p = sub.add_parser("manifest", help="print the Slack app manifest (YAML) generated from the registered listeners")
    p.add_argument("--socket", action="store_true", help="Socket Mode: no request URLs")
    p.add_argument("--url", metavar="URL", help="the bot's public https:// address (HTTP mode)")
    return parser


__all__ = ["UsageError", "build_parser"]
