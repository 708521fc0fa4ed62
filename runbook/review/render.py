"""Each pending revision's own SQL, rendered offline by the app's Alembic: one render of a linear
range cut at its step markers, else one render per revision."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Sequence

from runbook.review.files import reads_data
from runbook.revisions import AlembicProject, Revision, RevisionError, per_revision_sql


@dataclass
class Rendered:
    """A revision's own SQL, or why it could not be rendered offline."""

    revision: Revision
    sql: str | None
    problem: str | None
    seconds: float


def _render(project: AlembicProject, dsn: str, rev: Revision, timeout: float) -> Rendered:
    started = time.monotonic()
    if len(rev.down_revisions) > 1:
        return Rendered(rev, None, "a merge revision: its parents are reviewed on their own", 0.0)
    start = list(rev.down_revisions)
    try:
        sql = project.sql_preview(dsn, start, rev.revision, timeout=timeout)
    except RevisionError as exc:
        hint = reads_data(rev.path)
        return Rendered(rev, None, f"cannot be reviewed offline: {exc}" + (f" ({hint})" if hint else ""),
                         time.monotonic() - started)
    return Rendered(rev, sql, None, time.monotonic() - started)


def start_range(project: AlembicProject, dsn: str, revisions: Sequence[Revision], timeout: float):
    """The render of a linear range of more than one revision (one parent each, the first may start
    from base, each the next one's): started, or shared with the caller who started it; None when
    the range is not linear or cannot be asked for."""
    linear = len(revisions) > 1 and len(revisions[0].down_revisions) <= 1 and all(
        len(r.down_revisions) == 1 for r in revisions[1:]) and all(
        later.down_revisions[0] == earlier.revision for earlier, later in zip(revisions, revisions[1:]))
    if not linear:
        return None
    try:
        return project.start_sql_preview(dsn, list(revisions[0].down_revisions), revisions[-1].revision,
                                         timeout=timeout)
    except RevisionError:
        return None


def render_each(project: AlembicProject, dsn: str, revisions: Sequence[Revision], timeout: float,
                whole_range=None) -> list[Rendered]:
    """Each revision's own SQL, oldest first. A linear range is rendered once (`whole_range`, from
    start_range) and cut at Alembic's step markers (the same render the precheck's SQL preview
    uses); when that render fails or does not cut cleanly, each revision is rendered on its own, so
    one revision that cannot be rendered offline does not hide the others."""
    if whole_range is not None:
        started = time.monotonic()
        try:
            whole = whole_range.result()
        except RevisionError:
            whole = ""
        steps = [(r.down_revisions[0] if r.down_revisions else "", r.revision) for r in revisions]
        parts = per_revision_sql(whole, steps) if whole else None
        if parts is not None:
            share = (time.monotonic() - started) / len(revisions)
            return [Rendered(r, parts[r.revision], None, share) for r in revisions]
    with ThreadPoolExecutor(max_workers=min(4, len(revisions)), thread_name_prefix="review-render") as pool:
        return list(pool.map(lambda r: _render(project, dsn, r, timeout), revisions))
