"""Entity sync: make the entity's search document match its current row.

The job carries an id, never a snapshot. The worker takes the entity's sync key
exclusively before reading, which waits for every writer whose job was coalesced
into this one to commit; then the row it reads is at least as new as theirs.
Present row: index it. Missing row: delete the document.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import psycopg
from procrastinate import JobContext
from psycopg import sql
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from procqueue.documents import document_from_row
from procqueue.entities import Entity
from procqueue.errors import PermanentError
from procqueue.queries import query, query_with
from procqueue.retry import BackoffRetry
from procqueue.runtime import ProcqueueApp
from procqueue.sinks.search import SearchIndex

SYNC_OPERATIONS = ("create", "update", "delete")
LOCK_RETRY_SECONDS = (0.002, 0.01, 0.05)


def entity_query(name: str, entity: Entity) -> sql.Composed:
    """A named query over an entity's table, reading its key and document columns."""
    columns = dict.fromkeys([entity.primary_key, *entity.fields])
    return query_with(
        name,
        columns=sql.SQL(", ").join(sql.Identifier(column) for column in columns),
        schema=entity.schema_name,
        table=entity.table_name,
        primary_key=entity.primary_key,
    )


async def _locked_read(
    conn: psycopg.AsyncConnection[Any], entity: Entity, params: dict[str, str]
) -> tuple[bool, dict[str, Any] | None]:
    """Try the entity's sync key, then read the row, in one transaction sent as one
    pipeline. The read is its own statement, so its snapshot is taken after the
    key is held; when the key was busy the read is thrown away."""
    async with conn.pipeline(), conn.transaction():
        lock = await conn.execute(query("try_lock_entity"), params)
        read = conn.cursor(row_factory=dict_row)
        await read.execute(entity_query("read_entity_row", entity), params)
    locked = await lock.fetchone()
    row: dict[str, Any] | None = await read.fetchone()
    return bool(locked and locked[0]), row


async def read_current_row(
    pool: AsyncConnectionPool[Any], entity: Entity, entity_id: str
) -> dict[str, Any] | None:
    params = {"entity": entity.name, "id": entity_id}
    async with pool.connection() as conn:
        for attempt in itertools.count():
            try:
                locked, row = await _locked_read(conn, entity, params)
            except (
                psycopg.errors.DataError,
                psycopg.errors.SyntaxErrorOrAccessRuleViolation,
            ) as err:
                raise PermanentError(
                    f"cannot read {entity.table} row {entity_id!r}: {err.diag.message_primary}"
                ) from err
            if locked:
                return row
            # A writer of this entity has not committed yet: wait for it.
            await asyncio.sleep(LOCK_RETRY_SECONDS[min(attempt, len(LOCK_RETRY_SECONDS) - 1)])
    raise AssertionError("unreachable")


async def sync_entity(
    pool: AsyncConnectionPool[Any], search: SearchIndex, entity: Entity, entity_id: str
) -> str:
    """Bring one document in line with its row; returns what was done."""
    row = await read_current_row(pool, entity, entity_id)
    if row is None:
        await search.remove(entity, entity_id)
        return "deleted"
    await search.put(entity, entity_id, document_from_row(entity, row))
    return "indexed"


def register(app: ProcqueueApp, retry: BackoffRetry) -> None:
    """`<entity>:create|update|delete` for every entity: one processor, three names."""
    for entity in app.services.entities.entities:
        _register_entity(app, entity, retry)


def _register_entity(app: ProcqueueApp, entity: Entity, retry: BackoffRetry) -> None:
    async def sync(context: JobContext, id: str) -> str:
        return await sync_entity(app.pool, app.services.search, entity, id)

    for operation in SYNC_OPERATIONS:
        app.task(
            name=entity.task_name(operation), queue=entity.queue, pass_context=True, retry=retry
        )(sync)
