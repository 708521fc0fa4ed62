"""The request side: what a `/migrate run` or `/migrate rollback` approval request shows (the plan,
the SQL, the risk review, the promotion gate), and why it must not be made at all."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from runbook.config import Environment
from runbook.migrate.planning import plan
from runbook.migrate.results import Direction
from runbook.precheck import project_of, target_of
from runbook.revisions import AlembicProject, RevisionError


@dataclass(frozen=True)
class Proposal:
    """What `/migrate run` or `/migrate rollback` asks approvers to approve.

    `refusal` is set (one line) when the request must not be made at all: an irreversible
    downgrade, an unknown or backwards target, nothing to do. Approving pins `current`: the run
    gets it back as `expected_current` and stops if the database moved meanwhile.
    """

    environment: str
    direction: str
    current: list[str]
    target: str
    revisions: list[Any]              # Revision, in run order
    steps: list[str]
    sql_preview: str = ""             # the SQL of the run, offline: upgrade(), or a rollback's downgrade()
    touched_tables: list[str] = field(default_factory=list)
    refusal: str | None = None
    # issue 7: runbook.review.RiskReview of the revisions an upgrade applies (None: a downgrade, review
    # disabled, or nothing to do); `risk_error` when squawk could not run; `promotion` the gate's
    # runbook.promotion.PromotionCheck on an environment with promote_from.
    risk: Any = None
    risk_error: str | None = None
    promotion: Any = None
    # issue 16: the latest rehearsal of this range (runbook.rehearse.Match; set by runbook.ops.propose)
    rehearsal: Any = None


def propose(name: str, env: Environment, *, direction: Direction = "upgrade", target: str | None = None,
            project: AlembicProject | None = None, store: Any = None) -> Proposal:
    """Read the database and the scripts; TargetError when the database cannot be read.

    `store` (the state Store) gives the risk review its acknowledgements and the promotion gate
    its evidence; an environment with promote_from is refused without it."""
    from runbook import promotion, review, rollback
    from runbook.validate import tables_in_sql

    target = target or ("head" if direction == "upgrade" else "-1")
    project = project or project_of(env)
    risk, risk_error = None, None
    with target_of(env).connect("migrate-request") as conn:
        current = project.current(conn)
        try:
            the_plan = plan(project, current, direction, target, env.migration.step_by_step)
        except RevisionError as exc:
            return Proposal(name, direction, current, target, [], [], refusal=str(exc))
        if direction == "upgrade" and the_plan.revisions and env.review.enabled:
            try:
                acks = review.acknowledgements(store, name) if store is not None else []
                risk = review.review(name, env, conn, project=project, revisions=the_plan.revisions,
                                     acknowledgements=acks)
            except review.ReviewError as exc:
                risk_error = str(exc)
    refusal = rollback.irreversible_refusal(the_plan.revisions, name) if direction == "downgrade" else None
    if not the_plan.steps:
        refusal = f"nothing to do: {name} is already at {', '.join(current) or 'base'}"
    gate = None
    if direction == "upgrade" and the_plan.steps and env.promote_from:
        gate = promotion.check(store, name, env, the_plan.target, project)
        refusal = refusal or (None if gate.allowed else gate.reason)
    preview = ""
    if the_plan.steps:
        try:    # a rollback shows the downgrade() SQL of what it undoes (design rule 12)
            preview = project.sql_preview(env.dsn, current, the_plan.target, direction=direction)
        except RevisionError as exc:
            preview = f"-- the {direction} SQL could not be rendered offline: {exc}"
    return Proposal(name, direction, current, the_plan.target, the_plan.revisions, the_plan.steps, preview,
                    tables_in_sql(preview), refusal, risk=risk, risk_error=risk_error, promotion=gate)

