"""§3: upgrade and downgrade as a supervised subprocess of the app's own Alembic.

One run, under the operation lock (design rule 13) from start to end (runbook.migrate.runner):

    lock -> no pg_dump connected -> the database still at the approved revision -> plan
         -> [before(held): the backup] -> baseline -> alembic, step by step or at once
         -> version verified after every attempt -> validation (§5) -> on failure, §6.5

* The app's Alembic runs as `<env.alembic> upgrade|downgrade REV` in app_dir, never through a
  shell, with the URL only in `url_env` (design rule 11), and tethered to this process
  (runbook/tether.py) so it cannot outlive a killed bot (runbook.migrate.supervisor).
* PGOPTIONS carries lock_timeout and statement_timeout from `migration` and an
  application_name `rbmigrate/<run id>`: not `runbook-bot/...`, so activity reports (and the
  live monitor) show the migration's own session (design rule 14; runbook.migrate.environment).
* A lock timeout (LockNotAvailable) is retried with exponential backoff and jitter up to
  `migration.retries`; between tries the root blocker seen while the migrator waited is
  reported through `on_blocker`. On PostgreSQL an attempt is one transaction per alembic
  subprocess (all pending revisions with the default env.py, one revision with step_by_step),
  so a failed attempt leaves the database at its last good revision; the version table is
  read after every attempt to know, not assume (runbook.migrate.steps).
* `migration.timeout_seconds` bounds each subprocess: the migrator's backend is cancelled
  (pg_cancel_backend by its application_name), then its process group killed.
* The full output (stdout and stderr, redacted, timestamped) goes to a log file (§3.3,
  runbook.migrate.log); the result keeps its tail.

Everything is reported through plain dataclasses (runbook.migrate.results); refusals are results
too (outcome "refused", with the reason), never exceptions. The request side, what approvers are
shown before a run, is runbook.migrate.proposal.

The modules, one concern each, with no cycle among them:
    results      the result, steps, progress and blockers, and their JSON
    environment  PGOPTIONS, application_name and the allowlisted env of an alembic subprocess
    log          the run's log file and its tail
    alembic_output  what alembic's output says went wrong
    supervisor   one alembic subprocess, watched, reported, bounded
    steps        one step: retried on lock timeouts, the version read after each attempt
    planning     what will run, validated against the scripts
    runner       the run under the lock, its grouped parameters, upgrade/downgrade
    proposal     what an approval request shows
"""
from __future__ import annotations

from runbook.migrate.alembic_output import error_line
from runbook.migrate.environment import MIGRATOR_PREFIX, alembic_environment, migrator_application_name
from runbook.migrate.log import RunLog, default_log_dir
from runbook.migrate.planning import Plan, plan
from runbook.migrate.proposal import Proposal, propose
from runbook.migrate.results import (BlockerReport, Direction, MigrationResult, Outcome, Progress, StepResult,
                                     result_to_json)
from runbook.migrate.runner import RunHooks, RunRequest, RunTiming, RunTrail, downgrade, run, upgrade
from runbook.migrate.steps import run_step
from runbook.migrate.supervisor import Supervisor

__all__ = ["BlockerReport", "Direction", "MIGRATOR_PREFIX", "MigrationResult", "Outcome", "Plan", "Progress",
           "Proposal", "RunHooks", "RunLog", "RunRequest", "RunTiming", "RunTrail", "StepResult", "Supervisor",
           "alembic_environment", "default_log_dir", "downgrade", "error_line", "migrator_application_name",
           "plan", "propose", "result_to_json", "run", "run_step", "upgrade"]
