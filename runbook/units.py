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
