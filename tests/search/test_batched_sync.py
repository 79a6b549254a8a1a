"""Micro-batched row sync (procqueue/queue/batch.py, procqueue/search/batched.py): a
burst of row jobs of one entity is written in few `_bulk` requests, while every job
stays a job of its own: its lock and order, its outcome, its error record, its rescue."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import statistics
import sys
import uuid
from typing import Any

import psycopg
import pytest
from procrastinate.jobs import Status
from psycopg import sql
from psycopg.types.json import Jsonb

from procqueue.engine.app import ProcqueueApp
from procqueue.entities import LISTING
from procqueue.features import Settings
from procqueue.queue.batch import BatchSpec, claim_jobs_like
from procqueue.queue.finishing import Finisher
from procqueue.queue.queries import query
from procqueue.search.client import search_index
from procqueue.search.jobs import drain_job
from tests.conftest import make_settings
from tests.support.proxy import TcpProxy
from tests.support.worker import (
    SELLER_ID,
    clear_queue,
    drain,
    eventually,
    indexed_documents,
    insert_listings,
    job_counts,
    row_jobs_instead,
    running_worker,
    strict_target_without_location,
    table_documents,
    waiting_changes,
)
from tests.support.worker import app_with as app_on

BURST = 120
BATCH = 25
ROW_TASKS = ("listing:create", "listing:update", "listing:delete")
RESCUE: dict[str, Any] = {"heartbeat_interval": 0.5, "stalled_timeout": 2.0, "rescue_interval": 1}
# Every app of this module writes the same indexes, so that each test can compare
# the whole table with the whole index, whichever ran before.
INDEX_PREFIX = f"t{uuid.uuid4().hex[:8]}_"


@pytest.fixture(scope="module")
def settings(database: str, es_url: str) -> Settings:
    return make_settings(database, es_url, index_prefix=INDEX_PREFIX)


def app_with(
    database: str, es_url: str, **overrides: Any
) -> contextlib.AbstractAsyncContextManager[ProcqueueApp]:
    return app_on(make_settings(database, es_url, index_prefix=INDEX_PREFIX, **overrides))


async def add_row_jobs(database: str, task_name: str, ids: list[str]) -> None:
    """One row job per id, as the triggers enqueue them (their lock and queueing lock)."""
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        for listing_id in ids:
            await conn.execute(
                "SELECT procqueue.add_job(%s, jsonb_build_object('id', %s::text), 'sync', %s, %s)",
                [task_name, listing_id, f"listing:{listing_id}", f"listing:{listing_id}"],
            )


async def listings_with_row_jobs(
    db: psycopg.AsyncConnection[Any], database: str, count: int, title: str
) -> list[str]:
    """`count` new listings, each with a `listing:create` row job instead of its change
    (row jobs are what a row the drain could not sync, a REPEATABLE READ writer or
    `verify --repair` make: the jobs micro-batches serve)."""
    ids = await insert_listings(db, count, title)
    await row_jobs_instead(database, ids, "listing:create")
    return ids


async def row_job_states(database: str, ids: list[str]) -> dict[str, tuple[str, int]]:
    """(status, attempts) of the row job of each listing id."""
    async with await psycopg.AsyncConnection.connect(database) as conn:
        cursor = await conn.execute(
            "SELECT args ->> 'id', status::text, attempts FROM procrastinate.procrastinate_jobs "
            "WHERE task_name = ANY(%s) AND args ->> 'id' = ANY(%s)",
            [list(ROW_TASKS), ids],
        )
        return {row[0]: (row[1], row[2]) for row in await cursor.fetchall()}


async def event_timelines(database: str) -> set[tuple[str, ...]]:
    """The distinct event sequences of the jobs in the queue."""
    async with await psycopg.AsyncConnection.connect(database) as conn:
        cursor = await conn.execute(
            "SELECT array_agg(e.type::text ORDER BY e.id) FROM procrastinate.procrastinate_events"
            " AS e GROUP BY e.job_id"
        )
        return {tuple(row[0]) for row in await cursor.fetchall()}


@pytest.mark.parametrize("batch_size", [1, BATCH])
async def test_a_burst_is_written_in_fewer_bulk_requests_than_jobs(
    database: str, db: psycopg.AsyncConnection[Any], proxy: TcpProxy, batch_size: int
) -> None:
    await clear_queue(database)
    ids = await listings_with_row_jobs(db, database, BURST, f"burst {batch_size}")
    async with app_with(database, proxy.url, sync_batch_size=batch_size) as app:
        await search_index(app.services).ensure_index(LISTING)
        before = proxy.count("/_bulk")
        await drain(app, concurrency=4)
        requests = proxy.count("/_bulk") - before
        assert await indexed_documents(app, LISTING) == await table_documents(database, LISTING)
    states = await row_job_states(database, ids)
    assert set(states.values()) == {("succeeded", 1)} and len(states) == BURST
    # Procrastinate's own events, as for jobs it fetched and finished itself.
    assert await event_timelines(database) == {("deferred", "started", "succeeded")}
    if batch_size == 1:
        assert requests == BURST  # one `_bulk` a job: the count is right
    else:
        # Per turn: the leader's own row, then one `_bulk` for the jobs it claimed.
        assert requests <= BURST // 4, requests


async def test_claim_keeps_procrastinates_lock_rules_and_order(
    app: ProcqueueApp, database: str
) -> None:
    """Of jobs sharing a lock only the earliest is taken, and none while one runs; a
    job whose lock has an earlier job due later waits too; oldest first; only the
    family's tasks, with args that are one string id."""
    await clear_queue(database)
    spec = BatchSpec(ROW_TASKS, "id", 50)
    hot, late = str(uuid.uuid4()), str(uuid.uuid4())
    free = [str(uuid.uuid4()) for _ in range(3)]
    worker_id = await app.job_manager.register_worker()
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:

        async def add(task: str, args: dict[str, Any], lock: str | None, delay: float = 0) -> int:
            cursor = await conn.execute(
                "SELECT procqueue.add_job(%s, %s, 'sync', %s, NULL, "
                "now() + make_interval(secs => %s))",
                [task, Jsonb(args), lock, delay],
            )
            row = await cursor.fetchone()
            assert row is not None
            return int(row[0])

        first = await add("listing:update", {"id": hot}, f"listing:{hot}")
        second = await add("listing:update", {"id": hot}, f"listing:{hot}")
        others = [await add("listing:create", {"id": key}, f"listing:{key}") for key in free]
        await add("listing:update", {"id": late}, f"listing:{late}", delay=3600)
        await add("listing:delete", {"id": late}, f"listing:{late}")  # behind the one due later
        await add("listing:update", {"id": "x", "extra": 1}, None)  # not one string key
        await add("inventory:update", {"id": free[0]}, f"inventory:{free[0]}")  # other family

    claimed = await claim_jobs_like(app.pool, spec, "sync", worker_id, 2)
    assert [job.id for job in claimed] == [first, others[0]]  # oldest first, no more than asked
    claimed += await claim_jobs_like(app.pool, spec, "sync", worker_id, 50)
    assert [job.id for job in claimed] == [first, *others]
    assert {(job.status, job.worker_id) for job in claimed} == {("doing", worker_id)}
    # `second` waits while `first` runs, even for another claim.
    assert await claim_jobs_like(app.pool, spec, "sync", worker_id, 50) == []
    await app.job_manager.finish_job(claimed[0], status=Status.SUCCEEDED, delete_job=False)
    again = await claim_jobs_like(app.pool, spec, "sync", worker_id, 50)
    assert [job.id for job in again] == [second]
    await clear_queue(database)


