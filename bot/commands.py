"""`/migrate` text -> a validated Command. Pure: no I/O, no Slack, no database.

Grammar: `/migrate <action> [env] [args]`. The environment may be left out when
only one is configured. Every rejection is a CommandError with one line saying
what was wrong and what to do.
"""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence


class CommandError(Exception):
    """A malformed command; the message is one line meant for the user."""


@dataclass(frozen=True)
class ActionSpec:
    name: str
    usage: str
    summary: str
    section: str
    takes_env: bool = True
    max_args: int = 0
    choices: tuple[str, ...] = ()    # when set, the first argument must be one of these
    # when set, called with the arguments; raises CommandError (so a bad shape is refused in the ack)
    check_args: Callable[[tuple[str, ...]], Any] | None = None


ACTIONS: dict[str, ActionSpec] = {
    spec.name: spec
    for spec in (
        ActionSpec("help", "/migrate help", "what the bot can do", "", takes_env=False),
        ActionSpec("status", "/migrate status [env]", "current and pending revisions, last event", "§1.2"),
        ActionSpec("precheck", "/migrate precheck [env]", "the pre-migration checklist with a go / no-go", "§1"),
        ActionSpec("run", "/migrate run [env] [head | +1 | REV] [override REASON]",
                   "migrate (default: to head), after approval; watched live, validated after; `override` "
                   "(approvers) lets it through a closed no-go gate", "§3–§5",
                   max_args=1000, check_args=lambda args: migration_args(args, "run")),
        ActionSpec("rollback", "/migrate rollback [env] [-1 | REV] [override REASON]",
                   "Alembic downgrade (default: one revision), after approval; irreversible ones are refused",
                   "§6.1", max_args=1000, check_args=lambda args: migration_args(args, "rollback")),
        ActionSpec("rehearse", "/migrate rehearse [env] [head | +1 | REV]",
                   "the pending range on a restored copy: time, locks and rewrites per revision, up-down-up, "
                   "§5; the target is not touched (approvers)", "§1.3",
                   max_args=1, check_args=lambda args: rehearse_args(args)),
        ActionSpec("validate", "/migrate validate [env]", "post-migration validation, with what to do if it fails",
                   "§5, §6.5"),
        ActionSpec("activity", "/migrate activity [env]",
                   "live picture: long queries, idle in transaction, blocking tree", "§4"),
        ActionSpec("watch", "/migrate watch [env] on | off | status",
                   "pause, resume or show the scheduled lock and long-query alerts", "§4, §7.2",
                   max_args=1, choices=("on", "off", "status")),
        ActionSpec("backup", "/migrate backup [env] [schema | tables=a,b]",
                   "a verified backup: full, schema only, or some tables", "§2",
                   max_args=1, check_args=lambda args: backup_args(args)),
        ActionSpec("backups", "/migrate backups [env]", "the backup catalogue", "§2.5"),
        ActionSpec("restore", "/migrate restore [env] ID [tables=a,b]",
                   "restore a verified backup (all of it, or some tables), after approval", "§6.2–6.3",
                   max_args=2, check_args=lambda args: restore_args(args)),
        ActionSpec("ack-risk", "/migrate ack-risk [env] REV reason",
                   "acknowledge a reviewed HIGH risk rating of a pending revision (approvers; audited)", "§1.2",
                   max_args=1000, check_args=lambda args: ack_risk_args(args)),
        ActionSpec("escalate", "/migrate escalate [env] [1 | 2 | 3] [reason]",
                   "1: the runbook section for the current state; 2: tag the owner with the incident summary; "
                   "3: emergency (owner and @here, pause the application)", "§7",
                   max_args=1000, check_args=lambda args: escalate_args(args)),
    )
}

# runbook.escalation.MAX_REASON (the engine checks it again; tests keep the two equal)
MAX_ESCALATION_REASON = 300


