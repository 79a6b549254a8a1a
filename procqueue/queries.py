"""Named SQL: each package keeps its queries in a `queries.sql` beside its modules
(procqueue/search/queries.sql, procqueue/queue/queries.sql, ...), read through its
own `queries.py` with this one loader, in the manner of Procrastinate's
sql/queries.sql: a block starts with "-- name: description"; {braced} names are
identifiers filled in with psycopg.sql; %(named)s are parameters."""

from __future__ import annotations

import re
from functools import cached_property
from importlib import resources
from importlib.resources.abc import Traversable

from psycopg import sql

_HEADER = re.compile(r"^-- (?P<name>[a-z_]+): .*$", re.MULTILINE)


class NamedQueries:
    """The named queries of one file, read on first use."""

    def __init__(self, package: str | None, file: str = "queries.sql") -> None:
        if package is None:
            raise ValueError("NamedQueries needs the package its queries.sql is in")
        self.package = package
        self.file = file

    @property
    def source(self) -> Traversable:
        return resources.files(self.package) / self.file

    @cached_property
    def _queries(self) -> dict[str, str]:
        text = self.source.read_text(encoding="utf-8")
        headers = list(_HEADER.finditer(text))
        queries = {}
        for header, following in zip(headers, [*headers[1:], None], strict=True):
            end = following.start() if following else len(text)
            queries[header["name"]] = text[header.end() : end].strip()
        return queries

    def names(self) -> list[str]:
        return list(self._queries)

    def query(self, name: str) -> sql.SQL:
        """A named query with no identifiers to fill in."""
        try:
            return sql.SQL(self._queries[name])
        except KeyError:
            raise LookupError(
                f"no query named {name!r} in {self.package}/{self.file}"
            ) from None

    def query_with(self, name: str, **identifiers: str | sql.Composable) -> sql.Composed:
        """A named query whose {braced} identifiers are filled in safely."""
        filled = {
            key: value if isinstance(value, sql.Composable) else sql.Identifier(value)
            for key, value in identifiers.items()
        }
        return self.query(name).format(**filled)
