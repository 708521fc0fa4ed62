"""Reading an archive's table of contents (`pg_restore --list`): its tables, data, views and objects by
kind, and what a full backup records of them for a later full restore."""
from __future__ import annotations

import re
from typing import Any

from runbook.backup.model import OBJECT_KINDS


# Longer words first: "TABLE ATTACH" (a partition) is no table named "ATTACH.…", "SEQUENCE SET" no sequence.
_TOC_KINDS = ("TABLE DATA", "TABLE ATTACH", "TABLE", "SEQUENCE OWNED BY", "SEQUENCE SET", "SEQUENCE",
              "MATERIALIZED VIEW DATA", "MATERIALIZED VIEW", "VIEW",
              *(word for word in OBJECT_KINDS.values() if word != "SEQUENCE"))
_TOC_LINE = re.compile(r"^\d+;\s+\d+\s+\d+\s+(" + "|".join(map(re.escape, _TOC_KINDS)) + r") (.*)$")


def _toc_entries(listing: str) -> dict[str, set[str]]:
    """From `pg_restore --list`: {"TABLE": {"public.expenses", ...}, "TABLE DATA": {...},
    "FUNCTION": {"public.total(integer, text)"}, "SCHEMA": {"audit"}, ...}.

    A line is `id; catalog oid KIND namespace tag owner` joined by single spaces, and names may hold
    spaces: the owner is the last word, the namespace the longest schema the archive creates that
    starts the rest (public, which it does not create, otherwise the first word)."""
    lines = [(m.group(1), m.group(2)) for m in map(_TOC_LINE.match, listing.splitlines()) if m]
    schemas = {rest[2:].rpartition(" ")[0] for kind, rest in lines if kind == "SCHEMA" and rest.startswith("- ")}
    longest_first = sorted(schemas, key=len, reverse=True)
    found: dict[str, set[str]] = {}
    for kind, rest in lines:
        if kind == "SCHEMA":
            key = rest[2:].rpartition(" ")[0]
        else:
            namespace = next((s for s in longest_first if rest.startswith(s + " ")), rest.split(" ", 1)[0])
            key = f"{namespace}.{rest[len(namespace) + 1:].rpartition(' ')[0]}"
        found.setdefault(kind, set()).add(key)
    return found


def _archive_record(toc: dict[str, set[str]]) -> dict[str, Any]:
    """What a full backup's details keep of its archive for a later full restore: its views, and its
    objects of OBJECT_KINDS (the restore drops the ones created since)."""
    return {"views": sorted(toc.get("VIEW", set()) | toc.get("MATERIALIZED VIEW", set())),
            "objects": {kind: sorted(toc.get(word, set())) for kind, word in OBJECT_KINDS.items()}}
