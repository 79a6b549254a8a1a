"""Helpers to run workers and read what they produced."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import psycopg
from elasticsearch import helpers

from procqueue.app import build_app
from procqueue.engine.app import ProcqueueApp
from procqueue.entities import LISTING, Entity
from procqueue.features import Settings
from procqueue.search.client import search_index
from procqueue.search.document import document_from_row
from procqueue.search.sync import entity_query

#: The user owning the rows tests write (inserted by the `db` fixture).
SELLER_ID = "00000000-0000-4000-8000-0000000000aa"
QUIET: dict[str, Any] = {"install_signal_handlers": False}


async def drain(app: ProcqueueApp, **options: Any) -> None:
    """Run a worker until no job is left to run now, including the jobs its jobs made
    (a drain's row job for a row it could not sync): Procrastinate's worker with
    `wait=False` stops at the first fetch that finds nothing, even while a job runs."""
    queues = options.get("queues")
    due = -1
    for _ in range(10):
        await app.run_worker_async(wait=False, listen_notify=False, **{**QUIET, **options})
        before, due = due, await _jobs_due(app, queues)
        if not due or due == before:
            return


async def _jobs_due(app: ProcqueueApp, queues: list[str] | None) -> int:
    async with app.pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT count(*) FROM procrastinate.procrastinate_jobs WHERE status = 'todo'"
            " AND (scheduled_at IS NULL OR scheduled_at <= now())"
            " AND (%(queues)s::text[] IS NULL OR queue_name = ANY(%(queues)s))",
            {"queues": queues},
        )
        row = await cursor.fetchone()
    return int(row[0]) if row else 0


@contextlib.asynccontextmanager
async def running_worker(app: ProcqueueApp, **options: Any) -> AsyncIterator[asyncio.Task[None]]:
    """A worker waiting for jobs (LISTEN/NOTIFY) for the duration of the block."""
    task = asyncio.create_task(app.run_worker_async(wait=True, **{**QUIET, **options}))
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def clear_queue(database: str) -> None:
    """Forget earlier tests' jobs and waiting changes, so that counts are this test's."""
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        await conn.execute("DELETE FROM procrastinate.procrastinate_jobs")
        await conn.execute("DELETE FROM procqueue.sync_changes")
        await conn.execute("DELETE FROM procqueue.finished_attempts")


async def row_jobs_instead(database: str, ids: list[str], task: str = "listing:update") -> None:
    """Replace the waiting changes of these listings (and the drain jobs) with one row
    job each, locked as the drain hands them over: for tests of row jobs (made for a
    row a drain could not sync, a REPEATABLE READ writer, `verify --repair`)."""
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        await conn.execute("DELETE FROM procqueue.sync_changes WHERE entity_id = ANY(%s)", [ids])
        await conn.execute(
            "DELETE FROM procrastinate.procrastinate_jobs WHERE task_name = 'listing:drain'"
        )
        for listing_id in ids:
            await conn.execute(
                "SELECT procqueue.add_job(%s, jsonb_build_object('id', %s::text), 'sync', %s, %s)",
                [task, listing_id, f"listing:{listing_id}", f"listing:{listing_id}"],
            )


async def waiting_changes(db: psycopg.AsyncConnection[Any], entity: Entity) -> dict[str, int]:
    """The entity's waiting changes (procqueue.sync_changes): id -> writes counted."""
    cursor = await db.execute(
        "SELECT entity_id, changes FROM procqueue.sync_changes WHERE entity = %s", [entity.name]
    )
    return {str(entity_id): int(changes) for entity_id, changes in await cursor.fetchall()}


async def eventually(
    check: Callable[[], Awaitable[bool]], timeout: float = 20.0, interval: float = 0.05
) -> None:
    """Wait until `check()` is true; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


async def job_counts(dsn: str) -> dict[str, int]:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        rows = await (
            await conn.execute(
                "SELECT status::text, count(*) FROM procrastinate.procrastinate_jobs GROUP BY 1"
            )
        ).fetchall()
    return {status: count for status, count in rows}


async def indexed_documents(app: ProcqueueApp, entity: Entity) -> dict[str, dict[str, Any]]:
    """Every document in the entity's index, by id."""
    search = search_index(app.services)
    alias = search.alias(entity)
    if not await search.client.indices.exists_alias(name=alias):
        return {}
    await search.client.indices.refresh(index=alias)
    return {
        hit["_id"]: hit["_source"]
        async for hit in helpers.async_scan(
            search.client, index=alias, query={"query": {"match_all": {}}}
        )
    }


async def table_documents(dsn: str, entity: Entity) -> dict[str, dict[str, Any]]:
    """What the index should hold: a document for every row of the table."""
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cursor = conn.cursor(row_factory=psycopg.rows.dict_row)
        await cursor.execute(entity_query("read_entity_rows", entity))
        rows = await cursor.fetchall()
    return {str(row[entity.primary_key]): document_from_row(entity, row) for row in rows}


async def sink_circuit(dsn: str, sink: str) -> tuple[bool, str] | None:
    """(open?, reason) of a sink's circuit as the workers last recorded it."""
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cursor = await conn.execute(
            "SELECT is_open, reason FROM procqueue.sink_circuits WHERE sink = %s", [sink]
        )
        row = await cursor.fetchone()
    return None if row is None else (bool(row[0]), str(row[1]))


async def job_status(dsn: str, job_id: int) -> str | None:
    """A job's status, or None if there is no such job."""
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cursor = await conn.execute(
            "SELECT status::text FROM procrastinate.procrastinate_jobs WHERE id = %s", [job_id]
        )
        row = await cursor.fetchone()
    return None if row is None else str(row[0])


@contextlib.asynccontextmanager
async def app_with(settings: Settings) -> AsyncIterator[ProcqueueApp]:
    """An app of its own on `settings`, open for the block, its clients closed after."""
    app = build_app(settings)
    try:
        async with app.open_async():
            yield app
    finally:
        await app.services.aclose()


async def insert_listings(db: psycopg.AsyncConnection[Any], count: int, title: str) -> list[str]:
    """`count` single-row INSERT transactions, as users make them (one change each)."""
    ids = [str(uuid.uuid4()) for _ in range(count)]
    for listing_id in ids:
        await db.execute(
            "INSERT INTO listings (id, user_id, title) VALUES (%s, %s, %s)",
            [listing_id, SELLER_ID, title],
        )
    return ids


@contextlib.asynccontextmanager
async def strict_target_without_location(
    app: ProcqueueApp, db: psycopg.AsyncConnection[Any]
) -> AsyncIterator[str]:
    """A reindex target of listings whose strict mapping lacks `location` (say,
    deployed before the column existed): it refuses every listing with a location.
    Syncs write it while the block runs."""
    search = search_index(app.services)
    target = f"{search.alias(LISTING)}_strict"
    mappings = LISTING.mappings()
    del mappings["properties"]["location"]
    await search.client.indices.create(index=target, mappings=mappings)
    await db.execute(
        "INSERT INTO procqueue.search_targets (entity, index_name) VALUES ('listing', %s)",
        [target],
    )
    try:
        yield target
    finally:
        await db.execute("DELETE FROM procqueue.search_targets WHERE index_name = %s", [target])
