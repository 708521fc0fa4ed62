"""Acknowledgements of a HIGH risk: audited events in the bot's own database, bound to the revision
file's sha256 (an edit to the file needs a new one)."""
from __future__ import annotations

from typing import Any, Iterable, Sequence

from runbook.config import Environment
from runbook.review.files import file_sha256, relative_path
from runbook.review.model import Acknowledgement, RevisionReview
from runbook.revisions import AlembicProject, RevisionError

ACK_ACTION = "risk.ack"
MAX_ACK_REASON = 300
ACK_READ_LIMIT = 500           # acknowledgements read per precheck, newest first


def attach_acknowledgement(entry: RevisionReview, environment: str,
                           acknowledgements: Sequence[Acknowledgement]) -> None:
    """The newest acknowledgement of `entry`'s revision: current when it is for the file as it is
    now, stale when it was for an earlier version of the file."""
    mine = [a for a in acknowledgements if a.revision == entry.revision and a.environment == environment]
    if not mine:
        return
    newest = max(mine, key=lambda a: a.at)
    if newest.file_sha256 == entry.file_sha256:
        entry.acknowledgement = newest
    else:
        entry.stale_acknowledgement = newest


def acknowledgements(store, environment: str, limit: int = ACK_READ_LIMIT) -> list[Acknowledgement]:
    """Every acknowledgement recorded for `environment`, newest first."""
    return acknowledgements_in(store.events(environment=environment, action=ACK_ACTION, limit=limit))


def acknowledgements_in(events: Iterable[Any]) -> list[Acknowledgement]:
    """The acknowledgements among `events` (store.events(action=ACK_ACTION, ...)), in their order."""
    out = []
    for event in events:
        details = event.details or {}
        if event.outcome != "ok" or not details.get("revision") or not details.get("file_sha256"):
            continue
        out.append(Acknowledgement(event.environment, str(details["revision"]), str(details["file_sha256"]),
                                   event.actor, str(details.get("reason") or ""), event.at, event.id))
    return out


class AcknowledgeError(Exception):
    """An acknowledgement that cannot be recorded; one line saying what to do."""


def acknowledge(store, name: str, env: Environment, revision: str, reason: str, actor: str, *,
                project: AlembicProject, current: Sequence[str]) -> Acknowledgement:
    """Record that `actor` reviewed the risk of pending `revision` on `name` (an event, append-only),
    bound to the revision file as it is now: an edit to the file needs a new acknowledgement."""
    reason = " ".join((reason or "").split())
    if not reason:
        raise AcknowledgeError("say why it is acceptable: the reason is shown with the rating and kept in the audit "
                               "trail")
    if len(reason) > MAX_ACK_REASON:
        raise AcknowledgeError(f"the reason is {len(reason)} characters long: keep it to {MAX_ACK_REASON}")
    try:
        rev = project.get(revision)
    except RevisionError as exc:
        raise AcknowledgeError(str(exc)) from None
    pending = [r.revision for r in project.pending(list(current))]
    if rev.revision not in pending:
        at = ", ".join(current) or "base"
        raise AcknowledgeError(f"{rev.revision} is not pending on {name} (at {at}"
                               + (f"; pending: {', '.join(pending)}" if pending else "; nothing pending") + ")")
    sha = file_sha256(rev.path)
    event = store.record(actor=actor, action=ACK_ACTION, environment=name, outcome="ok",
                         summary=f"risk of {rev.revision} acknowledged: {reason}",
                         details={"revision": rev.revision, "file_sha256": sha, "reason": reason,
                                  "path": relative_path(rev.path, project.app_dir)})
    return Acknowledgement(name, rev.revision, sha, actor, reason, event.at, event.id)


def ack_hint(environment: str, revision: str) -> str:
    return f"/migrate ack-risk {environment} {revision} REASON"
