"""Procrastinate's queries with schema-qualified names: no `search_path` needed.

Procrastinate's SQL (procrastinate/sql/queries.sql) names its tables, functions and
types unqualified (`procrastinate_jobs`, `procrastinate_fetch_job_v2`,
`procrastinate_job_status`); our queue lives in schema `procrastinate`. Setting the
session's `search_path` would leak to other clients of a transaction pooler, and
`ALTER ROLE ... SET search_path` changes the role's other work, so neither is used:

- `QualifiedPsycopgConnector` runs each of Procrastinate's queries rewritten to
  `procrastinate.procrastinate_jobs` etc. The rewrite is computed once per query text
  at import (a dict lookup per query at run time);
- the bodies of Procrastinate's functions and triggers resolve their names through
  the `search_path` pinned on each function by `procqueue migrate`
  (sql/pin_procrastinate_search_path.sql).

Only identifiers are rewritten: string literals stay as they are (notification
channel names such as 'procrastinate_any_queue_v1' are data), except a relation
name passed to `to_regclass('...')` and its siblings, which is a name. Queries that
are not Procrastinate's own pass through unchanged.
"""

from __future__ import annotations

import re
from typing import Any, LiteralString

import procrastinate
import psycopg
from procrastinate import connector as procrastinate_connector
from procrastinate import sql as procrastinate_sql
from procrastinate.sync_psycopg_connector import SyncPsycopgConnector

from procqueue.engine.schema import PROCRASTINATE_SCHEMA

#: Literals, quoted identifiers and comments: the parts of a query never rewritten.
_OPAQUE = re.compile(
    r"""
    (?P<literal>'(?:[^']|'')*')
    | (?P<quoted>"(?:[^"]|"")*")
    | (?P<comment>--[^\n]*|/\*.*?\*/)
    | (?P<dollar>\$(?P<tag>[A-Za-z_]\w*)?\$.*?\$(?P=tag)?\$)
    """,
    re.VERBOSE | re.DOTALL,
)
#: An unqualified Procrastinate name: not after a dot, a word character or `%(`.
_NAME = re.compile(r"(?<![\w.$])(?<!%\()procrastinate_[a-z0-9_]+\b")
#: A literal that is a relation/function/type name: to_regclass('procrastinate_jobs').
_LOOKUP_CALL = re.compile(r"\bto_reg(?:class|proc|procedure|type|namespace)\s*\(\s*$", re.I)
_LOOKUP_NAME = re.compile(r"'(procrastinate_[a-z0-9_]+)'")


def qualify(query: str, schema: str = PROCRASTINATE_SCHEMA) -> str:
    """`query` with every unqualified procrastinate_* identifier prefixed by `schema.`."""
    parts: list[str] = []
    position = 0
    for opaque in _OPAQUE.finditer(query):
        code = query[position : opaque.start()]
        parts.append(_NAME.sub(lambda found: f"{schema}.{found.group()}", code))
        text = opaque.group()
        lookup = _LOOKUP_NAME.fullmatch(text)
        if opaque.group("literal") and lookup and _LOOKUP_CALL.search(code):
            text = f"'{schema}.{lookup.group(1)}'"
        parts.append(text)
        position = opaque.end()
    parts.append(_NAME.sub(lambda found: f"{schema}.{found.group()}", query[position:]))
    return "".join(parts)


#: Each of Procrastinate's queries, and its qualified form; computed once.
QUALIFIED: dict[str, LiteralString] = {
    text: qualify(text) for text in procrastinate_sql.queries.values()
}


def qualified(query: LiteralString) -> LiteralString:
    return QUALIFIED.get(query, query)


class QualifiedSyncPsycopgConnector(SyncPsycopgConnector):
    """What Procrastinate uses synchronously before the app is opened (a sync defer)."""

    def execute_query(self, query: LiteralString, **arguments: Any) -> None:
        super().execute_query(qualified(query), **arguments)

    def execute_query_one(self, query: LiteralString, **arguments: Any) -> dict[str, Any]:
        return super().execute_query_one(qualified(query), **arguments)

    def execute_query_all(self, query: LiteralString, **arguments: Any) -> list[dict[str, Any]]:
        return super().execute_query_all(qualified(query), **arguments)

    def execute_query_one_with_connection(
        self, connection: Any, query: LiteralString, **arguments: Any
    ) -> dict[str, Any]:
        return super().execute_query_one_with_connection(connection, qualified(query), **arguments)

    def execute_query_all_with_connection(
        self, connection: Any, query: LiteralString, **arguments: Any
    ) -> list[dict[str, Any]]:
        return super().execute_query_all_with_connection(connection, qualified(query), **arguments)


class QualifiedPsycopgConnector(procrastinate.PsycopgConnector):
    """Procrastinate's psycopg connector, running its queries schema-qualified."""

    def get_sync_connector(self) -> procrastinate_connector.BaseConnector:
        if self._async_pool:
            return self
        if self._sync_connector is None:
            self._sync_connector = QualifiedSyncPsycopgConnector(
                json_dumps=self._json_dumps, json_loads=self._json_loads, **self._pool_args
            )
        return self._sync_connector

    async def execute_query_async(self, query: LiteralString, **arguments: Any) -> None:
        await super().execute_query_async(qualified(query), **arguments)

    async def execute_query_one_async(
        self, query: LiteralString, **arguments: Any
    ) -> dict[str, Any]:
        row: dict[str, Any] = await super().execute_query_one_async(qualified(query), **arguments)
        return row

    async def execute_query_all_async(
        self, query: LiteralString, **arguments: Any
    ) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = await super().execute_query_all_async(
            qualified(query), **arguments
        )
        return rows

    async def execute_query_one_async_with_connection(
        self, connection: psycopg.AsyncConnection[Any], query: LiteralString, **arguments: Any
    ) -> dict[str, Any]:
        row: dict[str, Any] = await super().execute_query_one_async_with_connection(
            connection, qualified(query), **arguments
        )
        return row

    async def execute_query_all_async_with_connection(
        self, connection: psycopg.AsyncConnection[Any], query: LiteralString, **arguments: Any
    ) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = await super().execute_query_all_async_with_connection(
            connection, qualified(query), **arguments
        )
        return rows
