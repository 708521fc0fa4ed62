"""How a table is named: schema.table split, quoted as an identifier, shown without `public.`, and as
an exact pg_dump --table pattern."""
from __future__ import annotations

from psycopg import sql


def _split(table: str) -> tuple[str, str]:
    schema, _, name = table.partition(".")
    return schema, name


def _ident(table: str) -> sql.Composed:
    schema, name = _split(table)
    return sql.Identifier(schema, name)


def _plain(table: str) -> str:
    """How a table is shown: without `public.`."""
    return table[len("public."):] if table.startswith("public.") else table


def _table_pattern(table: str) -> str:
    """A --table pattern that matches exactly this table (quoted: no wildcards, case kept)."""
    schema, name = _split(table)
    return '"' + schema.replace('"', '""') + '"."' + name.replace('"', '""') + '"'