WAITING = 3000


def _rows_of_waiting_jobs_read(plan: dict[str, Any]) -> int:
    """The rows the claim's scan of waiting jobs returned (its first scan of the jobs
    table in the candidate CTE), from EXPLAIN ANALYZE's JSON."""
    nodes = [plan]
    while nodes:
        node = nodes.pop(0)
        if node.get("Relation Name") == "procrastinate_jobs" and node.get("Alias") == "jobs_1":
            return int(node["Actual Rows"])
        nodes += node.get("Plans", [])
    raise AssertionError("no scan of the waiting jobs in the claim's plan")


async def test_a_claim_reads_no_more_waiting_jobs_than_it_takes(database: str) -> None:
    """At a backlog that ANALYZE has not seen (the statistics of an empty table, as
    autovacuum leaves them after a quiet night) a claim walks Procrastinate's index of
    waiting jobs in order and stops at its limit, instead of testing and sorting every
    waiting job: one claim per batch, so reading the whole backlog each time made a
    drain quadratic."""
    await clear_queue(database)
    params = {"queue": "sync", "task_names": list(ROW_TASKS), "key_arg": "id",
              "limit": 10, "worker_id": None}  # fmt: skip
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        await conn.execute("VACUUM ANALYZE procrastinate.procrastinate_jobs")
        await conn.execute(
            "INSERT INTO procrastinate.procrastinate_jobs (queue_name, task_name, lock, "
            "queueing_lock, args) SELECT 'sync', 'listing:update', 'listing:' || u, "
            "'listing:' || u, jsonb_build_object('id', u::text) "
            "FROM (SELECT gen_random_uuid()::text AS u FROM generate_series(1, %s)) AS s",
            [WAITING],
        )
        read = {}
        for walked in (False, True):
            async with conn.transaction(force_rollback=True):
                if walked:
                    await conn.execute(query("walk_jobs_in_fetch_order"))
                cursor = await conn.execute(
                    sql.SQL("EXPLAIN (ANALYZE, FORMAT JSON) ") + query("claim_jobs_like"),
                    params,
                )
                row = await cursor.fetchone()
                assert row is not None
                read[walked] = _rows_of_waiting_jobs_read(row[0][0]["Plan"])
    assert read[True] <= 10, read
    assert read[False] == WAITING, read  # what the planner does unguided: the test can fail
    await clear_queue(database)


