"""The worker's fetch (procqueue/engine/worker.py, docs/procrastinate.md "Fetching"): one
statement takes a job for every free slot, by the rules of Procrastinate's own fetch
(queues, due time, priority then age, never two jobs of one lock, never a job whose lock
is held); a job waiting for a lock runs as soon as the job holding it ends, not at the
next poll; and the worker's pool replaces connections a restart or a kill left dead
without psycopg_pool's pause of a second or more per dead connection."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from procqueue.app import build_app
from procqueue.engine.connections import FailFastPool
from procqueue.engine.worker import Worker
from tests.conftest import make_settings
from tests.support.worker import eventually, running_worker

TASK = "test:fetched"
QUEUE = "fetch_tests"


async def add_job(
    db: psycopg.AsyncConnection[Any],
    *,
    queue: str = QUEUE,
    lock: str | None = None,
    priority: int = 0,
    status: str = "todo",
    in_future: bool = False,
) -> int:
    cursor = await db.execute(
        "INSERT INTO procrastinate.procrastinate_jobs"
        " (queue_name, task_name, args, lock, priority, status, scheduled_at)"
        " VALUES (%s, %s, '{}', %s, %s, %s, CASE WHEN %s THEN now() + interval '1 hour' END)"
        " RETURNING id",
        [queue, TASK, lock, priority, status, in_future],
    )
    row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


async def test_one_fetch_takes_a_job_for_each_free_slot_by_procrastinates_rules(
    database: str, db: psycopg.AsyncConnection[Any], es_url: str
) -> None:
    await db.execute("DELETE FROM procrastinate.procrastinate_jobs")
    held = f"held-{uuid.uuid4()}"
    running = await add_job(db, lock=held, status="doing")  # runs elsewhere, holds its lock
    first_of_lock = await add_job(db, lock="shared")
    await add_job(db, lock="shared")  # waits for the first of its lock
    urgent = await add_job(db, priority=5)
    await add_job(db, lock=held)  # its lock is held
    await add_job(db, in_future=True)  # not due yet
    other_queue = await add_job(db, queue="elsewhere")
    plain = await add_job(db)
    app = build_app(make_settings(database, es_url))
    async with app.open_async():
        everywhere = app._worker(concurrency=10)
        assert isinstance(everywhere, Worker)
        everywhere.worker_id = await app.job_manager.register_worker()
        # One slot: the highest priority first.
        assert [job.id for job in await everywhere._fetch_jobs(1)] == [urgent]
        # Every other ready job at once, oldest first: one of each lock, none held.
        fetched = await everywhere._fetch_jobs(10)
        assert [job.id for job in fetched] == [first_of_lock, other_queue, plain]
        assert {job.worker_id for job in fetched} == {everywhere.worker_id}
        assert await everywhere._fetch_jobs(10) == []

        await db.execute(
            "UPDATE procrastinate.procrastinate_jobs SET status = 'todo', worker_id = NULL"
            " WHERE id = ANY(%s)",
            [[other_queue, plain]],
        )
        one_queue = app._worker(concurrency=10, queues=[QUEUE])
        assert isinstance(one_queue, Worker)
        one_queue.worker_id = everywhere.worker_id
        assert [job.id for job in await one_queue._fetch_jobs(10)] == [plain]
    cursor = await db.execute(
        "SELECT id FROM procrastinate.procrastinate_jobs WHERE status = 'doing' ORDER BY id"
    )
    assert [row[0] for row in await cursor.fetchall()] == [running, first_of_lock, urgent, plain]


async def test_a_job_waiting_for_a_lock_runs_when_the_job_holding_it_ends(
    database: str, db: psycopg.AsyncConnection[Any], es_url: str
) -> None:
    """No NOTIFY says a lock is free: with a 600 s poll, only the worker noticing that
    the job holding the lock ended runs the next one promptly."""
    await db.execute("DELETE FROM procrastinate.procrastinate_jobs")
    app = build_app(make_settings(database, es_url, polling_interval=600))
    ran: list[int] = []

    @app.task(name=TASK, queue=QUEUE, pass_context=True)
    async def fetched(context: Any) -> None:
        ran.append(context.job.id)
        await asyncio.sleep(0.2)

    lock = f"row-{uuid.uuid4()}"
    first, second = await add_job(db, lock=lock), await add_job(db, lock=lock)
    async with app.open_async(), running_worker(app, concurrency=4):

        async def both_ran() -> bool:
            cursor = await db.execute(
                "SELECT count(*) FROM procrastinate.procrastinate_jobs"
                " WHERE id = ANY(%s) AND status = 'succeeded'",
                [[first, second]],
            )
            row = await cursor.fetchone()
            return row is not None and row[0] == 2

        await eventually(both_ran, timeout=10)
    await app.services.aclose()
    assert ran == [first, second]


async def test_the_worker_pool_replaces_dead_connections_at_once(database: str) -> None:
    """psycopg_pool waits 1 s after a connection fails its check, then 2 s, 4 s...:
    after a restart every idle connection is dead, and a request could stall for
    seconds. The worker's pool checks the next one at once."""
    name = f"pq-pool-test-{uuid.uuid4().hex[:8]}"
    pool = FailFastPool(
        database, min_size=1, max_size=4, open=False, kwargs={"application_name": name},
        check=AsyncConnectionPool.check_connection,
    )  # fmt: skip
    await pool.open(wait=True)
    try:

        async def use() -> None:
            async with pool.connection() as conn:
                await conn.execute("SELECT pg_sleep(0.05)")

        await asyncio.gather(*(use() for _ in range(4)))
        assert pool.get_stats()["pool_available"] == 4
        async with await psycopg.AsyncConnection.connect(database, autocommit=True) as admin:
            cursor = await admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name = %s",
                [name],
            )
            assert (await cursor.fetchone() or [0])[0] == 4
        await asyncio.sleep(0.1)  # the backends are gone

        started = time.monotonic()
        async with pool.connection() as conn:
            await conn.execute("SELECT 1")
        assert time.monotonic() - started < 0.8
    finally:
        await pool.close()
