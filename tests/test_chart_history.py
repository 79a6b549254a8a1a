"""The history behind the Charts page (migration 0023): the sampler records each
queue's depth and lag once a minute, the minute rollups count per queue and task
what the end events say (a postponed attempt counts as nothing), the chart
buckets read from them give the known numbers, and the duration percentiles are
computed as procqueue.task_stats computes them (within 2 % of the exact ones)."""

from __future__ import annotations

import math
import random
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from procqueue.app import build_app
from procqueue.dashboard import chart_store
from procqueue.dashboard.chart_store import RANGES, Selection
from procqueue.engine.app import ProcqueueApp
from procqueue.errors import TransientError
from procqueue.queue.chart_history import record_chart_history
from procqueue.queue.maintenance import RESCUE_TASK
from tests.conftest import make_settings
from tests.support.chart_history import exact_percentile, selected, write_history
from tests.support.worker import drain

# What each minute holds, straight from the events and the jobs table (no procqueue function).
REFERENCE = """
SELECT date_bin('1 minute', e.at, timestamptz '2000-01-01') AS minute,
       j.queue_name::text AS queue_name, j.task_name::text AS task_name,
       count(*) FILTER (WHERE e.type = 'succeeded') AS succeeded,
       count(*) FILTER (WHERE e.type = 'failed') AS failed,
       count(*) FILTER (WHERE e.type = 'deferred_for_retry') AS retries,
       count(*) FILTER (WHERE e.type = 'aborted') AS aborted
FROM procrastinate.procrastinate_events AS e
JOIN procrastinate.procrastinate_jobs AS j ON j.id = e.job_id
WHERE e.type IN ('succeeded', 'failed', 'deferred_for_retry', 'aborted')
  AND e.at < (SELECT max(start) + interval '1 minute' FROM procqueue.chart_periods
              WHERE width = interval '1 minute')
  AND e.at >= now() - interval '2 days'
GROUP BY 1, 2, 3
ORDER BY 1, 2, 3
"""
ROLLUPS = """
SELECT start AS minute, queue_name, task_name, succeeded, failed, retries, aborted
FROM procqueue.chart_stats WHERE width = interval '1 minute' AND level = 0 ORDER BY 1, 2, 3
"""
# Levels 1 (per queue) and 2 (all) sum level 0's rows, histograms included.
LEVELS = """
SELECT m.width, m.level, m.start, m.queue_name,
       ARRAY[sum(m.succeeded), sum(m.failed), sum(m.retries), sum(m.aborted),
             sum((SELECT sum(n) FROM unnest(m.bucket_counts) AS n))] AS counts
FROM procqueue.chart_stats AS m WHERE m.level > 0 GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
"""
LEVELS_FROM_ZERO = """
SELECT m.width, l.level, m.start,
       CASE WHEN l.level = 1 THEN m.queue_name ELSE '' END AS queue_name,
       ARRAY[sum(m.succeeded), sum(m.failed), sum(m.retries), sum(m.aborted),
             sum((SELECT sum(n) FROM unnest(m.bucket_counts) AS n))] AS counts
FROM procqueue.chart_stats AS m CROSS JOIN (VALUES (1::smallint), (2::smallint)) AS l (level)
WHERE m.level = 0 GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
"""

HALF_HOURS = """
SELECT h.start AS period,
       (SELECT max(start) FROM procqueue.chart_periods WHERE width = interval '1 minute')
           AS rolled_until,
       array_agg(ARRAY[h.level, h.succeeded, h.failed, h.retries, h.aborted,
                       (SELECT sum(n) FROM unnest(h.bucket_counts) AS n)]
                 ORDER BY h.level, h.queue_name, h.task_name) AS counts
FROM procqueue.chart_stats AS h WHERE h.width = interval '30 minutes' GROUP BY h.start ORDER BY 1
"""
MINUTES_BY_HALF_HOUR = """
SELECT x.period, array_agg(ARRAY[x.level, x.succeeded, x.failed, x.retries, x.aborted, x.timed]
                           ORDER BY x.level, x.queue_name, x.task_name) AS counts
FROM (SELECT date_bin('30 minutes', m.start, timestamptz '2000-01-01') AS period, m.level,
             m.queue_name,
             m.task_name, sum(m.succeeded) AS succeeded, sum(m.failed) AS failed,
             sum(m.retries) AS retries, sum(m.aborted) AS aborted,
             sum((SELECT sum(n) FROM unnest(m.bucket_counts) AS n)) AS timed
      FROM procqueue.chart_stats AS m WHERE m.width = interval '1 minute'
      GROUP BY 1, 2, 3, 4) AS x
GROUP BY x.period ORDER BY 1
"""


async def rows(
    conn: psycopg.AsyncConnection[Any], sql: str, params: Any = None
) -> list[dict[str, Any]]:
    cursor = conn.cursor(row_factory=dict_row)
    await cursor.execute(sql, params)
    return await cursor.fetchall()


