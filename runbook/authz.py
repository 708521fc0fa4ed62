"""Who may do what on an environment (issue 13 §2; design rule 18). Transport-neutral.

The decision lives here, once: the Slack handlers and the operations (runbook/ops.py) ask
`allowed(settings, environment, action, actor, members_of)` and render `refusal_line(...)`; they
never compare IDs themselves. The rules are each environment's `permissions` block
(runbook.config.Permissions): "everyone", "approvers" (the environment's approvals.approvers) or a
list of Slack user IDs (U…, W…) and user-group IDs (S…).

A user group is expanded by `members_of(group_id) -> list of user IDs`, which the caller supplies
(the Slack side asks `usergroups.users.list` on every check, so a removal counts at once). Without
one, only users listed by ID are recognised. Whatever `members_of` raises (it cannot tell who is in
the group) propagates: the caller refuses and says so.

The command line runs as `cli:<user>`: whoever runs it already has the configuration, the secrets
and the state database, so there is nothing left to withhold from them. It is always allowed.
"""
from __future__ import annotations

from typing import Callable, Iterable, Sequence

from runbook.config import Permissions, Settings

EVERYONE = "everyone"
APPROVERS = "approvers"
# The actions a permissions block names; anything else is a programming error (ValueError).
ACTIONS: tuple[str, ...] = tuple(Permissions.model_fields)
# The actor prefix of the command line (bot/cli/common.py): trusted, see the module's docstring.
TRUSTED_PREFIX = "cli:"

MembersOf = Callable[[str], Iterable[str]]

# What each action is, as the refusal says it ("Only … may <this> on <env>").
DOING: dict[str, str] = {
    "watch_off": "pause the alerts (`/migrate watch off`)",
    "escalate_2": "escalate to the owner (`/migrate escalate 2`)",
    "escalate_3": "declare an emergency (`/migrate escalate 3`: @here and the pause hook)",
    "backup": "take a backup (`/migrate backup`: retention may delete older backups)",
    "ack_risk": "acknowledge a risk rating (`/migrate ack-risk`)",
    "gate_override": "override the no-go gate (`override REASON` on run or rollback)",
    "rehearse": "rehearse on a restored copy (`/migrate rehearse` or *Rehearse first*: a copy restored on "
                "the target's server, and a backup when none is at its revision)",
    "run": "ask for a migration (`/migrate run`)",
    "rollback": "ask for a rollback (`/migrate rollback`)",
    "restore": "ask for a restore (`/migrate restore`)",
}
assert set(DOING) == set(ACTIONS), "every permission needs its words"


def _rule(settings: Settings, environment: str, action: str) -> str | list[str]:
    if action not in ACTIONS:
        raise ValueError(f"no such permission: {action!r} (known: {', '.join(ACTIONS)})")
    return getattr(settings.environments[environment].permissions, action)


def who_may(settings: Settings, environment: str, action: str) -> tuple[str, ...] | None:
    """The user and user-group IDs that may do `action` on `environment`; None means everyone."""
    rule = _rule(settings, environment, action)
    if rule == EVERYONE:
        return None
    if rule == APPROVERS:
        return tuple(settings.environments[environment].approvals.approvers)
    return tuple(rule)


def listed(actor: str, ids: Sequence[str], members_of: MembersOf | None = None) -> bool:
    """Whether `actor` is one of `ids`, directly or as a member of a user group among them. The one
    membership test: the approvers' check on every click uses it too (bot/approvals.py)."""
    if actor in ids:
        return True
    if members_of is None:
        return False
    return any(actor in set(members_of(group)) for group in ids if group.startswith("S"))


def allowed(settings: Settings, environment: str, action: str, actor: str,
            members_of: MembersOf | None = None) -> bool:
    """May `actor` do `action` on `environment`? The command line (cli:<user>) always may."""
    ids = who_may(settings, environment, action)
    if ids is None or actor.startswith(TRUSTED_PREFIX):
        return True
    return bool(actor) and listed(actor, ids, members_of)


def refusal_line(settings: Settings, environment: str, action: str, *,
                 mention: Callable[[str], str] = str, escape: Callable[[str], str] = str) -> str:
    """One line saying who may do it instead, e.g. "Only the approvers (U1, S2) may pause the alerts
    (`/migrate watch off`) on production; nothing was done." `mention` renders an ID (Slack: a real
    mention), `escape` every other piece of text (Slack: mrkdwn escaping), so the whole line is safe
    to show as it is."""
    ids = who_may(settings, environment, action) or ()
    doing, env = escape(DOING[action]), escape(environment)
    if not ids:
        key = escape(f"environments.{environment}.permissions.{action}")
        return f"Nobody may {doing} on {env} from Slack (see {key}); nothing was done."
    shown = ", ".join(mention(i) for i in ids[:10]) + (escape(f" and {len(ids) - 10} more") if len(ids) > 10 else "")
    rule = _rule(settings, environment, action)
    who = f"the approvers ({shown})" if rule == APPROVERS else shown
    return f"Only {who} may {doing} on {env}; nothing was done."


__all__ = ["ACTIONS", "APPROVERS", "EVERYONE", "TRUSTED_PREFIX", "allowed", "listed", "refusal_line", "who_may"]
