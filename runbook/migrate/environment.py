"""What an alembic subprocess runs with: the subprocess allowlist, the URL only in `url_env`, and
PGOPTIONS carrying the timeouts and the application_name `rbmigrate/<run id>` that names the
migrator's session (design rules 11, 14)."""
from __future__ import annotations

import os
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from runbook.config import Environment
from runbook.subprocess_env import app_subprocess_env

MIGRATOR_PREFIX = "rbmigrate"


def migrator_application_name(run_id: str) -> str:
    return f"{MIGRATOR_PREFIX}/{run_id}"


def _pgoptions(env: Environment, app_name: str, server_version: int) -> str:
    options = [f"-c lock_timeout={env.migration.lock_timeout.replace(' ', '')}",
               f"-c statement_timeout={env.migration.statement_timeout.replace(' ', '')}",
               f"-c application_name={app_name}"]
    if server_version >= 140000:
        # A backend notices a vanished client (the tether killed alembic) within seconds and
        # rolls back, instead of finishing a long statement for nobody.
        options.append("-c client_connection_check_interval=2s")
    # Deliberately kept: the operator's own PGOPTIONS (a search_path, a role) applies to the
    # migrator's session as to every tool (runbook.subprocess_env passes it); ours come after it
    # and win on the same setting.
    inherited = os.environ.get("PGOPTIONS", "").strip()
    return " ".join(([inherited] if inherited else []) + options)


def alembic_environment(env: Environment, url: str, app_name: str, server_version: int) -> dict[str, str]:
    """The environment of an alembic subprocess run against `url` (the target, or a rehearsal's copy):
    the subprocess allowlist (runbook.subprocess_env), the URL only in `url_env`, the timeouts and
    application_name in PGOPTIONS (design rules 11, 14)."""
    return app_subprocess_env(env.url_env, _without_application_name(url), env.app_env, extra={
        "PGOPTIONS": _pgoptions(env, app_name, server_version), "PGAPPNAME": app_name})


def _without_application_name(url: str) -> str:
    """A URL's own application_name would win over PGOPTIONS and hide the migrator's session."""
    parts = urlsplit(url)
    if not parts.query:
        return url
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "application_name"]
    return urlunsplit(parts._replace(query=urlencode(query)))

