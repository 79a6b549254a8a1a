"""`procqueue verify`: compare Postgres and the index, document by document.

Two passes, both in chunks so memory stays flat and a million rows stay cheap:
- the table in key order (keyset pages), each page's documents fetched with one
  `mget`: missing ids, and stale ones (content hash differs);
- the index's ids (scroll without `_source`), each page checked against the table
  with one `= ANY` lookup: extra documents.
`document_from_row` is the one definition of a document; a row that cannot have
one (too large) is `unindexable`, not drift: its sync failed with that reason and
deleted its document. `repair` enqueues sync jobs for exactly the drifted ids:
per-row jobs for a few, bulk jobs for many. Verify only reads: a missing alias is
reported (every row missing), never created. Its reads of the table run with row
security off (procqueue/search/sync.py `unfiltered_read`): a row that row-level
security hides raises RowsHidden, never reads as missing (its document "extra",
which the repair's sync job would delete).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from elasticsearch import helpers
from psycopg import sql
from psycopg.rows import dict_row

from procqueue.entities import Entity
from procqueue.errors import ProcqueueError
from procqueue.queue.jobs import enqueue
from procqueue.search.bulk import enqueue_bulk
from procqueue.search.client import SearchIndex, translate_errors
from procqueue.search.document import Unindexable, document_from_row
from procqueue.search.jobs import row_args, row_job
from procqueue.search.queries import query
from procqueue.search.sync import entity_query, unfiltered_read


def content_hash(document: Mapping[str, Any]) -> str:
    canonical = json.dumps(document, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass
class Drift:
    entity: str
    checked_rows: int = 0
    checked_documents: int = 0
    missing: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    #: Rows that cannot have a document (Unindexable), expected absent: not drift.
    unindexable: list[str] = field(default_factory=list)
    #: The entity's alias does not exist: every row is missing (none, for an empty
    #: table: nothing to fix, its first sync creates the index).
    index_missing: bool = False
    #: The highest version of a stale document: one changed outside procqueue can hold
    #: a version above procqueue's next stamps, which `repair` moves past.
    stale_version: int = 0

    @property
    def ids(self) -> list[str]:
        return [*self.missing, *self.stale, *self.extra]

    @property
    def drifted(self) -> bool:
        return bool(self.ids)


async def _check_rows(
    conn: psycopg.AsyncConnection[Any], search: SearchIndex, entity: Entity, drift: Drift,
    batch_size: int, on_chunk: Callable[[int], None] | None,
) -> None:  # fmt: skip
    last: str | None = None
    while True:
        rows = await read_page(conn, entity, last, batch_size)
        if not rows:
            return
        await compare_rows(search, entity, rows, drift)
        if on_chunk:
            on_chunk(len(rows))
        last = str(rows[-1][entity.primary_key])


async def read_page(
    conn: psycopg.AsyncConnection[Any], entity: Entity, after_key: str | None, limit: int
) -> list[dict[str, Any]]:
    """Up to `limit` rows of the entity after `after_key` (None: from the start), in
    key order."""
    key = sql.Identifier(entity.primary_key)
    after = sql.SQL("") if after_key is None else sql.SQL("WHERE {key} > %(after)s").format(key=key)
    cursor = conn.cursor(row_factory=dict_row)
    async with unfiltered_read(conn, entity, f"the comparison of {entity.table} with its index"):
        await cursor.execute(
            entity_query("read_entity_page", entity, after=after),
            {"after": after_key, "limit": limit},
        )
        return await cursor.fetchall()


async def compare_rows(
    search: SearchIndex, entity: Entity, rows: Sequence[Mapping[str, Any]], drift: Drift
) -> None:
    """Check one page of rows against their documents (one `mget`, none when the
    alias is missing): add the missing, stale and unindexable ids to `drift`."""
    if not rows:
        return
    alias = search.alias(entity)
    ids = [str(row[entity.primary_key]) for row in rows]
    indexed: dict[str, Any] = {}  # id -> its document as mget found it
    if not drift.index_missing:
        with translate_errors(f"mget of {len(ids)} documents from {alias}"):
            found = await search.client.mget(index=alias, ids=ids)
        indexed = {doc["_id"]: doc for doc in found["docs"] if doc.get("found")}
    for entity_id, row in zip(ids, rows, strict=True):
        source = indexed[entity_id]["_source"] if entity_id in indexed else None
        try:
            document = document_from_row(entity, row)
        except Unindexable:
            drift.unindexable.append(entity_id)
            if source is not None:  # its sync deletes it (and fails with the reason)
                drift.stale.append(entity_id)
            continue
        if source is None:
            drift.missing.append(entity_id)
        elif content_hash(source) != content_hash(document):
            drift.stale.append(entity_id)
            version = int(indexed[entity_id].get("_version", 0))
            drift.stale_version = max(drift.stale_version, version)
    drift.checked_rows += len(rows)


async def check_documents(
    conn: psycopg.AsyncConnection[Any], search: SearchIndex, entity: Entity, drift: Drift,
    batch_size: int,
) -> None:  # fmt: skip
    """Scan the index's ids: add those without a row to `drift` as extra."""
    page: list[str] = []

    what = f"the search for documents of {entity.table} without a row"

    async def flush() -> None:
        try:
            async with unfiltered_read(conn, entity, what):
                cursor = await conn.execute(
                    entity_query("existing_entity_ids", entity), {"ids": page}
                )
                present = {row[0] for row in await cursor.fetchall()}
        except psycopg.errors.DataError:
            # A document id the key's type cannot hold ("no-such-row" for a uuid key):
            # compare as text, which the key's index cannot serve, for this page only.
            async with unfiltered_read(conn, entity, what):
                cursor = await conn.execute(
                    entity_query("existing_entity_ids_as_text", entity), {"ids": page}
                )
                present = {row[0] for row in await cursor.fetchall()}
        drift.extra.extend(entity_id for entity_id in page if entity_id not in present)
        drift.checked_documents += len(page)
        page.clear()

    with translate_errors(f"scanning {search.alias(entity)}"):
        # A scan sees what is searchable: make the latest writes so before it.
        await search.client.indices.refresh(index=search.alias(entity))
        async for hit in helpers.async_scan(
            search.client, index=search.alias(entity), size=batch_size,
            query={"query": {"match_all": {}}, "_source": False},
        ):  # fmt: skip
            page.append(hit["_id"])
            if len(page) >= batch_size:
                await flush()
    if page:
        await flush()


