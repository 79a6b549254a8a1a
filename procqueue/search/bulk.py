"""`<entity>:bulk`: sync a chunk of ids with one SELECT and one `_bulk` request.

Made by the statement trigger for statements changing more rows than
PROCQUEUE_BULK_THRESHOLD, by `procqueue verify --repair`, and by itself for
retries. The chunk is read and written while the entity's publish key is held
exclusively, so no per-row job reads or writes those documents in between
(docs/bulk.md). Per-item errors are handled item by item: transient ones (429,
5xx) go into a new, smaller bulk job after a backoff; permanent ones, and those
out of retries, are recorded in procqueue.sync_item_errors with id and reason.
So are the rows of the chunk that cannot be read (the chunk is then read again
row by row) or have no document (too large): one row never fails the others.

Backpressure (items refused with 429/503 by an overloaded cluster) spends no
attempt and records nothing: when every id of the chunk was refused so, the job
itself is postponed (the same row waits, the circuit opens, as for a request-level
429); when only some were, their ids go into a new bulk job with the same attempt,
due when the index's pause is over. The chunk is read with row security off: a row
row-level security hides fails the job (RowsHidden), never reads as deleted.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from procrastinate import JobContext
from psycopg.rows import dict_row

from procqueue.engine.app import ProcqueueApp
from procqueue.entities import Entity
from procqueue.errors import PermanentError, is_row_security_refusal
from procqueue.queue.jobs import enqueue
from procqueue.queue.retry import BackoffRetry
from procqueue.search.client import ItemFailure, SearchIndex, Write, search_index
from procqueue.search.jobs import bulk_args, bulk_job
from procqueue.search.queries import query
from procqueue.search.sync import (
    READ_ERRORS,
    ROW_READ_ERRORS,
    Stamp,
    _stamp,
    backpressure_error,
    entity_query,
    read_error,
    rows_hidden,
    write_all,
    writes_for,
)

logger = logging.getLogger(__name__)


@dataclass
class ChunkResult:
    indexed: int = 0
    deleted: int = 0
    failures: list[ItemFailure] = field(default_factory=list)


#: The per-item status recorded for a row that could not be read.
UNREADABLE = 422


async def _read_chunk(
    conn: psycopg.AsyncConnection[Any], entity: Entity, ids: Sequence[str], index: str
) -> tuple[dict[str, dict[str, Any]], list[ItemFailure]]:
    """The chunk's rows by id, in one SELECT; when a value of some row makes it
    fail, row by row, each row that still fails becoming a failure of its own. In
    the caller's transaction, after `row_security_off`."""
    cursor = conn.cursor(row_factory=dict_row)
    try:
        async with conn.transaction():  # a savepoint: the chunk's locks stay held
            await cursor.execute(entity_query("read_entity_chunk", entity), {"ids": list(ids)})
            found = await cursor.fetchall()
    except ROW_READ_ERRORS:
        found, failures = [], []
        for entity_id in ids:
            try:
                async with conn.transaction():
                    await cursor.execute(entity_query("read_entity_row", entity), {"id": entity_id})
                    found += await cursor.fetchall()
            except ROW_READ_ERRORS as error:
                reason = read_error(entity, entity_id, error)
                failures.append(ItemFailure(Write(index, entity_id, None), UNREADABLE, reason))
        return {str(row[entity.primary_key]): row for row in found}, failures
    except psycopg.errors.InsufficientPrivilege as err:
        if not is_row_security_refusal(err):
            raise
        what = f"the sync of {len(ids)} {entity.name} rows"
        raise rows_hidden(conn, entity, what, err) from err
    except READ_ERRORS as err:
        raise PermanentError(
            f"cannot read {len(ids)} {entity.table} rows: {err.diag.message_primary or err}"
        ) from err
    return {str(row[entity.primary_key]): row for row in found}, []


async def sync_chunk(
    conn: psycopg.AsyncConnection[Any],
    search: SearchIndex,
    entity: Entity,
    ids: Sequence[str],
    only_index: str | None = None,
) -> ChunkResult:
    """Read the chunk's rows and write their documents (or deletions) in one
    `_bulk`, under the entity's publish key held exclusively. `only_index`: write
    there only (a reindex's new index), not to the alias and targets."""
    ids = list(dict.fromkeys(ids))
    if not ids:
        return ChunkResult()
    if only_index is None:
        await search.ensure_index(entity)
    await search.wait_for_room([only_index or search.alias(entity)])  # before locking
    async with conn.transaction():
        stamp = await hold_publish_key(conn, entity)
        chunk = await read_chunk(conn, search, entity, stamp, ids, only_index)
        failures = await write_all(search, chunk.writes, stamp.version, chunk.rows)
    return ChunkResult(
        indexed=len(chunk.rows) - chunk.refused,
        deleted=chunk.readable - len(chunk.rows),
        failures=[*chunk.failures, *failures],
    )


async def hold_publish_key(conn: psycopg.AsyncConnection[Any], entity: Entity) -> Stamp:
    """In the caller's transaction: row security off (a hidden row raises, never
    reads as missing), the entity's publish key held exclusively until that
    transaction ends, and the stamp of the chunks read under it."""
    await conn.execute(query("row_security_off"))
    await conn.execute(query("lock_publish_exclusive"), {"entity": entity.name})
    return await _stamp(conn, entity)


