"""`<entity>:drain`: sync an entity's waiting changes in batches.

The sync trigger records each changed key of a small statement in
procqueue.sync_changes (one narrow row per key, coalesced while it waits) and makes
the entity's drain job only when none is waiting (sql/triggers/entity_sync.sql).
A drain job, one at a time per entity (its lock), loops until it is done:

1. claim up to PROCQUEUE_BULK_CHUNK_SIZE waiting changes (skipping rows a writer
   holds), for as long as a job may run (a killed worker's claims run out);
2. sync them as a micro-batch does (procqueue/search/batched.py `sync_many`: one
   read, one `_bulk`, external versions);
3. forget the synced changes no write came after (a write during the sync keeps
   its row, which the next claim takes); a row that failed is handed to a row job
   of its own (`<entity>:update`), which retries it with backoff, records every
   attempt's error and alerts on the last, as any job does; so one hostile row
   never holds up the others;
4. with nothing left to claim, end only once no writer that may have relied on
   this job is still in its transaction (the drain key, procqueue.sync_drain_key):
   while one is, it goes on claiming what commits, and after a third of the job
   timeout hands over to a successor job.

Elasticsearch down (or refusing writes under backpressure) postpones the drain job
itself, spending no attempt; its claims go back first. docs/bulk.md, "The write
path", names the races this guards against.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import psycopg
from procrastinate import JobContext
from psycopg_pool import AsyncConnectionPool

from procqueue.engine.app import ProcqueueApp
from procqueue.entities import Entity
from procqueue.errors import SinkUnavailable
from procqueue.queue.jobs import enqueue
from procqueue.search.batched import sync_many
from procqueue.search.client import search_index
from procqueue.search.jobs import drain_job, row_args, row_job
from procqueue.search.queries import query
from procqueue.search.sync import wait_for_writers

logger = logging.getLogger(__name__)

@dataclass
class Drained:
    """What a drain job did: rows synced, rows handed to row jobs, batches."""

    synced: int = 0
    handed_over: int = 0
    batches: int = 0

    def as_result(self) -> dict[str, int]:
        return {"synced": self.synced, "handed_over": self.handed_over, "batches": self.batches}


@dataclass(frozen=True)
class Drain:
    """One drain job's run over `entity`'s changes."""

    pool: AsyncConnectionPool[Any]
    entity: Entity
    job_id: int
    batch_size: int
    lease: float
    patience: float

    def _params(self, **more: Any) -> dict[str, Any]:
        return {"entity": self.entity.name, "job_id": self.job_id, **more}

    async def claim(self) -> dict[str, int]:
        """The claimed changes: id -> how many writes it had when claimed."""
        async with self.pool.connection() as conn:
            params = self._params(limit=self.batch_size, lease=self.lease)
            rows = await (await conn.execute(query("claim_changes"), params)).fetchall()
        return {str(entity_id): int(changes) for entity_id, changes in rows}

    async def release(self) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(query("release_changes"), self._params())

    async def settle(self, claimed: Mapping[str, int], failed: set[str]) -> int:
        """Forget the claimed changes no write came after; hand each failed one among
        them to a row job, in the same transaction. Returns how many were handed."""
        ids = [entity_id for entity_id in claimed]
        params = self._params(ids=ids, changes=[claimed[entity_id] for entity_id in ids])
        async with self.pool.connection() as conn:
            forgotten = await (await conn.execute(query("forget_changes"), params)).fetchall()
            handed = [str(row[0]) for row in forgotten if str(row[0]) in failed]
            spec = row_job(self.entity, "update")
            for entity_id in handed:
                await enqueue(conn, spec, row_args(entity_id), key=entity_id)
            await conn.execute(query("release_changes"), self._params())
        return len(handed)

    async def quiet(self) -> tuple[bool, bool]:
        """(no writer holds the drain key, changes wait to be claimed), the second
        read after the first is settled."""
        params = self._params()
        async with self.pool.connection() as conn:
            async with conn.transaction():
                quiet = await (await conn.execute(query("try_lock_drain"), params)).fetchone()
                waiting = await (await conn.execute(query("changes_waiting"), params)).fetchone()
        return bool(quiet and quiet[0]), bool(waiting and waiting[0])

    async def hand_over(self) -> None:
        """Make sure a drain job waits to go on (this one is still running, so the
        trigger's probe cannot have made one since it started; the engine fetches it
        as soon as this one ends and frees their lock)."""
        async with self.pool.connection() as conn:
            await enqueue_drain(conn, self.entity)


async def enqueue_drain(conn: psycopg.AsyncConnection[Any], entity: Entity) -> None:
    """The entity's drain job, due now, unless one waits already."""
    spec = drain_job(entity)
    await conn.execute(query("enqueue_drain"), {"task": spec.task_name, "queue": spec.queue})