async def _check_ids(
    conn: psycopg.AsyncConnection[Any], search: SearchIndex, entity: Entity, drift: Drift,
    ids: Sequence[str],
) -> None:  # fmt: skip
    """Check these ids only: their rows against their documents, and the documents of
    the ids without a row (extra)."""
    cursor = conn.cursor(row_factory=dict_row)
    try:
        async with unfiltered_read(conn, entity, f"the comparison of {len(ids)} id(s)"):
            await cursor.execute(entity_query("read_entity_chunk", entity), {"ids": list(ids)})
            rows = await cursor.fetchall()
    except psycopg.errors.DataError as error:
        raise ProcqueueError(
            f"an id is not a key of {entity.table} ({entity.primary_key}: "
            f"{error.diag.message_primary or error}): give the ids as they are in the table"
        ) from None
    await compare_rows(search, entity, rows, drift)
    present = {str(row[entity.primary_key]) for row in rows}
    gone = [entity_id for entity_id in dict.fromkeys(ids) if entity_id not in present]
    if gone and not drift.index_missing:
        alias = search.alias(entity)
        with translate_errors(f"mget of {len(gone)} documents from {alias}"):
            found = await search.client.mget(index=alias, ids=gone)
        drift.extra.extend(doc["_id"] for doc in found["docs"] if doc.get("found"))
        drift.checked_documents += len(gone)


async def verify_entity(
    conn: psycopg.AsyncConnection[Any], search: SearchIndex, entity: Entity, *,
    batch_size: int = 1000, on_chunk: Callable[[int], None] | None = None,
    ids: Sequence[str] = (),
) -> Drift:  # fmt: skip
    """Compare the entity's table with its index (only these `ids`, if given); `conn`
    in autocommit mode."""
    drift = Drift(entity.name)
    alias = search.alias(entity)
    with translate_errors(f"checking alias {alias}"):
        drift.index_missing = not await search.client.indices.exists_alias(name=alias)
    if ids:
        await _check_ids(conn, search, entity, drift, ids)
        return drift
    await _check_rows(conn, search, entity, drift, batch_size, on_chunk)
    if not drift.index_missing:
        await check_documents(conn, search, entity, drift, batch_size)
    return drift


async def repair(
    conn: psycopg.AsyncConnection[Any], entity: Entity, ids: list[str], threshold: int,
    chunk_size: int, *, above_version: int = 0,
) -> int:  # fmt: skip
    """Enqueue sync jobs for exactly these ids, in one transaction; returns how many.
    `above_version` (Drift.stale_version): their writes are stamped higher, so a
    document whose version was raised outside procqueue is replaced, not kept as newer."""
    if not ids:
        return 0
    async with conn.transaction():
        if above_version:
            await conn.execute(query("advance_sync_version"), {"floor": above_version})
        if len(ids) > threshold:
            return await enqueue_bulk(conn, entity, ids, chunk_size)
        spec = row_job(entity, "update")
        for entity_id in ids:
            await enqueue(conn, spec, row_args(entity_id), key=entity_id)
    return len(ids)