async def test_hot_rows_under_concurrent_writers_end_at_their_newest_state(
    app: ProcqueueApp, database: str, db: psycopg.AsyncConnection[Any]
) -> None:
    """Jobs of one row never run together and a newer state is never overwritten by
    an older one, with batches claimed by many concurrent turns."""
    await clear_queue(database)
    hot = await insert_listings(db, 5, "hot")

    async def writer(seed: int) -> None:
        async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
            for step in range(60):
                await conn.execute(
                    "UPDATE listings SET title = %s, budget = %s WHERE id = %s",
                    [f"w{seed} s{step}", step, hot[(seed + step) % len(hot)]],
                )

    async with running_worker(app, concurrency=6):
        await asyncio.gather(*(writer(seed) for seed in range(3)))
    await drain(app, concurrency=6)
    assert await indexed_documents(app, LISTING) == await table_documents(database, LISTING)
    counts = await job_counts(database)  # no job waits or failed; drains left for the log
    assert set(counts) <= {"succeeded"}, counts


async def test_a_refused_item_fails_only_its_own_job_with_its_error_recorded(
    app: ProcqueueApp, database: str, db: psycopg.AsyncConnection[Any]
) -> None:
    """A reindex target whose strict mapping lacks `location` refuses the one listing
    of the batch that has a location: that job fails with Elasticsearch's reason; the
    other jobs of its batch succeed."""
    await clear_queue(database)
    await search_index(app.services).ensure_index(LISTING)
    async with strict_target_without_location(app, db) as target:
        ids = await insert_listings(db, 30, "refused")
        await db.execute("UPDATE listings SET location = 'İzmir' WHERE id = %s", [ids[7]])
        await clear_queue(database)  # one job per row, the update's coalesced or not
        await add_row_jobs(database, "listing:update", ids)
        await drain(app, concurrency=1)
    states = await row_job_states(database, ids)
    assert states.pop(ids[7]) == ("failed", 1)
    assert set(states.values()) == {("succeeded", 1)}
    async with await psycopg.AsyncConnection.connect(database) as conn:
        cursor = await conn.execute(
            "SELECT j.args ->> 'id', e.error_type, e.message, e.final "
            "FROM procqueue.job_errors AS e JOIN procrastinate.procrastinate_jobs AS j "
            "ON j.id = e.job_id"
        )
        errors = await cursor.fetchall()
    assert len(errors) == 1
    [(entity_id, error_type, message, final)] = errors
    assert (entity_id, error_type, final) == (ids[7], "procqueue.errors.PermanentError", True)
    assert f"listing {ids[7]}" in message and target in message and "strict" in message
    # The alias maps location: every row is there, the refused one included.
    assert await indexed_documents(app, LISTING) == await table_documents(database, LISTING)