def escalate_args(args: Sequence[str]) -> tuple[int, str]:
    """`[1 | 2 | 3] [reason]` of `/migrate escalate` -> (level, reason). The level defaults to 1 and
    comes first; the reason is the rest, one line."""
    usage = "Usage: `/migrate escalate [env] [1 | 2 | 3] [reason]`."
    if not args:
        return 1, ""
    first = args[0]
    shown = first if len(first) <= 40 else first[:40] + "…"
    if not re.fullmatch(r"[123]", first):
        if re.fullmatch(r"[+-]?\d+", first):
            raise CommandError(f"There is no escalation level {shown}: use 1 (self-service), 2 (owner) or "
                               f"3 (emergency). {usage}")
        raise CommandError(f"'{shown}' is neither a configured environment nor an escalation level (1, 2 or 3); "
                           f"the level comes before the reason. {usage}")
    reason = " ".join(" ".join(args[1:]).split())
    if len(reason) > MAX_ESCALATION_REASON:
        raise CommandError(f"The reason is {len(reason)} characters long: keep it to {MAX_ESCALATION_REASON} "
                           f"(the incident summary carries the details). {usage}")
    return int(first), reason


_BACKUP_ID = re.compile(r"^#?\d{1,12}$")
_TABLE_ARG = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]{0,62}(\.[A-Za-z_][A-Za-z0-9_$]{0,62})?$")


def restore_args(args: Sequence[str]) -> tuple[str, tuple[str, ...]]:
    """`ID [tables=a,b]` of `/migrate restore` -> (backup id, table names as typed). Shape only:
    the flow checks both against the catalogue and the backup."""
    usage = "Usage: `/migrate restore [env] ID [tables=a,b]` (ids: `/migrate backups`)."
    ids = [a for a in args if not a.lower().startswith("tables=")]
    table_args = [a for a in args if a.lower().startswith("tables=")]
    if not ids:
        raise CommandError(f"`/migrate restore` needs the id of a backup. {usage}")
    if not _BACKUP_ID.match(ids[0]):
        shown = ids[0] if len(ids[0]) <= 40 else ids[0][:40] + "…"
        raise CommandError(f"'{shown}' is neither a configured environment nor a backup id (a number). {usage}")
    if len(ids) > 1 or len(table_args) > 1:
        raise CommandError(f"`/migrate restore` takes one backup id and at most one tables=… {usage}")
    tables: tuple[str, ...] = ()
    if table_args:
        tables = tuple(t.strip() for t in table_args[0].split("=", 1)[1].split(","))
        bad = next((t for t in tables if not _TABLE_ARG.match(t)), None)
        if bad is not None:
            shown = bad if len(bad) <= 40 else bad[:40] + "…"
            raise CommandError(f"'{shown}' is not a table name: tables=a,b takes table or schema.table names. {usage}")
    return ids[0].lstrip("#"), tables


def backup_args(args: Sequence[str]) -> tuple[str, tuple[str, ...]]:
    """`[schema | tables=a,b]` of `/migrate backup` -> (kind, table names as typed). Shape only:
    the flow checks the tables against the database."""
    usage = "Usage: `/migrate backup [env] [schema | tables=a,b]`."
    if not args:
        return "full", ()
    arg = args[0]
    if arg.lower() == "schema":
        return "schema", ()
    if arg.lower().startswith("tables="):
        tables = tuple(t.strip() for t in arg.split("=", 1)[1].split(",") if t.strip())
        if not tables:
            raise CommandError(f"tables= needs at least one table name. {usage}")
        bad = next((t for t in tables if not _TABLE_ARG.match(t)), None)
        if bad is not None:
            shown = bad if len(bad) <= 40 else bad[:40] + "…"
            raise CommandError(f"'{shown}' is not a table name: tables=a,b takes table or schema.table names. {usage}")
        return "tables", tables
    shown = arg if len(arg) <= 40 else arg[:40] + "…"
    raise CommandError(f"'{shown}' is neither a configured environment nor a backup option (schema, tables=a,b). "
                       f"{usage}")


# What a revision argument may look like before the scripts are asked: an id or a unique prefix, a
# branch label (name@head), head/heads/base, or relative steps (+N, -N, REV+N, head-N).
_REVISION_ARG = re.compile(r"^(?:[+-]\d{1,4}|[A-Za-z0-9_][A-Za-z0-9_.@+-]{0,79})$")


def _revision_arg(args: Sequence[str], *, action: str, default: str, other: str, hint: str) -> str:
    """The one revision argument of `run` / `rollback`, shape only: the flow resolves it against the
    app's scripts (an unknown revision is refused there, also in one line). `other`: the action a
    relative step of the opposite sign belongs to."""
    usage = f"Usage: `{ACTIONS[action].usage}`."
    if not args:
        return default
    arg = args[0]
    shown = arg if len(arg) <= 40 else arg[:40] + "…"
    if not _REVISION_ARG.match(arg):
        raise CommandError(f"'{shown}' is neither a configured environment nor a revision ({hint}). {usage}")
    opposite = "-" if action == "run" else "+"
    if arg.startswith(opposite) and arg[1:].isdigit():
        raise CommandError(f"{shown} goes the other way: that is `/migrate {other}`. {usage}")
    return arg


