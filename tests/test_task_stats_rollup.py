"""Hourly rollups of task stats (migration 0017): the rolled-up hours count what
the events say, long task_stats windows built on them match the live
computation (counts exactly, percentiles within 2 %), rolling up again or
twice at once counts nothing twice, the maintenance tasks keep them current,
and pruning after the rollup keeps them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from procqueue.app import build_app
from procqueue.engine.app import ProcqueueApp
from procqueue.queue.health import roll_up_task_stats
from procqueue.queue.maintenance import RESCUE_TASK, prune
from tests.conftest import make_settings
from tests.support.history import finished_job

JOBS = 1200
# Jobs ending every 97 s over the last ~32 hours, three tasks, durations from
# 0.2 ms to ~22 s on a log scale; every 17th failed for good, every 23rd was
# aborted, every 11th had a retried attempt before (started, deferred_for_retry).
HISTORY = """
CREATE TEMP TABLE history AS
SELECT g,
       now() - make_interval(secs => 120 + g * 97) AS ended_at,
       (ARRAY['listing:update', 'images:cleanup', 'notification:email'])[1 + mod(g, 3)] AS task,
       CASE WHEN mod(g, 17) = 0 THEN 'failed' WHEN mod(g, 23) = 0 THEN 'aborted'
            ELSE 'succeeded' END AS status,
       0.0002 * power(1.013, mod(g, 900)) AS seconds
FROM generate_series(1, JOBS) AS g;

ALTER TABLE history ADD COLUMN id bigint;
UPDATE history SET id = nextval(pg_get_serial_sequence('procrastinate.procrastinate_jobs', 'id'));

INSERT INTO procrastinate.procrastinate_jobs (id, queue_name, task_name, args, status, attempts)
SELECT id, 'q', task, '{}', status::procrastinate.procrastinate_job_status,
       CASE WHEN mod(g, 11) = 0 THEN 2 ELSE 1 END
FROM history;

INSERT INTO procrastinate.procrastinate_events (job_id, type, at)
SELECT h.id, e.type::procrastinate.procrastinate_job_event_type, e.at
FROM history AS h
CROSS JOIN LATERAL (
    VALUES ('deferred', h.ended_at - make_interval(secs => h.seconds + 60)),
           ('started', h.ended_at - make_interval(secs => h.seconds)),
           (h.status, h.ended_at),
           (CASE WHEN mod(h.g, 11) = 0 THEN 'started' END,
            h.ended_at - make_interval(secs => h.seconds + 40)),
           (CASE WHEN mod(h.g, 11) = 0 THEN 'deferred_for_retry' END,
            h.ended_at - make_interval(secs => h.seconds + 39.5 - mod(h.g, 7)))
) AS e (type, at)
WHERE e.type IS NOT NULL;
"""

# What each hour holds, straight from the events (no procqueue function).
REFERENCE = """
SELECT date_trunc('hour', e.at, 'UTC') AS hour, j.task_name::text AS task_name,
       count(*) AS runs,
       count(*) FILTER (WHERE e.type = 'succeeded') AS succeeded,
       count(*) FILTER (WHERE e.type = 'failed') AS failed,
       count(*) FILTER (WHERE e.type = 'deferred_for_retry') AS retries,
       count(*) FILTER (WHERE e.type = 'aborted') AS aborted,
       count(s.at) AS timed,
       max(extract(epoch FROM e.at - s.at))::double precision AS max_seconds
FROM procrastinate.procrastinate_events AS e
JOIN procrastinate.procrastinate_jobs AS j ON j.id = e.job_id
LEFT JOIN LATERAL (
    SELECT max(s.at) AS at FROM procrastinate.procrastinate_events AS s
    WHERE s.job_id = e.job_id AND s.type = 'started' AND s.at <= e.at
) AS s ON true
WHERE e.type IN ('succeeded', 'failed', 'deferred_for_retry', 'aborted')
  AND e.at < %(until)s
