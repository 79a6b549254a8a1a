"""Row jobs in micro-batches: `<entity>:create|update|delete` served together.

A row job that starts claims up to PROCQUEUE_SYNC_BATCH_SIZE - 1 more ready row jobs
of its entity (procqueue/queue/batch.py: same locks and order as Procrastinate's
fetch, each claimed job still a job of its own). Their rows are then synced as one
job's row is (procqueue/search/sync.py), all at once: under the entity's publish key
held shared, each row's sync key is tried, one stamp is drawn, the rows whose key was
free are read in one query, and their documents (or deletions) go out in one `_bulk`
with the stamp as external version, so an older read still never overwrites a newer
state. Each job gets its own row's outcome: indexed or deleted; a refused item,
a row that cannot be read or has no document fails (or retries) that job alone,
recorded as ever; an outage of Elasticsearch postpones every job of the batch through
the circuit, and an item refused under backpressure (429/503) postpones its own job
the same way. A row whose writer is still in its transaction is tried again, alone
of the batch, like a single job's. One job with no other ready takes the single-row
path at once. Rows are read with row security off: row-level security switched on
meanwhile fails the batch's jobs with RowsHidden, never deletes a hidden row's
document.
"""

from __future__ import annotations

import itertools
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import psycopg
from procrastinate import JobContext
from psycopg_pool import AsyncConnectionPool

from procqueue.engine.app import ProcqueueApp
from procqueue.entities import Entity
from procqueue.errors import PermanentError
from procqueue.queue.batch import Batches, BatchSpec
from procqueue.search.bulk import _read_chunk
from procqueue.search.client import ItemFailure, SearchIndex, search_index
from procqueue.search.jobs import ROW_OPERATIONS, row_job
from procqueue.search.queries import query
from procqueue.search.settings import SearchSettings
from procqueue.search.sync import (
    READ_SAVEPOINT,
    RELEASE_READ_KEY,
    Stamp,
    failure_error,
    still_written,
    sync_entity,
    wait_for_writers,
    write_all,
    writes_for,
)


async def _lock_many(
    conn: psycopg.AsyncConnection[Any], entity: Entity, ids: Sequence[str]
) -> tuple[list[str], Stamp]:
    """In the caller's transaction, as one pipeline: row security off (a row hidden by
    row-level security raises when read, never reads as missing), the publish key
    shared (held until that transaction ends), a savepoint, the sync keys of `ids`
    that are free, a stamp. The caller reads next (its snapshot after the keys are
    held), then rolls back to the savepoint (RELEASE_READ_KEY), so writers of the rows
    never wait for Elasticsearch."""
    params = {"entity": entity.name, "ids": list(ids)}
    async with conn.pipeline():
        await conn.execute(query("row_security_off"))  # a hidden row raises (sync.py)
        await conn.execute(query("lock_publish_shared"), params)
        await conn.execute(READ_SAVEPOINT)
        lock = await conn.execute(query("try_lock_entities"), params)
        stamp = await conn.execute(query("sync_stamp"), params)
    locked = [str(row[0]) for row in await lock.fetchall()]
    stamped = await stamp.fetchone()
    assert stamped is not None
    return locked, Stamp(int(stamped[0]), tuple(stamped[1]))


async def _sync_locked(
    conn: psycopg.AsyncConnection[Any], search: SearchIndex, entity: Entity, ids: Sequence[str]
) -> dict[str, Any]:
    """One round: sync the rows of `ids` whose key is free, in one read and one
    `_bulk`; their outcomes."""
    async with conn.transaction():  # holds the publish key until written
        locked, stamp = await _lock_many(conn, entity, ids)
        rows, unread = await _read_chunk(conn, entity, locked, search.alias(entity))
        await conn.execute(RELEASE_READ_KEY)
        unread_ids = {failure.write.entity_id for failure in unread}
        readable = [entity_id for entity_id in locked if entity_id not in unread_ids]
        writes, refused = writes_for(search, entity, stamp, readable, rows)
        failures = await write_all(search, writes, stamp.version, rows)
    refusals: dict[str, list[ItemFailure]] = defaultdict(list)
    for failure in failures:
        refusals[failure.write.entity_id].append(failure)
    reasons = {failure.write.entity_id: failure.reason for failure in [*unread, *refused]}
    outcomes: dict[str, Any] = {}
    for entity_id in locked:
        error = failure_error(refusals.get(entity_id, []), f"{entity.name} {entity_id}")
        if error is None and entity_id in reasons:
            error = PermanentError(reasons[entity_id])
        outcomes[entity_id] = error or ("indexed" if entity_id in rows else "deleted")
    return outcomes


async def sync_rows(
    pool: AsyncConnectionPool[Any],
    search: SearchIndex,
    entity: Entity,
    ids: Sequence[str],
    patience: float = 10.0,
) -> dict[str, Any]:
    """Bring the documents of `ids` in line with their rows: each id's outcome, a
    result ("indexed", "deleted") or the error its job ends with. An error that
    concerns them all (Elasticsearch down, the table unreadable) is raised."""
    if len(ids) == 1:
        return {ids[0]: await sync_entity(pool, search, entity, ids[0], patience)}
    return await sync_many(pool, search, entity, ids, patience)


async def sync_many(
    pool: AsyncConnectionPool[Any],
    search: SearchIndex,
    entity: Entity,
    ids: Sequence[str],
    patience: float = 10.0,
) -> dict[str, Any]:
    """`sync_rows` with one read and one `_bulk` however few the ids: an error of one
    row is its outcome, never raised."""
    await search.ensure_index(entity)
    await search.wait_for_room([search.alias(entity)])  # before any lock is taken
    outcomes: dict[str, Any] = {}
    waiting = list(dict.fromkeys(ids))
    give_up_at = time.monotonic() + patience
    async with pool.connection() as conn:
        for attempt in itertools.count():
            round_outcomes = await _sync_locked(conn, search, entity, waiting)
            outcomes.update(round_outcomes)
            waiting = [entity_id for entity_id in waiting if entity_id not in round_outcomes]
            if not waiting:
                break
            if time.monotonic() > give_up_at:
                outcomes.update({i: still_written(entity, i, patience) for i in waiting})
                break
            await wait_for_writers(attempt)
    return outcomes


def register(app: ProcqueueApp) -> None:
    """`<entity>:create|update|delete` for every entity: one processor, three names
    (procqueue/search/jobs.py), batched per entity."""
    for entity in app.services.entities.entities:
        _register_entity(app, entity)


def _register_entity(app: ProcqueueApp, entity: Entity) -> None:
    settings = app.services.settings
    # Wait for an open writer at most a third of the job timeout; then postpone
    # the job instead of failing it: a long user transaction (an admin's
    # open SQL session) must not use up this job's retries and leave it stale.
    patience = settings.job_timeout / 3
    specs = [row_job(entity, operation) for operation in ROW_OPERATIONS.values()]
    batch_size = settings.section(SearchSettings).sync_batch_size
    family = BatchSpec(tuple(spec.task_name for spec in specs), "id", batch_size)
    batches = Batches(lambda: app.pool, family)

    async def sync_ids(ids: Sequence[str]) -> dict[str, Any]:
        return await sync_rows(app.pool, search_index(app.services), entity, ids, patience)

    async def sync(context: JobContext, id: str) -> Any:
        return await batches.run(context, id, sync_ids)

    for spec in specs:
        app.task_of(spec, pass_context=True)(sync)
