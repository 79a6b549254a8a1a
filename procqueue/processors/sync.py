"""Entity sync: make the entity's search document match its current row.

The job carries an id, never a snapshot. The worker takes the entity's sync key
exclusively before reading, which waits for every writer whose job was coalesced
into this one to commit; then the row it reads is at least as new as theirs.
Present row: index it. Missing row: delete the document.
"""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from procqueue.documents import document_from_row
from procqueue.entities import Entity
from procqueue.errors import PermanentError
from procqueue.queries import query, query_with
from procqueue.sinks.search import SearchIndex

LOCK_RETRY_SECONDS = (0.002, 0.01, 0.05)


def read_row_query(entity: Entity) -> sql.Composed:
    return query_with(
        "read_entity_row",
        columns=sql.SQL(", ").join(sql.Identifier(column) for column in entity.fields),
        schema=entity.schema_name,
        table=entity.table_name,
        primary_key=entity.primary_key,
    )


async def _try_lock(conn: psycopg.AsyncConnection[Any], params: dict[str, str]) -> bool:
    row = await (await conn.execute(query("try_lock_entity"), params)).fetchone()
    return bool(row and row[0])


async def read_current_row(
    pool: AsyncConnectionPool[Any], entity: Entity, entity_id: str
) -> dict[str, Any] | None:
    params = {"entity": entity.name, "id": entity_id}
    async with pool.connection() as conn, conn.transaction():
        attempt = 0
        while not await _try_lock(conn, params):
            # A writer of this entity has not committed yet: wait for it.
            await asyncio.sleep(LOCK_RETRY_SECONDS[min(attempt, len(LOCK_RETRY_SECONDS) - 1)])
            attempt += 1
        try:
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute(read_row_query(entity), params)
            return await cursor.fetchone()
        except (psycopg.errors.DataError, psycopg.errors.SyntaxErrorOrAccessRuleViolation) as err:
            raise PermanentError(
                f"cannot read {entity.table} row {entity_id!r}: {err.diag.message_primary}"
            ) from err


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
