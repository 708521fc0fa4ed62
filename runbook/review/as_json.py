"""The review as JSON: the `risk` key of `precheck --json`, and what an approval request keeps."""
from __future__ import annotations

from typing import Any

from runbook.review.model import Acknowledgement, Finding, LockHolder, RiskReview


def _holder_json(h: LockHolder) -> dict[str, Any]:
    return {"relation": h.relation, "mode": h.mode, "granted": h.granted, "pid": h.pid, "state": h.state,
            "application": h.application, "user": h.user,
            "xact_seconds": None if h.xact_seconds is None else round(h.xact_seconds, 1), "query": h.query,
            "prepared_gid": h.prepared_gid}


def _finding_json(f: Finding) -> dict[str, Any]:
    return {"rule": f.rule, "message": f.message, "help": f.help, "line": f.line, "column": f.column,
            "statement": f.statement, "tables": list(f.tables), "rating": f.rating, "reason": f.reason,
            "allowed": f.allowed}


def _ack_json(a: Acknowledgement | None) -> dict[str, Any] | None:
    if a is None:
        return None
    return {"actor": a.actor, "reason": a.reason, "at": a.at.isoformat(), "file_sha256": a.file_sha256,
            "event_id": a.event_id}


def review_to_json(r: RiskReview | None) -> dict[str, Any] | None:
    """The `risk` key of `precheck --json`, and what a migration request keeps in its params."""
    if r is None:
        return None
    return {
        "environment": r.environment, "highest": r.highest, "ok": r.ok,
        "blocking": [x.revision for x in r.blocking], "server_major": r.server_major,
        "squawk_version": r.squawk_version, "squawk_seconds": round(r.squawk_seconds, 4),
        "render_seconds": round(r.render_seconds, 3), "seconds": round(r.seconds, 3), "errors": list(r.errors),
        "revisions": [{
            "revision": x.revision, "path": x.path, "file_sha256": x.file_sha256, "status": x.status,
            "rating": x.rating, "findings_rating": x.findings_rating, "reason": x.reason, "problem": x.problem,
            "blocking": x.blocking, "sql_lines": x.sql_lines,
            "findings": [_finding_json(f) for f in x.findings],
            "silenced": [_finding_json(f) for f in x.silenced],
            "unused_allows": list(x.unused_allows),
            "tables": [{"name": t.name, "exists": t.exists, "size_bytes": t.size_bytes, "rows": t.rows,
                        "exact_size": t.exact_size,
                        "holders": [_holder_json(h) for h in t.holders]} for t in x.tables],
            "live": list(x.live),
            "acknowledgement": _ack_json(x.acknowledgement),
            "stale_acknowledgement": _ack_json(x.stale_acknowledgement),
        } for x in r.revisions],
    }


def risk_params(proposal: Any) -> dict[str, Any]:
    """What a migrate approval request keeps of a runbook.migrate.Proposal's review (JSON)."""
    return {"risk": review_to_json(getattr(proposal, "risk", None)),
            "risk_error": getattr(proposal, "risk_error", None)}