def pressed_ids(outcomes: Mapping[str, Any]) -> set[str]:
    """The ids Elasticsearch refused under backpressure: they wait for the next claim."""
    return {i for i, outcome in outcomes.items() if isinstance(outcome, SinkUnavailable)}


async def run_drain(app: ProcqueueApp, drain: Drain) -> Drained:
    search = search_index(app.services)
    drained = Drained()
    deadline = time.monotonic() + drain.patience
    quiet_tries = 0
    while True:
        claimed = await drain.claim()
        if claimed:
            quiet_tries = 0
            try:
                outcomes = await sync_many(
                    drain.pool, search, drain.entity, list(claimed), drain.patience
                )
            except (Exception, asyncio.CancelledError):  # cancelled too: the job timed out
                with contextlib.suppress(psycopg.Error):  # the database away: claims run out
                    await drain.release()
                raise
            pressed = pressed_ids(outcomes)
            done = {i: n for i, n in claimed.items() if i not in pressed}
            failed = {i for i in done if isinstance(outcomes[i], BaseException)}
            handed = await drain.settle(done, failed)
            drained.batches += 1
            drained.handed_over += handed
            drained.synced += len(done) - len(failed)
            if pressed:
                raise outcomes[min(pressed)]  # they wait for this job, postponed
            if time.monotonic() > deadline:
                await drain.hand_over()
                return drained
            continue
        quiet, waiting = await drain.quiet()
        if quiet and not waiting:
            return drained
        if quiet:
            continue
        if time.monotonic() > deadline:
            await drain.hand_over()
            return drained
        await wait_for_writers(quiet_tries)
        quiet_tries += 1


async def ensure_drain(conn: psycopg.AsyncConnection[Any], entity: Entity) -> bool:
    """Make the entity's drain job when changes wait and no drain job waits or runs
    (the last one failed, or an admin cancelled it); whether one was made."""
    spec = drain_job(entity)
    params = {"entity": entity.name, "task": spec.task_name}
    row = await (await conn.execute(query("drain_missing"), params)).fetchone()
    if not (row and row[0]):
        return False
    await enqueue_drain(conn, entity)
    logger.warning("%s changes waited with no drain job; %s enqueued", entity.name, spec.task_name)
    return True


def register(app: ProcqueueApp) -> None:
    """`<entity>:drain` for every entity."""
    for entity in app.services.entities.entities:
        _register_entity(app, entity)


def _register_entity(app: ProcqueueApp, entity: Entity) -> None:
    settings = app.services.settings

    async def drain(context: JobContext) -> dict[str, int]:
        assert context.job.id is not None
        run = Drain(
            app.pool, entity, context.job.id,
            batch_size=settings.bulk_chunk_size,
            lease=settings.overrun_after,
            patience=settings.job_timeout / 3,
        )  # fmt: skip
        return (await run_drain(app, run)).as_result()

    app.task_of(drain_job(entity), pass_context=True)(drain)
