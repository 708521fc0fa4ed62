"""Where an app's Alembic keeps its scripts: alembic.ini read with configparser (`script_location`,
`version_locations`, `%(here)s`, pyproject.toml's [tool.alembic]), and the candidate revision files
listed with their stamps. Nothing of the app is imported."""
from __future__ import annotations

import configparser
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from runbook.revisions.model import RevisionError
from runbook.revisions.output import one_line

_SEPARATORS = {"space": " ", "newline": "\n", "os": os.pathsep, ":": ":", ";": ";"}
_LEGACY_SPLIT = re.compile(r", *|(?: +)")
# Alembic's own filter (alembic/script/base.py): .py files, not editor locks, not __init__.
_REV_FILE = re.compile(r"^(?!\.\#|__init__)(.*\.py)$")


@dataclass(frozen=True)
class _Layout:
    config_path: Path
    script_location: Path
    version_locations: tuple[Path, ...]
    recursive: bool


def _config_args(argv: Sequence[str]) -> tuple[str | None, str]:
    """`-c/--config FILE` and `-n/--name SECTION` when the configured argv carries them after `alembic`."""
    config, name = None, "alembic"
    starts = [i for i, item in enumerate(argv) if Path(item).name in ("alembic", "alembic.exe")]
    items = list(argv)[starts[-1] + 1:] if starts else []
    for i, item in enumerate(items):
        for short, long_ in (("-c", "--config"), ("-n", "--name")):
            value = None
            if item in (short, long_) and i + 1 < len(items):
                value = items[i + 1]
            elif item.startswith(long_ + "="):
                value = item[len(long_) + 1:]
            if value is not None:
                if short == "-c":
                    config = value
                else:
                    name = value
    return config, name


def _read_layout(app_dir: Path, config_file: str, section: str) -> _Layout:
    ini = (app_dir / config_file) if not Path(config_file).is_absolute() else Path(config_file)
    if not ini.is_file():
        raise RevisionError(f"no {config_file} in {app_dir}: app_dir must be the directory that holds "
                            "the app's Alembic configuration")
    parser = configparser.ConfigParser(defaults={"here": str(ini.parent.absolute())})
    try:
        parser.read(ini, encoding="utf-8")
        options = dict(parser.items(section)) if parser.has_section(section) else {}
    except (configparser.Error, UnicodeDecodeError) as exc:
        raise RevisionError(f"cannot read {ini.name}: {one_line(str(exc))}") from None

    toml = _pyproject_alembic(app_dir)
    location = options.get("script_location") or toml.get("script_location")
    if not location:
        raise RevisionError(f"{ini.name} has no script_location in its [{section}] section")
    script_location = _location(app_dir, str(location))

    raw_versions = options.get("version_locations")
    if raw_versions:
        sep_name = options.get("path_separator") or options.get("version_path_separator")
        if sep_name:
            if sep_name not in _SEPARATORS:
                raise RevisionError(f"{ini.name}: path_separator {sep_name!r} is not one of "
                                    f"{', '.join(_SEPARATORS)}")
            parts = [p.strip() for p in raw_versions.split(_SEPARATORS[sep_name])]
        else:
            parts = _LEGACY_SPLIT.split(raw_versions.strip())
        versions = tuple(_location(app_dir, p) for p in parts if p)
    elif toml.get("version_locations"):
        versions = tuple(_location(app_dir, str(p)) for p in toml["version_locations"])
    else:
        versions = (script_location / "versions",)

    recursive = str(options.get("recursive_version_locations",
                                toml.get("recursive_version_locations", "false"))).strip().lower()
    return _Layout(ini, script_location, versions, recursive in ("true", "1", "yes", "on"))


def _pyproject_alembic(app_dir: Path) -> dict:
    """[tool.alembic] of pyproject.toml (Alembic >= 1.16 may keep its paths there)."""
    path = app_dir / "pyproject.toml"
    if not path.is_file():
        return {}
    try:
        import tomllib

        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except Exception:  # a broken pyproject is the app's concern; alembic.ini still rules
        return {}
    section = data.get("tool", {}).get("alembic", {})
    if not isinstance(section, dict):
        return {}
    here = str(app_dir.absolute())
    out = {}
    for key, value in section.items():
        if isinstance(value, str):
            value = value.replace("%(here)s", here)
        elif isinstance(value, list):
            value = [v.replace("%(here)s", here) if isinstance(v, str) else v for v in value]
        out[key] = value
    return out


def _location(app_dir: Path, value: str) -> Path:
    """A path as Alembic would resolve it when run with cwd = app_dir; `pkg.mod:dir` looked up in app_dir."""
    value = value.strip()
    if ":" in value and not re.match(r"^[A-Za-z]:[\\/]", value) and not Path(value).exists():
        package, _, sub = value.partition(":")
        candidate = app_dir.joinpath(*package.split(".")) / sub
        if candidate.exists():
            return candidate
        raise RevisionError(f"script location {value!r} names a package resource; runbook-bot does not "
                            "import app code: use a path relative to app_dir instead")
    path = Path(value).expanduser()
    return path if path.is_absolute() else app_dir / path


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_mtime_ns, st.st_size


def _revision_files(layout: _Layout) -> list[tuple[Path, tuple[int, int]]]:
    """Every candidate revision file with its (mtime_ns, size), in Alembic's listing order."""
    files: list[tuple[Path, tuple[int, int]]] = []
    seen: set[Path] = set()
    for location in layout.version_locations:
        if not location.is_dir():
            continue
        for root, dirs, names in os.walk(location):
            if Path(root).name == "__pycache__":
                dirs[:] = []
                continue
            dirs.sort()
            for name in sorted(names):
                if not _REV_FILE.match(name):
                    continue
                path = Path(root, name)
                real = path.resolve()
                if real in seen:
                    continue
                seen.add(real)
                try:
                    files.append((path, _stamp(path)))
                except OSError:
                    continue      # vanished between listing and stat
            if not layout.recursive:
                break
    return files
