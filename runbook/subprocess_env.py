"""The environment of every subprocess the bot starts, built from an allowlist (design rule 17).

The app's own code runs in some of them (its Alembic for SQL previews, upgrades and downgrades,
before any approval; its smoke command), and any child can read its environment. So none inherits
the bot's: each gets only

- what any tool needs: PATH, HOME, LANG, LANGUAGE, LC_*, TZ, TMPDIR;
- libpq's settings (PGHOST, PGSSLMODE, PGSSLROOTCERT, PGOPTIONS, PGSERVICEFILE...), never
  PGPASSWORD or PGPASSFILE: the password travels in the URL (the app) or in a passfile the bot
  writes for the one call (pg_dump, pg_restore, psql);
- the names the environment's configuration lists in `app_env` (the app's subprocesses only);
- what the caller sets on purpose (the URL in `url_env`, PGOPTIONS, PGPASSFILE, PGAPPNAME).

A SLACK_*, GITHUB_*, GH_* or RUNBOOK_BOT_* variable is never inherited, whatever `app_env` says
(the configuration refuses such names at load time; this module drops them again).
"""
from __future__ import annotations

import os
from typing import Iterable, Mapping

# Variables no subprocess ever inherits: the bot's Slack tokens and signing secret (with which a
# forged Approve click verifies), GitHub tokens, and the bot's own settings.
FORBIDDEN_PREFIXES = ("SLACK_", "GITHUB_", "GH_", "RUNBOOK_BOT_")

# What a tool needs to run at all (find programs, its home, the locale, the time zone, a temp dir).
BASE_NAMES = ("PATH", "HOME", "LANG", "LANGUAGE", "TZ", "TMPDIR")

# libpq's environment (PostgreSQL docs, "Environment Variables"): connection and TLS settings an
# operator may rely on, for the bot's tools and the app's driver alike. Not PGPASSWORD, not PGPASSFILE.
LIBPQ_NAMES = (
    "PGHOST", "PGHOSTADDR", "PGPORT", "PGDATABASE", "PGUSER", "PGSERVICE", "PGSERVICEFILE", "PGSYSCONFDIR",
    "PGOPTIONS", "PGAPPNAME", "PGCONNECT_TIMEOUT", "PGCLIENTENCODING", "PGDATESTYLE", "PGTZ", "PGGEQO",
    "PGSSLMODE", "PGREQUIRESSL", "PGSSLNEGOTIATION", "PGSSLCOMPRESSION", "PGSSLCERT", "PGSSLKEY",
    "PGSSLCERTMODE", "PGSSLROOTCERT", "PGSSLCRL", "PGSSLCRLDIR", "PGSSLSNI", "PGSSLMINPROTOCOLVERSION",
    "PGSSLMAXPROTOCOLVERSION", "PGREQUIREPEER", "PGREQUIREAUTH", "PGCHANNELBINDING", "PGGSSENCMODE",
    "PGKRBSRVNAME", "PGGSSLIB", "PGGSSDELEGATION", "PGTARGETSESSIONATTRS", "PGLOADBALANCEHOSTS",
    "PGLOCALEDIR",
)


def forbidden(name: str) -> bool:
    """Whether `name` may never reach a subprocess from the bot's environment."""
    return name.upper().startswith(FORBIDDEN_PREFIXES)


def forbidden_reason(name: str) -> str:
    return (f"{name} may never be passed to the app's subprocesses (no SLACK_*, GITHUB_*, GH_* or "
            "RUNBOOK_BOT_* variable is: the app's code runs there before any approval)")


def subprocess_env(*, app_env: Iterable[str] = (), libpq: bool = True, set_vars: Mapping[str, str] | None = None,
                   source: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for one subprocess: the allowlisted names present in `source` (default
    os.environ), plus `app_env` names, minus every forbidden one; then `set_vars` on top."""
    source = os.environ if source is None else source
    wanted = set(BASE_NAMES) | set(app_env)
    if libpq:
        wanted |= set(LIBPQ_NAMES)
    env = {name: value for name, value in source.items()
           if (name in wanted or name.startswith("LC_")) and not forbidden(name)}
    env.update(set_vars or {})
    return env


def app_subprocess_env(url_env: str, dsn: str, app_env: Iterable[str] = (), *,
                       extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """For the app's own code (its Alembic, its smoke command): the allowlist, the environment's
    `app_env` names, and the database URL in `url_env`, the variable the app's env.py reads."""
    return subprocess_env(app_env=app_env, set_vars={url_env: dsn, **(extra or {})})