async def test_an_error_of_the_whole_batch_is_recorded_for_each_job_with_its_own_traceback(
    fresh_database: str, es_url: str
) -> None:
    """The batch's rows cannot be read (a column the document needs is gone): every
    job fails with that error, and each record's traceback is that job's, not a pile
    of the others'. Raising one exception object in every job of a batch used to add
    each job's frames to it: the 30th record held 30 jobs' frames, and formatting
    them took a worker a core once batches were large and failing."""
    database = fresh_database
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        await conn.execute("ALTER TABLE public.listings RENAME COLUMN title TO headline")
    ids = [str(uuid.uuid4()) for _ in range(30)]
    await add_row_jobs(database, "listing:update", ids)
    async with app_with(database, es_url) as app:
        await drain(app, concurrency=1)
    states = await row_job_states(database, ids)
    assert set(states.values()) == {("failed", 1)}
    async with await psycopg.AsyncConnection.connect(database) as conn:
        cursor = await conn.execute("SELECT message, traceback FROM procqueue.job_errors")
        errors = await cursor.fetchall()
    assert len(errors) == 30
    assert all("title" in message for message, _ in errors)
    frames = [trace.count('\n  File "') for _, trace in errors]
    assert max(frames) - min(frames) <= 5, frames  # the leader raised it from elsewhere


async def test_idle_queue_runs_a_single_job_at_once(
    app: ProcqueueApp, database: str, db: psycopg.AsyncConnection[Any]
) -> None:
    """No waiting to fill a batch: with nothing else queued, each single write is
    indexed about as soon as it commits (median well under a second; the emulator
    alone can stall ~0.45 s while it saves its state): its drain job runs at once."""
    await clear_queue(database)
    await search_index(app.services).ensure_index(LISTING)
    latencies = []
    async with running_worker(app, concurrency=10):
        await eventually(lambda: _worker_listening(database), timeout=10)
        for number in range(5):
            written = await (
                await db.execute(
                    "INSERT INTO listings (user_id, title) VALUES (%s, %s) RETURNING now()",
                    [SELLER_ID, f"idle {number}"],
                )
            ).fetchone()
            assert written is not None

            async def done() -> bool:
                return not await waiting_changes(db, LISTING) and await _drains_todo(db) == 0

            await eventually(done, timeout=10, interval=0.01)
            latencies.append(await _write_to_success(database, written[0]))
    assert statistics.median(latencies) < 0.3, latencies


async def _drains_todo(db: psycopg.AsyncConnection[Any]) -> int:
    cursor = await db.execute(
        "SELECT count(*) FROM procrastinate.procrastinate_jobs"
        " WHERE lock = %s AND status IN ('todo', 'doing')",
        [drain_job(LISTING).task_name],
    )
    row = await cursor.fetchone()
    return int(row[0]) if row else 0


async def _worker_listening(database: str) -> bool:
    async with await psycopg.AsyncConnection.connect(database) as conn:
        cursor = await conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE query ILIKE 'LISTEN%%'"
            " AND datname = current_database()"
        )
        row = await cursor.fetchone()
    return bool(row and row[0])


async def _write_to_success(database: str, written_at: Any) -> float:
    """Seconds from a write's transaction to the end of the newest drain job that
    succeeded (it left for the log of first-attempt successes), both stamped by Postgres."""
    async with await psycopg.AsyncConnection.connect(database) as conn:
        cursor = await conn.execute(
            "SELECT extract(epoch FROM max(f.finished_at) - %s)"
            " FROM procqueue.finished_attempts AS f WHERE f.task_name = %s",
            [written_at, drain_job(LISTING).task_name],
        )
        row = await cursor.fetchone()
    assert row is not None and row[0] is not None
    return float(row[0])


