"""Named SQL queries loaded from procqueue/sql/queries.sql."""

from __future__ import annotations

import re
from functools import cache

from psycopg import sql

from procqueue import resources

_HEADER = re.compile(r"^-- (?P<name>[a-z_]+): .*$", re.MULTILINE)


@cache
def _all_queries() -> dict[str, str]:
    text = resources.queries().read_text(encoding="utf-8")
    headers = list(_HEADER.finditer(text))
    queries = {}
    for header, following in zip(headers, [*headers[1:], None], strict=True):
        end = following.start() if following else len(text)
        queries[header["name"]] = text[header.end() : end].strip()
    return queries


def query(name: str) -> sql.SQL:
    """A named query with no identifiers to fill in."""
    return sql.SQL(_all_queries()[name])


def query_with(name: str, **identifiers: str | sql.Composable) -> sql.Composed:
    """A named query whose {braced} identifiers are filled in safely."""
    filled = {
        key: value if isinstance(value, sql.Composable) else sql.Identifier(value)
        for key, value in identifiers.items()
    }
    return query(name).format(**filled)
