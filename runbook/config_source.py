"""The configuration file as data: YAML, ${VAR} interpolation and relative paths, without pydantic.

runbook.config validates what this returns (and is where settings come from); this part alone
loads in a few milliseconds, so `runbook-bot precheck` can start the app's Alembic from it while
pydantic loads (runbook.prerender).
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

DEFAULT_CONFIG_NAME = "runbook-bot.yaml"
CONFIG_ENV = "RUNBOOK_BOT_CONFIG"


class ConfigError(Exception):
    """A configuration problem, phrased as one line for a human."""


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _interpolate(node: Any, path: str, environ: dict[str, str]) -> Any:
    if isinstance(node, dict):
        return {k: _interpolate(v, f"{path}.{k}" if path else str(k), environ) for k, v in node.items()}
    if isinstance(node, list):
        return [_interpolate(v, f"{path}[{i}]", environ) for i, v in enumerate(node)]
    if isinstance(node, str):
        def replace(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in environ:
                return environ[name]
            if default is not None:
                return default
            raise ConfigError(f"{path}: environment variable {name} is not set")

        return _VAR.sub(replace, node)
    return node


def _resolve_paths(settings: dict[str, Any], base: Path) -> None:
    for env in (settings.get("environments") or {}).values():
        if not isinstance(env, dict):
            continue
        for key in ("app_dir", "pg_bin_dir"):
            if isinstance(env.get(key), str):
                env[key] = str((base / env[key]).resolve()) if not os.path.isabs(env[key]) else env[key]
        backups = env.setdefault("backups", {})
        if isinstance(backups, dict):
            backups.setdefault("dir", "backups")
        if isinstance(backups, dict) and isinstance(backups.get("dir"), str) and "://" not in backups["dir"]:
            if not os.path.isabs(backups["dir"]):
                backups["dir"] = str((base / backups["dir"]).resolve())
        if isinstance(backups, dict) and isinstance(backups.get("staging_dir"), str):
            if not os.path.isabs(backups["staging_dir"]):
                backups["staging_dir"] = str((base / backups["staging_dir"]).resolve())
    state_url = settings.get("state_url")
    if isinstance(state_url, str) and state_url.startswith("sqlite:///") and not state_url.startswith("sqlite:////"):
        relative = state_url[len("sqlite:///"):]
        if relative and relative != ":memory:":
            settings["state_url"] = "sqlite:///" + str((base / relative).resolve())


def raw_settings(text: str, *, source: Path, environ: dict[str, str] | None = None) -> dict[str, Any]:
    """The file's mapping with ${VAR} replaced and paths made absolute; not yet validated."""
    environ = dict(os.environ) if environ is None else environ
    try:
        # the C loader when libyaml is there: the same result, several times faster
        raw = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{source}: not valid YAML{where}: {problem}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of keys")
    try:
        raw = _interpolate(raw, "", environ)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    _resolve_paths(raw, source.parent.resolve())
    return raw


def config_path(explicit: str | None) -> Path:
    if explicit:
        return Path(explicit)
    if os.environ.get(CONFIG_ENV):
        return Path(os.environ[CONFIG_ENV])
    return Path(DEFAULT_CONFIG_NAME)


def read_config(path: Path) -> str:
    """The file's text; ConfigError with one line when it cannot be read."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: configuration file not found; pass --config FILE or set {CONFIG_ENV}"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration file ({exc.strerror})") from None