async def test_a_batch_of_a_killed_worker_is_rescued_job_by_job(
    database: str, db: psycopg.AsyncConnection[Any], es_url: str, proxy: TcpProxy
) -> None:
    """A worker SIGKILLed while its batch waits on Elasticsearch leaves every job of
    the batch `doing` under its id: the stalled-job rescue retries each one, and
    they all end indexed on their second attempt."""
    await clear_queue(database)
    ids = await listings_with_row_jobs(db, database, 12, "stalled")
    proxy.stall()  # the batch's requests are accepted and never answered
    victim = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.support.worker_process",
        env={
            **os.environ,
            "PROCQUEUE_DATABASE_URL": database,
            "ELASTICSEARCH_URL": proxy.url,
            "PROCQUEUE_MAINTENANCE_TASKS": "false",
            "PROCQUEUE_LISTEN_NOTIFY": "false",
            "PROCQUEUE_CONCURRENCY": "1",
            "PROCQUEUE_SYNC_BATCH_SIZE": "50",
            "PROCQUEUE_ELASTICSEARCH_TIMEOUT": "120",
            "PROCQUEUE_JOB_TIMEOUT": "120",
            **{f"PROCQUEUE_{key.upper()}": str(value) for key, value in RESCUE.items()},
        },
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:

        async def all_taken() -> bool:
            states = await row_job_states(database, ids)
            return [state for state, _ in states.values()].count("doing") == len(ids)

        await eventually(all_taken, timeout=30)
    finally:
        victim.send_signal(signal.SIGKILL)
        await victim.wait()
    async with await psycopg.AsyncConnection.connect(database) as conn:
        cursor = await conn.execute(
            "SELECT count(DISTINCT worker_id) FROM procrastinate.procrastinate_jobs"
            " WHERE status = 'doing'"
        )
        assert await cursor.fetchone() == (1,)  # one worker's one turn holds them all
    async with app_with(database, es_url, maintenance_tasks=True, **RESCUE) as rescuer:
        async with running_worker(rescuer):

            async def all_done() -> bool:
                states = await row_job_states(database, ids)
                return set(states.values()) == {("succeeded", 2)}

            await eventually(all_done, timeout=30)
        assert await indexed_documents(rescuer, LISTING) == await table_documents(database, LISTING)
    async with await psycopg.AsyncConnection.connect(database) as conn:
        cursor = await conn.execute(
            "SELECT count(DISTINCT job_id) FROM procqueue.job_errors"
            " WHERE error_type LIKE '%%WorkerLost' AND transient AND NOT final"
        )
        assert await cursor.fetchone() == (len(ids),)


async def test_jobs_ending_together_are_finished_in_one_statement_or_else_one_by_one(
    app: ProcqueueApp, database: str
) -> None:
    """The Finisher saves jobs ending in the same turn with one call of Procrastinate's
    finish function per job; when one of them is no longer running, the others are
    still finished and that one alone meets Procrastinate's refusal."""
    await clear_queue(database)
    worker_id = await app.job_manager.register_worker()
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        for number in range(3):
            await conn.execute(
                "SELECT procqueue.add_job('listing:update', jsonb_build_object('id', %s::text),"
                " 'sync')",
                [f"finish-{number}"],
            )
    spec = BatchSpec(ROW_TASKS, "id", 10)
    jobs = await claim_jobs_like(app.pool, spec, "sync", worker_id, 10)
    assert len(jobs) == 3
    finisher = Finisher(
        lambda: app.pool,
        lambda job, status, delete: app.job_manager.finish_job(
            job=job, status=status, delete_job=delete
        ),
    )
    # jobs[2] was finished meanwhile by someone else (as after a rescue): no longer running.
    await app.job_manager.finish_job(jobs[2], status=Status.FAILED, delete_job=False)
    results = await asyncio.gather(
        *(finisher.finish(job, Status.SUCCEEDED, False) for job in jobs), return_exceptions=True
    )
    assert results[:2] == [None, None]
    refusal = results[2]
    assert isinstance(refusal, Exception)
    assert "Job was not found" in str(refusal.__cause__ or refusal)
    async with await psycopg.AsyncConnection.connect(database) as conn:
        cursor = await conn.execute(
            "SELECT id, status::text, attempts FROM procrastinate.procrastinate_jobs ORDER BY id"
        )
        rows = await cursor.fetchall()
    assert [(status, attempts) for _, status, attempts in rows] == [
        ("succeeded", 1), ("succeeded", 1), ("failed", 1),
    ]  # fmt: skip
    assert await event_timelines(database) >= {("deferred", "started", "succeeded")}
    await clear_queue(database)
