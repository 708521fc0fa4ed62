"""The risk review of pending revisions (issue 7): lint each revision's own SQL, weigh it live.

For every pending revision, oldest first:

1. Its own SQL, rendered offline by the app's Alembic (`upgrade <prev>:<rev> --sql`, through
   AlembicProject.sql_preview and its cache). A revision that cannot be rendered offline (it
   reads rows: `op.get_bind()`…) is marked "cannot be reviewed offline", never left out.
2. squawk (`--reporter json`, `--pg-version` = the server's major), run as an argv subprocess
   with a timeout. Each finding keeps its revision file and the line of that SQL.
3. A module-level allowlist in the revision file, read with `ast` (never imported):
   `squawk_allow = {"require-concurrent-index-creation": "table is tiny, reviewed by @x"}`
   silences exactly that rule for that revision; the reason is shown.
4. The live database, read once for all revisions: size (pg_total_relation_size) and row
   estimate (reltuples) of every table the SQL names, and pg_locks for those relations only —
   who holds (or queues for) a lock that the migration's statements would wait behind.

Each revision is rated low / medium / high with one line a reviewer can act on. A high
rating from the findings can be acknowledged (`acknowledge`: an audited event, bound to the
revision file's sha256); a conflicting lock held right now cannot: it is live, and goes away
when that session ends.

Everything here returns plain dataclasses; `review_to_json` is the --json form, and what an
approval request keeps.

The modules, one concern each, with no cycle among them:
    model       ratings, the errors, the result dataclasses
    squawk      the linter: which binary, its version, its JSON findings
    files       a revision file read with ast: its hash, its allowlist, where it reads the database
    lint_cache  squawk's findings and the parsed statements kept by the SQL's text (issue 18)
    live        the live database: sizes, row estimates, lock holders
    rating      a finding weighed against its table; a revision rated, live locks included
    render      each revision's own SQL, rendered offline
    acks        acknowledgements: audited events, bound to the file's sha256
    reviewing   `review`: all of the above, side by side while Alembic renders
    as_json     the JSON form
"""
from __future__ import annotations

from runbook.review.acks import (ACK_ACTION, ACK_READ_LIMIT, MAX_ACK_REASON, AcknowledgeError, ack_hint, acknowledge,
                                 acknowledgements, acknowledgements_in)
from runbook.review.as_json import review_to_json, risk_params
from runbook.review.files import ALLOWLIST_NAME, file_sha256, read_allowlist
from runbook.review.live import live_facts
from runbook.review.model import (RATINGS, Acknowledgement, AllowlistError, Finding, LockHolder, Rating, ReviewError,
                                  RevisionReview, RiskReview, TableFacts)
from runbook.review.rating import FIXED_RULES, SIZE_RULES, rate_finding
from runbook.review.reviewing import review
from runbook.review.squawk import SQUAWK_RULES, run_squawk, squawk_argv, squawk_version
from runbook.sqlscan import conflicts, statements

__all__ = ["ACK_ACTION", "ACK_READ_LIMIT", "ALLOWLIST_NAME", "Acknowledgement", "AcknowledgeError", "AllowlistError",
           "FIXED_RULES", "Finding", "LockHolder", "MAX_ACK_REASON", "RATINGS", "Rating", "ReviewError",
           "RevisionReview", "RiskReview", "SIZE_RULES", "SQUAWK_RULES", "TableFacts", "ack_hint", "acknowledge",
           "acknowledgements", "acknowledgements_in", "conflicts", "file_sha256", "live_facts", "rate_finding",
           "read_allowlist", "review", "review_to_json", "risk_params", "run_squawk", "squawk_argv",
           "squawk_version", "statements"]