# The word after which `/migrate run|rollback` takes the reason of a no-go gate override.
OVERRIDE_WORD = "override"
MAX_OVERRIDE_REASON = 300      # runbook.ops.MAX_OVERRIDE_REASON (the engine checks it again)


def migration_args(args: Sequence[str], action: str) -> tuple[str, str | None]:
    """`[REV] [override REASON…]` of `/migrate run` or `/migrate rollback` -> (the target as typed, the
    override's reason or None). Who may override is decided by the engine (runbook.ops)."""
    usage = f"Usage: `{ACTIONS[action].usage}`."
    words = list(args)
    reason = None
    if OVERRIDE_WORD in [w.lower() for w in words]:
        at = [w.lower() for w in words].index(OVERRIDE_WORD)
        words, reason = words[:at], " ".join(words[at + 1:]).strip()
        if not reason:
            raise CommandError(f"`override` needs a reason: say why the run may go through a closed no-go gate. "
                               f"{usage}")
        if len(reason) > MAX_OVERRIDE_REASON:
            raise CommandError(f"The override's reason is longer than {MAX_OVERRIDE_REASON} characters. {usage}")
    if len(words) > 1:
        raise CommandError(f"`/migrate {action}` takes one revision, then optionally `override REASON`. {usage}")
    if action == "run":
        typed = _revision_arg(words, action="run", default="head", other="rollback", hint="head, +1 or a revision id")
    else:
        typed = _revision_arg(words, action="rollback", default="-1", other="run", hint="-1, base or a revision id")
    return typed, reason


def rehearse_args(args: Sequence[str]) -> str:
    """`[head | +1 | REV]` of `/migrate rehearse` -> the target as typed (default head); resolved by the engine."""
    usage = f"Usage: `{ACTIONS['rehearse'].usage}`."
    if not args:
        return "head"
    arg = args[0]
    shown = arg if len(arg) <= 40 else arg[:40] + "…"
    if not _REVISION_ARG.match(arg):
        raise CommandError(f"'{shown}' is neither a configured environment nor a revision (head, +1 or a revision "
                           f"id). {usage}")
    if arg.startswith("-"):
        raise CommandError(f"{shown} goes down: a rehearsal runs the pending range up, then down and up again. "
                           f"{usage}")
    return arg


def run_args(args: Sequence[str]) -> str:
    """`[head | +1 | REV]` of `/migrate run` -> the target as typed (default head)."""
    return migration_args(args, "run")[0]


def rollback_args(args: Sequence[str]) -> str:
    """`[-1 | REV]` of `/migrate rollback` -> the target as typed (default -1)."""
    return migration_args(args, "rollback")[0]


# runbook.review.MAX_ACK_REASON (the engine checks it again)
MAX_ACK_REASON = 300
# A revision id or a unique prefix, before the scripts are asked (the flow checks it is pending).
_ACK_REVISION = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.@-]{0,79}$")


def ack_risk_args(args: Sequence[str]) -> tuple[str, str]:
    """`REV reason` of `/migrate ack-risk` -> (revision as typed, reason). Shape only: the flow checks
    the revision against the environment's pending revisions."""
    usage = f"Usage: `{ACTIONS['ack-risk'].usage}`."
    if not args:
        raise CommandError(f"`/migrate ack-risk` needs the revision and why its risk is acceptable. {usage}")
    revision = args[0]
    shown = revision if len(revision) <= 40 else revision[:40] + "…"
    if not _ACK_REVISION.match(revision):
        raise CommandError(f"'{shown}' is neither a configured environment nor a revision id. {usage}")
    reason = " ".join(" ".join(args[1:]).split())
    if not reason:
        raise CommandError(f"Say why the risk of {shown} is acceptable (it is shown with the rating and kept in the "
                           f"audit trail). {usage}")
    if len(reason) > MAX_ACK_REASON:
        raise CommandError(f"The reason is {len(reason)} characters long: keep it to {MAX_ACK_REASON}. {usage}")
    return revision, reason


