"""`python -m bot.cli`: the same as the `runbook-bot` script."""
import sys

from bot.cli.entry import main

sys.exit(main())
