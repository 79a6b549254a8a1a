"""No work without an owner (invariant 11): a fetch or a claim whose answer is lost
after its commit leaves jobs `doing` under a live worker that never saw them. That
worker releases them (no attempt spent) once the database answers again, and a job
`doing` longer than its timeout plus the stalled timeout is taken back by the
rescue whoever holds it; the reconciliation does not count such a job as covering
its row."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg

from procqueue.entities import LISTING
from procqueue.queue.maintenance import rescue_stalled_jobs
from procqueue.search.reconcile import without_pending_sync
from tests.conftest import make_settings
from tests.support.pg_proxy import FETCH_MARKER, answer_losing_proxy
from tests.support.worker import (
    app_with,
    clear_queue,
    eventually,
    indexed_documents,
    insert_listings,
    row_jobs_instead,
    running_worker,
    table_documents,
)

#: The module's tests write one set of indexes: each compares them with the tables.
INDEX_PREFIX = f"t{uuid.uuid4().hex[:8]}_"
FAST_STALL: dict[str, Any] = {
    "stalled_timeout": 1.5,
    "heartbeat_interval": 0.3,
    "index_prefix": INDEX_PREFIX,
}


async def listing_jobs(db: psycopg.AsyncConnection[Any]) -> list[tuple[Any, ...]]:
    """(status, attempts, postponement reason) of every listing job."""
    cursor = await db.execute(
        "SELECT j.status::text, j.attempts, p.reason FROM procrastinate.procrastinate_jobs AS j"
        " LEFT JOIN procqueue.job_postponements AS p ON p.job_id = j.id"
        " WHERE j.task_name LIKE 'listing:%' ORDER BY j.id"
    )
    return await cursor.fetchall()


async def last_worker(db: psycopg.AsyncConnection[Any]) -> int:
    cursor = await db.execute(
        "SELECT coalesce(max(id), 0) FROM procrastinate.procrastinate_workers"
    )
    return int((await cursor.fetchone() or (0,))[0])


async def test_a_fetch_whose_answer_was_lost_is_released_by_its_live_worker(
    database: str, db: psycopg.AsyncConnection[Any], es_url: str
) -> None:
    await clear_queue(database)
    async with answer_losing_proxy(database) as proxy:
        settings = make_settings(proxy.proxied_dsn, es_url, sync_batch_size=1, **FAST_STALL)
        before = await last_worker(db)
        async with app_with(settings) as app, running_worker(app):

            async def started() -> bool:  # its start checks, which name the fetch, are over
                return await last_worker(db) > before

            await eventually(started)
            proxy.lose_answers_to(FETCH_MARKER, with_rows=True)
            [listing_id] = await insert_listings(db, 1, "fetched, answer lost")

            async def synced() -> bool:
                return [status for status, _, _ in await listing_jobs(db)] == ["succeeded"]

            await eventually(synced, timeout=30)
        assert proxy.lost == 1
        [(_, attempts, reason)] = await listing_jobs(db)
        assert attempts == 1  # released with no attempt spent, then run once
        assert reason is not None and "lost the answer" in reason
        documents = await indexed_documents(app, LISTING)
        assert documents[listing_id]["title"] == "fetched, answer lost"


async def test_a_claim_whose_answer_was_lost_is_released_and_every_row_converges(
    database: str, db: psycopg.AsyncConnection[Any], es_url: str
) -> None:
    """A micro-batch's claim commits 20 jobs for the worker and its answer is lost:
    the worker releases them and every row reaches the index; nothing stays doing."""
    await clear_queue(database)
    ids = await insert_listings(db, 21, "claimed, answer lost")
    await row_jobs_instead(database, ids)  # row jobs: what micro-batches claim
    async with answer_losing_proxy(database) as proxy:
        settings = make_settings(proxy.proxied_dsn, es_url, **FAST_STALL)
        async with app_with(settings) as app:
            proxy.lose_answers_to(b"jsonb_typeof(jobs.args -> ", with_rows=True)
            # One slot: the fetch takes one job, whose claim takes the other 20.
            async with running_worker(app, concurrency=1):

                async def drained() -> bool:
                    statuses = {status for status, _, _ in await listing_jobs(db)}
                    return statuses == {"succeeded"}

                await eventually(drained, timeout=30)
            assert proxy.lost == 1
            assert await indexed_documents(app, LISTING) == await table_documents(database, LISTING)
        released = [reason for _, _, reason in await listing_jobs(db) if reason]
        assert released and all("lost the answer" in reason for reason in released)


async def test_a_job_running_past_its_timeout_is_rescued_under_a_live_worker(
    database: str, db: psycopg.AsyncConnection[Any], es_url: str
) -> None:
    """A job `doing` for longer than PROCQUEUE_JOB_TIMEOUT + PROCQUEUE_STALLED_TIMEOUT
    under a worker that still heartbeats is taken back by the rescue, its attempt
    recorded as JobOverran; until then the reconciliation counts it as covering its
    row, after that it does not."""
    await clear_queue(database)
    settings = make_settings(database, es_url, job_timeout=1, **FAST_STALL)
    [listing_id] = await insert_listings(db, 1, "held by a worker that forgot it")
    await row_jobs_instead(database, [listing_id])
    await db.execute(
        "WITH live AS (INSERT INTO procrastinate.procrastinate_workers (last_heartbeat)"
        " VALUES (now()) RETURNING id)"
        " UPDATE procrastinate.procrastinate_jobs SET status = 'doing',"
        " worker_id = (SELECT id FROM live) WHERE lock = %s",
        [f"listing:{listing_id}"],
    )
    async with app_with(settings) as app:
        async with app.pool.connection() as conn:
            assert await without_pending_sync(conn, LISTING, [listing_id], 2.5) == []
        assert (await rescue_stalled_jobs(app)).retried == []  # not overrun yet
        await db.execute(
            "UPDATE procrastinate.procrastinate_events SET at = at - interval '1 minute'"
            " WHERE type = 'started' AND job_id IN (SELECT id FROM"
            " procrastinate.procrastinate_jobs WHERE lock = %s)",
            [f"listing:{listing_id}"],
        )
        async with app.pool.connection() as conn:
            assert await without_pending_sync(conn, LISTING, [listing_id], 2.5) == [listing_id]
        report = await rescue_stalled_jobs(app)
        assert len(report.retried) == 1
        errors = await (
            await db.execute(
                "SELECT error_type, final FROM procqueue.job_errors WHERE job_id = %s",
                [report.retried[0]],
            )
        ).fetchall()
        assert errors == [("procqueue.queue.maintenance.JobOverran", False)]
        async with running_worker(app):

            async def synced() -> bool:
                return [status for status, _, _ in await listing_jobs(db)] == ["succeeded"]

            await eventually(synced, timeout=20)
