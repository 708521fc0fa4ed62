"""`python -m bot.cli`: the same as the `runbook-bot` script."""
from bot.cli.entry import run

run()
