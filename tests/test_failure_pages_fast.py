"""The overview and the failures page read less at 1,000,000 jobs (migration 0025,
benchmarks/RESULTS.md "Overview and failures at 1,000,000 jobs (issue 25)") and show
the same: the failure groups are those of every failed job's last error, read per job
as before; the failed count per queue leaves discarded jobs out; a health snapshot
read on two connections is the snapshot read on one, and falls back to one."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from procqueue.dashboard import store
from procqueue.queue.health import HealthConfig, Snapshot, read_snapshot
from procqueue.queue.server import HealthSource
from tests.support.history import finished_job
from tests.support.pgbouncer import Pgbouncer

#: The failure groups as the failures page computed them before migration 0025: one
#: probe per failed job for its last error row (the reference the new query must match).
PER_JOB_GROUPS = """
SELECT j.task_name::text AS task_name, coalesce(err.error_type, '') AS error_type,
       count(*) AS jobs, min(err.seen) AS first_seen, max(err.seen) AS last_seen,
       (array_agg(err.message ORDER BY j.id DESC))[1] AS last_message, max(j.id) AS last_job_id
FROM procrastinate.procrastinate_jobs AS j
LEFT JOIN LATERAL (
    SELECT x.error_type, x.message, x.occurred_at FROM procqueue.job_errors AS x
    WHERE x.job_id = j.id ORDER BY x.id DESC LIMIT 1
) AS last ON true
CROSS JOIN LATERAL (
    SELECT last.error_type, last.message,
           coalesce(last.occurred_at, (SELECT max(e.at) FROM procrastinate.procrastinate_events AS e
                                       WHERE e.job_id = j.id AND e.type = 'failed')) AS seen
) AS err
WHERE j.status = 'failed'
  AND NOT EXISTS (SELECT FROM procqueue.discarded_jobs AS d WHERE d.job_id = j.id)
GROUP BY 1, 2
ORDER BY last_seen DESC NULLS LAST, 1, 2
"""

ERROR_INSERT = (
    "INSERT INTO procqueue.job_errors (job_id, attempt, task_name, queue_name, error_type,"
    " message, traceback, transient, final, occurred_at) VALUES (%s, %s, 't', 'q', %s, %s,"
    " 'tb', %s, %s, now() - make_interval(secs => %s))"
)


async def failed_with(
    conn: psycopg.AsyncConnection[Any], task: str, queue: str, errors: list[str], ago: float
) -> int:
    """A job failed for good `ago` seconds ago after one attempt per error type."""
    job = await finished_job(
        conn, task=task, queue=queue, status="failed", ended_ago=ago, seconds=1
    )
    for attempt, error_type in enumerate(errors, start=1):
        last = attempt == len(errors)
        await conn.execute(
            ERROR_INSERT,
            [job, attempt, error_type, f"{error_type} on try {attempt} of job {job}",
             not last, last, ago + len(errors) - attempt],
        )  # fmt: skip
    return job


@pytest.fixture
async def failures(fresh_database: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """Failed jobs of two tasks in two queues: some whose last error differs from the
    earlier ones, one failed with no error recorded, one discarded, and a job that
    failed attempts and then succeeded (not failed: not in any group)."""
    conn = await psycopg.AsyncConnection.connect(fresh_database, autocommit=True)
    await failed_with(conn, "listing:update", "sync", ["Timeout", "Timeout", "Http503"], 900)
    await failed_with(conn, "listing:update", "sync", ["Http503"], 600)
    await failed_with(conn, "listing:update", "sync", ["Http503", "BadRow"], 300)
    await failed_with(conn, "images:cleanup", "images", ["Timeout"], 200)
    await failed_with(conn, "images:cleanup", "images", [], 100)  # no error recorded
    discarded = await failed_with(conn, "images:cleanup", "images", ["BadRow"], 50)
    await conn.execute(
        "INSERT INTO procqueue.discarded_jobs (job_id, actor) VALUES (%s, 'test')", [discarded]
    )
    recovered = await finished_job(
        conn, task="listing:update", queue="sync", status="succeeded", ended_ago=30, seconds=1
    )
    await conn.execute(ERROR_INSERT, [recovered, 1, "Timeout", "gone", True, False, 40])
    yield conn
    await conn.close()


async def test_the_failure_groups_are_every_failed_jobs_last_error(
    failures: psycopg.AsyncConnection[Any],
) -> None:
    cursor = failures.cursor(row_factory=dict_row)
    await cursor.execute(PER_JOB_GROUPS)
    expected = await cursor.fetchall()
    groups = await store.failure_groups(failures)
    assert groups == expected
    by_key = {(g["task_name"], g["error_type"]): g["jobs"] for g in groups}
    assert by_key == {
        ("listing:update", "Http503"): 2,
        ("listing:update", "BadRow"): 1,
        ("images:cleanup", "Timeout"): 1,
        ("images:cleanup", ""): 1,
    }
    assert await store.failed_per_queue(failures) == {"sync": 3, "images": 2}


def timeless(snapshot: Snapshot) -> Snapshot:
    """The snapshot without what depends on the moment its transaction began."""
    return dataclasses.replace(
        snapshot,
        queues=[dataclasses.replace(q, lag_seconds=round(q.lag_seconds)) for q in snapshot.queues],
        workers=[dataclasses.replace(w, heartbeat_age_seconds=0.0) for w in snapshot.workers],
        tables=[],  # sizes and statistics move with the reads themselves
    )


async def test_a_snapshot_on_two_connections_reads_what_one_reads(
    failures: psycopg.AsyncConnection[Any], fresh_database: str
) -> None:
    await failures.execute(
        "INSERT INTO procrastinate.procrastinate_workers (last_heartbeat) VALUES (now())"
    )
    await failures.execute("SELECT procqueue.add_job('listing:update', '{}', 'sync', NULL, NULL)")
    config = HealthConfig(window=timedelta(days=1))
    async with (
        await psycopg.AsyncConnection.connect(fresh_database) as one,
        await psycopg.AsyncConnection.connect(fresh_database) as two,
    ):
        alone = await read_snapshot(one, config)
        split = await read_snapshot(one, config, two)
    assert alone.queues and alone.tasks and alone.workers
    assert timeless(split) == timeless(alone)

    # Through the pool: two connections when a second is free, one when none is.
    for size in (2, 1):
        async with AsyncConnectionPool(fresh_database, min_size=1, max_size=size) as pool:
            pooled = await HealthSource(config, pool).snapshot()
        assert timeless(pooled) == timeless(alone), size


async def test_a_split_snapshot_works_through_the_transaction_pooler(
    failures: psycopg.AsyncConnection[Any], fresh_database: str, pgbouncer: Pgbouncer
) -> None:
    config = HealthConfig(window=timedelta(days=1))
    async with await psycopg.AsyncConnection.connect(fresh_database) as direct:
        alone = await read_snapshot(direct, config)
    pooled = pgbouncer.via(fresh_database)
    # As the dashboard's pool through a pooler: nothing prepared (no session state).
    async with AsyncConnectionPool(
        pooled, min_size=2, max_size=2, kwargs={"prepare_threshold": None}
    ) as pool:
        await pool.wait()
        async with pool.connection() as one, pool.connection() as two:
            split = await read_snapshot(one, config, two)
    assert timeless(split) == timeless(alone)
