"""The orphan check: which assets some row of some configured table still uses.

One generic query shape (`image_reference_candidates` in queries.sql) is filled
in for every image column of every entity and the pieces are joined with UNION,
so one statement — one snapshot — covers them all. SQL narrows the rows down
cheaply (the URL contains the public id, raw or percent-encoded); Python then
parses each candidate with the same parser as the job, so that "the same asset"
means the same thing on both sides. A candidate that cannot be parsed but might
point at our cloud (unknown host, malformed) counts as a reference: when in
doubt, an image is kept.

The check reads with `SET LOCAL row_security = off` (transaction-local, safe behind a
transaction pooler): should row-level security hide a row from the worker (switched
on or FORCEd after it started), PostgreSQL raises instead of leaving the row out, and
the job fails with RowsHidden: a hidden row's image is never taken for an orphan.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import quote

import psycopg
from psycopg import sql

from procqueue.entities import Entity
from procqueue.errors import RowsHidden, is_row_security_refusal
from procqueue.images.queries import query_with
from procqueue.images.urls import Asset, DeliveryConfig, Rejection, explain

#: For the rest of the check's transaction: a read row-level security would filter raises.
ROW_SECURITY_OFF = sql.SQL("SET LOCAL row_security = off")
_NAMED_TABLE = re.compile(r'for table "([^"]+)"')


def image_columns(entities: Iterable[Entity]) -> list[tuple[Entity, str]]:
    return [(entity, column) for entity in entities for column in entity.image_columns]


def candidates_query(entities: Iterable[Entity]) -> sql.Composed | None:
    """URLs in any image column of any entity containing one of %(needles)s."""
    pieces = [
        query_with(
            "image_reference_candidates",
            schema=entity.schema_name,
            table=entity.table_name,
            column=column,
        )
        for entity, column in image_columns(entities)
    ]
    return sql.SQL("\nUNION\n").join(pieces) if pieces else None


def needles(assets: Iterable[Asset]) -> list[str]:
    """Substrings a URL of one of these assets must contain."""
    found: set[str] = set()
    for asset in assets:
        found.add(asset.public_id)
        found.add(quote(asset.public_id, safe="/"))
        found.add(quote(asset.public_id, safe="/:@!$&'()*+,;=~"))
    return sorted(found)


def referenced_by(
    urls: Iterable[str], assets: Sequence[Asset], config: DeliveryConfig
) -> set[Asset]:
    """The assets among `assets` that one of `urls` refers to (or might)."""
    wanted = set(assets)
    referenced: set[Asset] = set()
    for url in urls:
        found = explain(url, config)
        if isinstance(found, Rejection):
            if found.kind.may_refer_to_ours:
                referenced |= {
                    asset for asset in wanted if any(part in url for part in needles([asset]))
                }
        elif found in wanted:
            referenced.add(found)
    return referenced


async def find_referenced(
    conn: psycopg.AsyncConnection[Any],
    entities: Iterable[Entity],
    assets: Sequence[Asset],
    config: DeliveryConfig,
) -> set[Asset]:
    """The assets still referenced by a row of any configured image column."""
    entities = list(entities)
    statement = candidates_query(entities)
    if statement is None or not assets:
        return set()
    try:
        async with conn.transaction():
            await conn.execute(ROW_SECURITY_OFF)
            cursor = await conn.execute(statement, {"needles": needles(assets)})
            urls = [str(url) for (url,) in await cursor.fetchall()]
    except psycopg.errors.InsufficientPrivilege as error:
        if not is_row_security_refusal(error):
            raise
        raise hidden_rows(conn, entities, error) from error
    return referenced_by(urls, assets, config)


def hidden_rows(
    conn: psycopg.AsyncConnection[Any], entities: Sequence[Entity], error: psycopg.Error
) -> RowsHidden:
    """The error of a reference check that row-level security refused, naming the table."""
    named = _NAMED_TABLE.search(str(error))
    table = named[1] if named else "?"
    qualified = next((e.table for e in entities if e.table_name == table), table)
    role = conn.info.parameter_status("session_authorization") or conn.info.user
    return RowsHidden(qualified, role, "the check of which rows still use an image")
