"""The `runbook-bot` command (the `runbook-bot` script and `python -m bot.cli`).

Exit codes follow design §2: precheck 0 go, 1 no-go, 2 error. Every error is one
line on stderr; no traceback reaches the user. Slack and the scheduler are
imported only by the commands that need them, and each command's module only when
it runs (bot/cli/entry.py), so a CLI precheck starts fast.

  entry.py      main: parse, start a precheck's render first, load the configuration, dispatch;
                run: the script, ending without tearing its modules down
  parser.py     the argument parser
  common.py     exit codes, the actor, logging, the state store, --json or text output
  precheck.py   precheck, ack-risk          status.py     status, activity
  runs.py       migrate, rollback, validate, rehearse
  backups.py    backup, backups, restore    incidents.py  escalate, incident, after a failed run
  service.py    doctor, manifest, serve
"""
from bot.cli.entry import main, run

__all__ = ["main", "run"]