@pytest.fixture
async def conn(fresh_database: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    async with await psycopg.AsyncConnection.connect(fresh_database, autocommit=True) as c:
        yield c


@pytest.fixture
async def app(fresh_database: str, es_url: str) -> AsyncIterator[ProcqueueApp]:
    application = build_app(make_settings(fresh_database, es_url, maintenance_tasks=True))
    async with application.open_async():
        yield application
    await application.services.aclose()


async def rescue_run(app: ProcqueueApp) -> None:
    """One run of the periodic maintenance task that keeps the chart history."""
    await app.tasks[RESCUE_TASK].func(timestamp=0)


async def test_the_sampler_records_each_queues_depth_and_lag_once_a_minute(
    app: ProcqueueApp, conn: psycopg.AsyncConnection[Any]
) -> None:
    @app.task(name="charts:wait", queue="waits")
    async def wait() -> None:  # never run here: the jobs only wait
        return None

    overdue = datetime.now(UTC) - timedelta(seconds=120)
    for _ in range(5):
        await wait.configure(schedule_at=overdue).defer_async()
    for _ in range(2):
        await app.configure_task("charts:wait", queue="other").defer_async()
    await rescue_run(app)
    samples = await rows(conn, "SELECT * FROM procqueue.queue_samples ORDER BY queue_name")
    assert [(s["queue_name"], s["waiting"], s["running"]) for s in samples] == [
        ("other", 2, 0),
        ("waits", 5, 0),
    ]
    waits = samples[1]
    assert 120 <= waits["lag_seconds"] < 150
    assert samples[0]["lag_seconds"] < 30
    assert waits["minute"] == waits["sampled_at"].replace(second=0, microsecond=0)

    # Within one minute only the first sample counts; samples older than two days go.
    async with conn.transaction():
        again = await rows(conn, "SELECT procqueue.sample_queues() AS n")
    assert again == [{"n": 0}] or datetime.now(UTC).second < 2  # a new minute began: 2 rows
    await conn.execute("UPDATE procqueue.queue_samples SET minute = minute - interval '3 days'")
    await conn.execute("SELECT procqueue.sample_queues()")
    left = await rows(
        conn,
        "SELECT count(*) AS n, min(minute) > now() - interval '1 day' AS new"
        " FROM procqueue.queue_samples",
    )
    assert left == [{"n": 2, "new": True}]

    # The Charts page's reading: the latest bucket holds that depth and lag.
    async with app.pool.connection() as db:
        depth = await chart_store.depth(db, Selection("waits", "", RANGES["hour"]))
    latest = [b for b in depth if b.samples][-1]
    assert (latest.waiting, latest.running) == (5, 0)
    assert latest.lag_seconds is not None and 120 <= latest.lag_seconds < 150


async def test_minute_rollups_count_per_queue_and_task_what_the_events_say(
    app: ProcqueueApp, conn: psycopg.AsyncConnection[Any]
) -> None:
    await write_history(conn)
    report = await record_chart_history(app.pool, time.monotonic() + 60, minutes_per_call=500)
    assert report.rolled_up_minutes >= 29 * 60  # every minute since the oldest event (~30 h)
    reference = await rows(conn, REFERENCE)
    assert len(reference) >= 5  # alpha:sync at 30 h and 5 h, alpha:mail, beta:push, a retry
    assert await rows(conn, ROLLUPS) == reference
    assert await rows(conn, LEVELS) == await rows(conn, LEVELS_FROM_ZERO)
    # Each rolled-up half hour sums its minutes (the day chart reads these).
    halves = await rows(conn, HALF_HOURS)
    assert halves and all(h["period"] < h["rolled_until"] for h in halves)
    assert {h["period"]: h["counts"] for h in halves} == {
        h["period"]: h["counts"] for h in await rows(conn, MINUTES_BY_HALF_HOUR)
        if h["period"] in {half["period"] for half in halves}
    }
    again = await record_chart_history(app.pool, deadline=0)
    assert again.rolled_up_minutes <= 1  # nothing twice (a minute may have ended meanwhile)
    assert await rows(conn, ROLLUPS) == await rows(conn, REFERENCE)
    # Periods older than `keep` (two days by default) are deleted with their rows.
    await conn.execute("SELECT procqueue.roll_up_chart_minutes(720, interval '1 minute', '10 h')")
    left = await rows(
        conn,
        "SELECT (SELECT min(start) FROM procqueue.chart_periods) AS periods,"
        " (SELECT min(start) FROM procqueue.chart_stats) AS stats,"
        " now() - interval '10 hours 30 minutes' AS bound",
    )
    assert left[0]["bound"] <= left[0]["periods"] <= left[0]["stats"]


@pytest.mark.parametrize("queue,task", [("alpha", ""), ("", "alpha:sync"), ("beta", ""), ("", "")])
async def test_day_buckets_show_the_known_history(
    app: ProcqueueApp, conn: psycopg.AsyncConnection[Any], queue: str, task: str
) -> None:
    starts = await write_history(conn)
    await record_chart_history(app.pool, deadline=0, minutes_per_call=5000)
    async with app.pool.connection() as db:
        buckets = await chart_store.attempts(db, Selection(queue, task, RANGES["day"]))
    expected = selected(queue, task)
    by_start = {b.start: b for b in buckets}
    for hours_ago, start in starts.items():
        if hours_ago >= 24:
            assert start not in by_start
            continue
        here = [f for f in expected if f.hours_ago == hours_ago]
        bucket = by_start[start]
        assert (bucket.succeeded, bucket.retried, bucket.failed) == (
            sum(f.status == "succeeded" for f in here),
            sum(f.retried_before for f in here),
            sum(f.status == "failed" for f in here),
        )
    assert sum(b.attempts for b in buckets) == sum(len(f.durations) for f in expected)
    durations = [d for f in expected for d in f.durations]
    for fraction in (0.5, 0.95):
        found = chart_store.percentile_of(buckets, fraction)
        assert found == pytest.approx(exact_percentile(durations, fraction), rel=0.02), fraction


async def test_postponed_attempts_are_neither_successes_nor_failures(
    app: ProcqueueApp, conn: psycopg.AsyncConnection[Any]
) -> None:
    calls: dict[int, int] = {}

    @app.task(name="charts:postpone_once", queue="charts", pass_context=True)
    async def postpone_once(context: Any) -> str:
        """Postponed (a writer holds its row, say) on its first run, done on the second."""
        calls[context.job.id] = calls.get(context.job.id, 0) + 1
        if calls[context.job.id] == 1:
            raise TransientError.postpone("the row is locked by a writer", 0)
        return "ok"

    @app.task(name="charts:postpone_always", queue="charts")
    async def postpone_always() -> None:
        raise TransientError.postpone("a rate limit: come back in an hour", 3600)

    for _ in range(3):
        await postpone_once.defer_async()
    waiting = await postpone_always.defer_async()
    await drain(app, queues=["charts"])
    assert sum(calls.values()) == 6
    state = await rows(
        conn,
        "SELECT j.status::text AS status, j.attempts, p.times FROM procrastinate.procrastinate_jobs"
        " AS j JOIN procqueue.job_postponements AS p ON p.job_id = j.id WHERE j.id = %s",
        [waiting],
    )
    assert state == [{"status": "todo", "attempts": 0, "times": 1}]

    async def totals() -> tuple[int, int, int, int]:
        async with app.pool.connection() as db:
            found = await chart_store.attempts(db, Selection("charts", "", RANGES["hour"]))
        return (
            sum(b.succeeded for b in found), sum(b.retried for b in found),
            sum(b.failed for b in found), sum(b.aborted for b in found),
        )  # fmt: skip

    assert await totals() == (3, 0, 0, 0)  # read live: these minutes are not rolled up yet
    # Rolled up (a grace of minus two minutes takes the current minute too): the same.
    await conn.execute("SELECT procqueue.roll_up_chart_minutes(5000, interval '-2 minutes')")
    rolled = await rows(
        conn,
        "SELECT task_name, succeeded, failed, retries, aborted"
        " FROM procqueue.chart_stats WHERE level = 0 AND queue_name = 'charts'"
        # The minutes only: a half hour they complete has a row of its own, the same sums.
        " AND width = interval '1 minute'",
    )
    assert [r["task_name"] for r in rolled] == ["charts:postpone_once"] * len(rolled)
    assert sum(r["succeeded"] for r in rolled) == 3
    assert sum(r["failed"] + r["retries"] + r["aborted"] for r in rolled) == 0
    assert await totals() == (3, 0, 0, 0)


def test_histogram_percentiles_match_percentile_cont_within_two_percent() -> None:
    draw = random.Random(25)
    for size in (1, 2, 3, 10, 1000):
        durations = [draw.lognormvariate(-3, 2) for _ in range(size)]
        counted: dict[int, int] = {}
        for seconds in durations:
            bucket = (
                0 if seconds < 0.001 else 1 + math.floor(math.log(seconds / 0.001) / math.log(1.04))
            )
            counted[bucket] = counted.get(bucket, 0) + 1
        keys = sorted(counted)
        for fraction in (0.5, 0.95):
            found = chart_store.histogram_percentile(
                keys, [counted[k] for k in keys], fraction, max(durations)
            )
            assert found == pytest.approx(
                exact_percentile(durations, fraction), rel=0.02, abs=0.0005
            ), (size, fraction)
    assert chart_store.histogram_percentile([], [], 0.5, None) is None
