"""Human-readable quantities, shared by every rendering (CLI text, Slack, incident reports)."""
from __future__ import annotations


def human_size(n: int | float | None, unknown: str = "unknown") -> str:
    """Bytes in binary units: 7.3 MB, 1.2 GB."""
    if n is None:
        return unknown
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1024 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TB"


def short_duration(seconds: float) -> str:
    """Whole seconds as 42s, 3m05s, 2h10m: compact, for one-line reasons."""
    value = int(seconds)
    if value < 120:
        return f"{value}s"
    if value < 7200:
        return f"{value // 60}m{value % 60:02d}s"
    return f"{value // 3600}h{(value % 3600) // 60:02d}m"