@dataclass(frozen=True)
class Command:
    action: str
    environment: str | None = None
    args: tuple[str, ...] = field(default_factory=tuple)

    @property
    def permission(self) -> str | None:
        """The runbook.authz action this command needs (a key of an environment's `permissions`), or
        None when everyone may (read-only commands, `watch on|status`, `escalate 1`)."""
        if self.action in ("run", "rollback", "restore", "backup", "rehearse"):
            return self.action
        if self.action == "ack-risk":
            return "ack_risk"
        if self.action == "watch" and self.args[:1] == ("off",):
            return "watch_off"
        if self.action == "escalate":
            level = escalate_args(self.args)[0]
            return f"escalate_{level}" if level >= 2 else None
        return None

    @property
    def changes_state(self) -> bool:
        """Whether running it twice would act twice (ask twice, back up twice, page twice): such a
        command is run once per Slack request, however often the request arrives (replays)."""
        if self.action == "watch":
            return self.args[:1] in (("on",), ("off",))
        return self.action in ("run", "rollback", "restore", "backup", "rehearse", "ack-risk", "escalate")

    @property
    def text(self) -> str:
        parts = ["/migrate", self.action]
        if self.environment:
            parts.append(self.environment)
        parts.extend(self.args)
        return " ".join(parts)


def _tokens(text: str) -> list[str]:
    try:
        return shlex.split(text)
    except ValueError as exc:
        raise CommandError(f"Could not read the command ({exc}). Check your quotes; see `/migrate help`.") from None


def unescape_slack(text: str) -> str:
    """Slash-command text as typed: Slack sends `&`, `<` and `>` HTML-escaped (and only those), so
    they are undone here, once, at the edge; whatever echoes the text escapes it again, once."""
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def parse(text: str, environments: list[str] | tuple[str, ...]) -> Command:
    """Parse the text after `/migrate` as Slack sends it (`&`, `<`, `>` escaped). `environments` are
    the configured names."""
    text = unescape_slack(text or "")
    if len(text) > 2000:
        raise CommandError("That command is too long (over 2000 characters). See `/migrate help`.")
    tokens = _tokens(text or "")
    if not tokens:
        return Command("help")
    action, rest = tokens[0].lower(), tokens[1:]
    spec = ACTIONS.get(action)
    if spec is None:
        shown = action if len(action) <= 40 else action[:40] + "…"
        raise CommandError(
            f"Unknown action '{shown}'. Try one of: {', '.join(ACTIONS)} (see `/migrate help`)."
        )
    # A CLI habit (`--force`, `-y`) where the environment or the first argument goes: say that
    # /migrate has no options, rather than "Unknown environment '--force'". (-1 is a revision.)
    leading = rest[:2] if rest and rest[0] in environments else rest[:1]
    option = next((t for t in leading if re.match(r"^--?[A-Za-z]", t)), None)
    if option is not None:
        shown = option if len(option) <= 40 else option[:40] + "…"
        raise CommandError(f"`/migrate {action}` takes no options ('{shown}'). Usage: `{spec.usage}`.")
    environment = None
    if spec.takes_env and rest and rest[0] in environments:
        environment, rest = rest[0], rest[1:]
    elif spec.takes_env and rest and len(rest) > spec.max_args and rest[0].lower() not in spec.choices:
        shown = rest[0] if len(rest[0]) <= 40 else rest[0][:40] + "…"
        raise CommandError(
            f"Unknown environment '{shown}'. Configured: {', '.join(sorted(environments)) or 'none'}."
        )
    if spec.takes_env and environment is None and len(environments) > 1:
        raise CommandError(
            f"Several environments are configured ({', '.join(sorted(environments))}): "
            f"name one, e.g. `/migrate {action} {sorted(environments)[0]}`."
        )
    if len(rest) > spec.max_args:
        raise CommandError(f"`/migrate {action}` takes no more arguments. Usage: `{spec.usage}`.")
    if spec.choices and rest:
        if rest[0].lower() not in spec.choices:
            shown = rest[0] if len(rest[0]) <= 40 else rest[0][:40] + "…"
            raise CommandError(f"`/migrate {action}` takes {', '.join(spec.choices[:-1])} or {spec.choices[-1]},"
                               f" not '{shown}'. Usage: `{spec.usage}`.")
        rest = [rest[0].lower(), *rest[1:]]
    if spec.check_args is not None:
        spec.check_args(tuple(rest))
    if spec.takes_env and environment is None and environments:
        environment = next(iter(environments))
    return Command(action, environment, tuple(rest))
