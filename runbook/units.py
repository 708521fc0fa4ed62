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


def shorten(text: str, limit: int) -> str:
    """At most `limit` characters; when cut, at the last word boundary that keeps most of the text,
    with an ellipsis, so a reason never ends mid-word ("…from ones use…"). Every cut a reader sees
    (Slack blocks, the terminal, the engine's own one-line reasons) goes through here."""
    if limit <= 0:
        return ""
    if len(text) <= limit:
        return text
    room = max(0, limit - 1)
    cut = text[:room]
    boundary = cut.rstrip().rfind(" ")
    if boundary >= room * 2 // 3:          # a long word (a path, an id) is cut hard rather than dropped
        cut = cut[:boundary]
    return cut.rstrip(" ,;:-") + "…"

