"""The precheck's SQL preview started first, before the configuration is even validated (issue 18).

The app's Alembic is the slowest part of §1: its env.py imports the app (models, settings), a
few hundred milliseconds, more than everything else a precheck does. A fresh `runbook-bot
precheck` would spend as long again loading pydantic, reading the configuration and importing
psycopg before it could ask the database where it stands and start that render. So it starts the
render at once, from the configuration file read as plain data (runbook.config_source) and the
revision the database was at on the previous precheck (AlembicProject.remembered_current).

Nothing here is trusted: the precheck proper validates the configuration, reads the database,
and shares this render only when it is exactly the one it would start itself (the same app,
command, URL, variables and range, see AlembicProject.start_sql_preview); otherwise it renders
its own, and the CLI cancels this one. Without a remembered revision nothing starts early.
"""
from __future__ import annotations

from runbook.dsn import libpq_url
from runbook.revisions import AlembicProject, PreviewRender, preview_cache_dir


def start_preview(config: str | None, environment: str | None) -> PreviewRender | None:
    """The render a precheck of `environment` will want, started now; None when it cannot be told."""
    try:
        from runbook.config_source import config_path, raw_settings, read_config

        path = config_path(config)
        raw = raw_settings(read_config(path), source=path)
        environments = raw.get("environments")
        if not isinstance(environments, dict):
            return None
        if environment is None:
            if len(environments) != 1:
                return None
            environment = next(iter(environments))
        env = environments.get(environment)
        if not isinstance(env, dict):
            return None
        url, app_dir = env.get("database_url"), env.get("app_dir")
        argv = env.get("alembic", ["alembic"])
        url_env, app_env = env.get("url_env", "DATABASE_URL"), env.get("app_env", [])
        if not (isinstance(url, str) and isinstance(app_dir, str) and isinstance(url_env, str)
                and isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv)
                and isinstance(app_env, list) and all(isinstance(a, str) for a in app_env)):
            return None
        dsn = libpq_url(url)
        project = AlembicProject(app_dir, argv, url_env, preview_cache_dir=preview_cache_dir(), app_env=app_env)
        current = project.remembered_current(dsn)
        if current is None:
            return None
        render = project.start_sql_preview(dsn, current)
        return render if render.started_process else None
    except Exception:  # noqa: BLE001 - a guess that fails costs nothing: the precheck proper reports
        return None