@dataclass
class ChunkRead:
    """A chunk read under the publish key: its rows, the writes that bring the
    index in line with them, and the ids that failed before any write."""

    rows: dict[str, dict[str, Any]]
    writes: list[Write]
    failures: list[ItemFailure]  # unreadable rows, then rows with no document
    readable: int
    refused: int  # of the failures, rows read that can have no document


async def read_chunk(
    conn: psycopg.AsyncConnection[Any],
    search: SearchIndex,
    entity: Entity,
    stamp: Stamp,
    ids: Sequence[str],
    only_index: str | None = None,
) -> ChunkRead:
    """Read `ids` (while the publish key is held: hold_publish_key) and make their
    writes, stamped `stamp`; `only_index` as for sync_chunk."""
    rows, unread = await _read_chunk(conn, entity, ids, only_index or search.alias(entity))
    unread_ids = {failure.write.entity_id for failure in unread}
    readable = [entity_id for entity_id in ids if entity_id not in unread_ids]
    writes, refused = writes_for(search, entity, stamp, readable, rows, only_index)
    return ChunkRead(rows, writes, [*unread, *refused], len(readable), len(refused))


async def enqueue_bulk(
    conn: psycopg.AsyncConnection[Any],
    entity: Entity,
    ids: Sequence[str],
    chunk_size: int,
    *,
    attempt: int = 0,
    delay: float = 0.0,
) -> int:
    """Enqueue `<entity>:bulk` jobs for `ids`, `chunk_size` per job; returns how many."""
    chunks = [ids[start : start + chunk_size] for start in range(0, len(ids), chunk_size)]
    for chunk in chunks:
        await enqueue(conn, bulk_job(entity), bulk_args(chunk, attempt), delay=delay)
    return len(chunks)


async def handle_failures(
    conn: psycopg.AsyncConnection[Any],
    entity: Entity,
    failures: Sequence[ItemFailure],
    *,
    job_id: int | None,
    attempt: int,
    retry: BackoffRetry,
    chunk_size: int,
    pause: float = 0.0,
) -> tuple[int, int, int]:
    """Put the items refused under backpressure in a new bulk job with the same
    attempt, due in `pause` seconds (no attempt spent, nothing recorded); retry the
    other transient items in a new bulk job, record the others. Returns (postponed
    ids, retried ids, recorded failures)."""
    postponed_ids = list(dict.fromkeys(f.write.entity_id for f in failures if f.backpressure))
    pressed = set(postponed_ids)
    retry_ids = list(
        dict.fromkeys(f.write.entity_id for f in failures
                      if f.transient and f.write.entity_id not in pressed)
    ) if attempt < retry.max_retries else []  # fmt: skip
    handed_on = {*pressed, *retry_ids}
    recorded = [f for f in failures if f.write.entity_id not in handed_on]
    async with conn.transaction():
        if postponed_ids:
            await enqueue_bulk(conn, entity, postponed_ids, chunk_size, attempt=attempt,
                               delay=pause)  # fmt: skip
        if retry_ids:
            await enqueue_bulk(
                conn, entity, retry_ids, chunk_size, attempt=attempt + 1, delay=retry.delay(attempt)
            )
        await record_item_errors(conn, entity, recorded, job_id=job_id)
    return len(postponed_ids), len(retry_ids), len(recorded)


async def record_item_errors(
    conn: psycopg.AsyncConnection[Any],
    entity: Entity,
    failures: Sequence[ItemFailure],
    *,
    job_id: int | None,
) -> None:
    """One procqueue.sync_item_errors row (and one log line) per failure."""
    for failure in failures:
        await conn.execute(
            query("record_item_error"),
            {
                "job_id": job_id,
                "entity": entity.name,
                "entity_id": failure.write.entity_id,
                "index_name": failure.write.index,
                "status": failure.status,
                "reason": failure.reason[:2000],
            },
        )
        logger.error(
            "%s %s not written to %s (%s): %s",
            entity.name, failure.write.entity_id, failure.write.index, failure.status,
            failure.reason[:2000],
        )  # fmt: skip


def register(app: ProcqueueApp) -> None:
    """`<entity>:bulk` for every entity."""
    for entity in app.services.entities.entities:
        _register_entity(app, entity)


def _register_entity(app: ProcqueueApp, entity: Entity) -> None:
    spec = bulk_job(entity)
    retry = app.retry_of(spec)

    async def bulk(context: JobContext, ids: list[str], attempt: int = 0) -> dict[str, int]:
        search = search_index(app.services)
        async with app.pool.connection() as conn:
            result = await sync_chunk(conn, search, entity, ids)
            pressed = {f.write.entity_id for f in result.failures if f.backpressure}
            error = backpressure_error(result.failures)
            if error and pressed == set(ids) and all(f.backpressure for f in result.failures):
                # Nothing of the chunk went through, only for backpressure: the same
                # job waits (no new row, no attempt spent) and the circuit opens.
                raise error
            postponed, retried, recorded = await handle_failures(
                conn, entity, result.failures, job_id=context.job.id, attempt=attempt,
                retry=retry, chunk_size=app.services.settings.bulk_chunk_size,
                pause=search.pause_left([search.alias(entity)]),
            )  # fmt: skip
        return {
            "indexed": result.indexed, "deleted": result.deleted,
            "postponed": postponed, "retried": retried, "failed": recorded,
        }  # fmt: skip

    app.task_of(spec, pass_context=True)(bulk)
