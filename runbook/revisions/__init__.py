"""Alembic state: current, heads, pending, SQL preview, reversibility (§1.2).

The app's code never runs inside the bot (design rule 11):

* `alembic.ini` is read with configparser (`script_location`, `version_locations`,
  `%(here)s`), then every revision file with `ast` — nothing is imported or executed.
  Parsed files are cached on (path, mtime, size), shared by every AlembicProject in the
  process, so a warm bot only stats the files.
* The SQL preview runs the app's own Alembic as a subprocess in `app_dir`, with the
  database URL in the environment variable its env.py reads, for the pending range only
  (`upgrade <current>:<target> --sql`, design rule 12).

`Revision`, `AlembicState` and `RevisionError` are a contract others build on.

One concern a module: model (that contract), layout (alembic.ini and pyproject.toml, the revision
files listed), scripts (a revision file read with `ast`, the parse cache), graph (the revision graph),
output (what Alembic prints: a range's SQL cut per revision, its error line), process (a subprocess
in its own process group), preview (a SQL preview being rendered, shared by every caller in the
process; the preview cache), project (AlembicProject). They import each other, never this package;
a cold `runbook-bot precheck` imports it before anything else to start its render (runbook.prerender),
so every module here imports only the standard library and runbook's own small modules.
"""
from runbook.revisions.model import AlembicState, Revision, RevisionError
from runbook.revisions.output import last_error_line, one_line, per_revision_sql
from runbook.revisions.preview import PreviewRender, preview_cache_dir
from runbook.revisions.process import run_argv
from runbook.revisions.project import AlembicProject
from runbook.revisions.scripts import parse_revision_file, reversibility

__all__ = ["AlembicProject", "AlembicState", "PreviewRender", "Revision", "RevisionError", "last_error_line",
           "one_line", "parse_revision_file", "per_revision_sql", "preview_cache_dir", "reversibility",
           "run_argv"]
