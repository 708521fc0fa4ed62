"""`/migrate` commands on the bot's own executor: `Flows` (core.py) builds the services and the handlers and
runs each command after admitting it. One concern a module: work (the bounded executor), replies (the
event and the answer of a command), admission (channel, replays, runbook.authz), then the handlers by
runbook section: checks (§1, §4 on demand), runs (§3, §5, §6.1), backups (§2, §6.2–6.3), alerts (§4's
watch switch, §7). The names below are what callers and tests import from `bot.flows`."""
from bot.flows.admission import channel_refusal
from bot.flows.backups import BackupProgress
from bot.flows.core import Flows
from bot.flows.replies import post_message
from bot.flows.work import Busy
from bot.origin import Origin
from bot.redaction import Redactor
from bot.restores import restore_with_yes

__all__ = ["BackupProgress", "Busy", "Flows", "Origin", "Redactor", "channel_refusal", "post_message",
           "restore_with_yes"]