GROUP BY 1, 2
ORDER BY 1, 2
"""

ROLLUPS = """
SELECT t.hour, t.task_name, t.runs, t.succeeded, t.failed, t.retries, t.aborted,
       (SELECT sum(n) FROM unnest(t.bucket_counts) AS n) AS timed, t.max_seconds,
       t.buckets, t.bucket_counts
FROM procqueue.task_stats_hourly AS t
ORDER BY 1, 2
"""

COUNTS = ("runs", "succeeded", "failed", "retries", "aborted", "success_rate", "failure_rate")


async def rows(
    conn: psycopg.AsyncConnection[Any], sql: str, params: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    cursor = conn.cursor(row_factory=dict_row)
    await cursor.execute(sql, params)
    return await cursor.fetchall()


async def roll_up(conn: psycopg.AsyncConnection[Any]) -> int:
    row = await (await conn.execute("SELECT procqueue.roll_up_task_stats(10000)")).fetchone()
    assert row is not None
    hours: int = row[0]
    return hours


async def last_rolled_hour_end(conn: psycopg.AsyncConnection[Any]) -> Any:
    row = await (
        await conn.execute("SELECT max(hour) + interval '1 hour' FROM procqueue.task_stats_hours")
    ).fetchone()
    assert row is not None and row[0] is not None
    return row[0]


async def assert_rollups_match_events(conn: psycopg.AsyncConnection[Any]) -> None:
    until = await last_rolled_hour_end(conn)
    reference = await rows(conn, REFERENCE, {"until": until})
    rolled = await rows(conn, ROLLUPS)
    assert len(reference) > 60  # ~30 hours of three tasks
    assert [{k: r[k] for k in reference[0]} for r in rolled] == reference
    for row in rolled:
        assert row["buckets"] == sorted(set(row["buckets"]))
        assert len(row["buckets"]) == len(row["bucket_counts"])


@asynccontextmanager
async def maintenance_app(database: str, es_url: str) -> AsyncIterator[ProcqueueApp]:
    settings = make_settings(
        database,
        es_url,
        maintenance_tasks=True,
        prune_succeeded_after=timedelta(days=7),
        prune_batch_size=100,
    )
    application = build_app(settings)
    async with application.open_async():
        yield application
    await application.services.aclose()


@pytest.fixture
async def conn(fresh_database: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    connection = await psycopg.AsyncConnection.connect(fresh_database, autocommit=True)
    await connection.execute(HISTORY.replace("JOBS", str(JOBS)))
    yield connection
    await connection.close()


async def test_rollups_count_what_the_events_of_each_hour_say(
    conn: psycopg.AsyncConnection[Any],
) -> None:
    assert await roll_up(conn) >= 30
    await assert_rollups_match_events(conn)
    # every complete hour from the oldest event on is marked, the current one is not
    row = await (
        await conn.execute(
            "SELECT min(hour), max(hour), count(*), date_trunc('hour', now(), 'UTC')"
            " FROM procqueue.task_stats_hours"
        )
    ).fetchone()
    assert row is not None
    oldest, newest, hours, current = row
    assert (newest - oldest) / timedelta(hours=1) + 1 == hours
    assert current - timedelta(hours=2) <= newest < current


async def test_long_windows_over_rollups_equal_the_live_computation(
    conn: psycopg.AsyncConnection[Any],
) -> None:
    windows = ("1 hour", "1 day", "30 hours", "40 hours")
    async with conn.transaction():  # one now() for the live and the rolled-up reading
        stats = "SELECT * FROM procqueue.task_stats(%(since)s::interval)"
        live = {w: await rows(conn, stats, {"since": w}) for w in windows}
        assert await roll_up(conn) >= 30
        rolled = {w: await rows(conn, stats, {"since": w}) for w in windows}
    assert live["1 hour"] == rolled["1 hour"]  # no rolled-up hour: exact, as before
    for window in windows[1:]:
        assert [r["task_name"] for r in rolled[window]] == [r["task_name"] for r in live[window]]
        assert len(live[window]) == 3
        for exact, approx in zip(live[window], rolled[window], strict=True):
            assert {k: approx[k] for k in COUNTS} == {k: exact[k] for k in COUNTS}
            assert approx["max_seconds"] == pytest.approx(exact["max_seconds"], abs=1e-9)
            for key in ("p50_seconds", "p95_seconds"):
                assert approx[key] == pytest.approx(exact[key], rel=0.02, abs=0.0005), key


async def test_rolling_up_again_changes_nothing(conn: psycopg.AsyncConnection[Any]) -> None:
    assert await roll_up(conn) >= 30
    first = await rows(conn, ROLLUPS)
    hours = await rows(conn, "SELECT hour, rolled_up_at FROM procqueue.task_stats_hours")
    assert await roll_up(conn) == 0
    assert await rows(conn, ROLLUPS) == first
    assert await rows(conn, "SELECT hour, rolled_up_at FROM procqueue.task_stats_hours") == hours


async def test_concurrent_rollups_do_not_double_count(
    conn: psycopg.AsyncConnection[Any], fresh_database: str
) -> None:
    # One rollup in an open transaction: a second one meanwhile does nothing, and
    # nothing is left for it once the first commits.
    async with await psycopg.AsyncConnection.connect(fresh_database) as first:
        assert await roll_up(first) >= 30
        assert await roll_up(conn) == 0
        await first.commit()
    assert await roll_up(conn) == 0
    await assert_rollups_match_events(conn)

    # Two maintenance runs at once, through a pool, from scratch.
    await conn.execute("DELETE FROM procqueue.task_stats_hours")
    async with AsyncConnectionPool(fresh_database, min_size=2, open=False) as pool:
        deadline = time.monotonic() + 60
        done = await asyncio.gather(
            roll_up_task_stats(pool, deadline, hours_per_call=3),
            roll_up_task_stats(pool, deadline, hours_per_call=3),
        )
    row = await (await conn.execute("SELECT count(*) FROM procqueue.task_stats_hours")).fetchone()
    assert row is not None and sum(done) == row[0]
    await assert_rollups_match_events(conn)


async def test_prune_rolls_up_first_so_long_windows_keep_pruned_jobs(
    conn: psycopg.AsyncConnection[Any], fresh_database: str, es_url: str
) -> None:
    for days in (8, 8.5, 9):  # older than PROCQUEUE_PRUNE_SUCCEEDED_AFTER: pruned
        await finished_job(
            conn,
            task="listing:update",
            queue="q",
            status="succeeded",
            ended_ago=days * 86400,
            seconds=2,
        )
    stats = "SELECT * FROM procqueue.task_stats(interval '10 days')"
    before = await rows(conn, stats)
    async with maintenance_app(fresh_database, es_url) as application:
        report = await prune(application)
    assert report.succeeded == 3
    after = await rows(conn, stats)
    assert [{k: r[k] for k in COUNTS} for r in after] == [{k: r[k] for k in COUNTS} for r in before]
    assert [r["max_seconds"] for r in after] == pytest.approx([r["max_seconds"] for r in before])


async def test_the_rescue_task_keeps_the_rollups_current(
    conn: psycopg.AsyncConnection[Any], fresh_database: str, es_url: str
) -> None:
    async with maintenance_app(fresh_database, es_url) as application:
        await application.tasks[RESCUE_TASK].func(timestamp=0)
    await assert_rollups_match_events(conn)


async def test_rollups_older_than_keep_are_deleted_once(
    conn: psycopg.AsyncConnection[Any],
) -> None:
    keep = "SELECT procqueue.roll_up_task_stats(10000, interval '1 minute', interval '10 hours')"
    assert await roll_up(conn) >= 30
    row = await (await conn.execute(keep)).fetchone()
    assert row == (0,)  # nothing new to roll up, nothing rolled up again
    row = await (
        await conn.execute(
            "SELECT count(*), bool_and(hour + interval '1 hour' > now() - interval '10 hours')"
            " FROM procqueue.task_stats_hours"
        )
    ).fetchone()
    assert row is not None and row[1] and 9 <= row[0] <= 11
    assert await (await conn.execute(keep)).fetchone() == (0,)
