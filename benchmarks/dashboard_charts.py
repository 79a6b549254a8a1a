"""The Charts page on a big history: time of one page over HTTP (the real
Starlette app through httpx's ASGI transport, templates and SVG included) for
each selection, hour and day, after the maintenance task has rolled up the
minutes (migration 0023); and what keeping that history costs.

    .venv/bin/python -m benchmarks.dashboard_charts [--jobs 1000000] [--runs 30]

The history is benchmarks/health_fill.sql (finished jobs ending evenly over 7
days: ~143,000 a day at 1,000,000, three queues, eight tasks, with retries and
failures; a waiting backlog). The queue samples of the last two days are one row
per queue per minute, as the sampler leaves them (written here with
generate_series: the sampler can only sample the present). The page reads only
the rollups, the samples and the end events of the minutes not rolled up yet.
Target: every page p95 <= 100 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import psycopg

from benchmarks.common import percentile
from benchmarks.health_queries import fill
from benchmarks.pages import time_pages
from procqueue.features import load_settings
from procqueue.local import env, local_postgres, scratch_database
from procqueue.migrate import migrate

BUDGET_MS = 100.0
SAMPLES = """
INSERT INTO procqueue.queue_samples
    (minute, queue_name, sampled_at, waiting, running, scheduled, retry_scheduled, lag_seconds)
SELECT m, q, m + interval '3 seconds', (extract(epoch FROM m)::bigint / 60) % 500, 10, 0, 3,
       ((extract(epoch FROM m)::bigint / 60) % 90)::double precision
FROM generate_series(date_bin('1 minute', now() - interval '2 days', timestamptz '2000-01-01'),
                     now() - interval '1 minute', interval '1 minute') AS m
CROSS JOIN unnest(ARRAY['sync', 'images', 'notifications']) AS q
"""
PAGES = {
    "all queues and tasks, hour": "/charts",
    "all queues and tasks, day": "/charts?range=day",
    "queue=sync, hour": "/charts?queue=sync",
    "queue=sync, day": "/charts?queue=sync&range=day",
    "task=listing:update, hour": "/charts?task=listing:update",
    "task=listing:update, day": "/charts?task=listing:update&range=day",
    "queue=images + task=images:cleanup, day": "/charts?queue=images&task=images:cleanup&range=day",
    "task with no history, day": "/charts?task=nothing:here&range=day",
}


async def measure(settings: Any, runs: int) -> dict[str, list[float]]:
    return await time_pages(settings, PAGES, runs)


def timed(conn: psycopg.Connection[Any], statement: str) -> tuple[Any, float]:
    started = time.perf_counter()
    row = conn.execute(statement).fetchone()
    return (row[0] if row else None), time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--backlog", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    with (
        local_postgres(env("PROCQUEUE_TEST_DATABASE_URL")) as admin,
        scratch_database(admin, "pq_bench_dashboard_charts") as dsn,
    ):
        migrate(dsn)
        with psycopg.connect(dsn, autocommit=True) as conn:
            seconds = fill(conn, args.jobs, args.backlog)
            print(f"filled {args.jobs:,} + {args.backlog:,} jobs in {seconds:.1f} s")
            rolled, first = timed(conn, "SELECT procqueue.roll_up_chart_minutes(720)")
            total, rest = rolled, 0.0
            while rolled == 720:
                rolled, took = timed(conn, "SELECT procqueue.roll_up_chart_minutes(720)")
                total, rest = total + rolled, rest + took
            conn.execute(SAMPLES)
            _, sample = timed(conn, "SELECT procqueue.sample_queues()")
            conn.execute("VACUUM ANALYZE procqueue.chart_stats")
            conn.execute("VACUUM ANALYZE procqueue.queue_samples")
            row = conn.execute(
                "SELECT count(*), pg_total_relation_size('procqueue.chart_stats'),"
                " pg_total_relation_size('procqueue.queue_samples')"
                " FROM procqueue.chart_stats"
            ).fetchone()
            assert row is not None
        print(
            f"rolled up {total:,} minutes ({row[0]:,} rows, {row[1] / 2**20:.1f} MB; samples "
            f"{row[2] / 2**20:.1f} MB): the first 720 in {first:.2f} s, the rest in {rest:.2f} s;"
            f" one sample of every queue {sample * 1000:.1f} ms"
        )
        settings = load_settings(database_url=dsn, elasticsearch_url="http://127.0.0.1:9")
        timings = asyncio.run(measure(settings, args.runs))
    print(f"\none page over HTTP, {args.jobs:,} jobs; ms; budget p95 <= {BUDGET_MS:.0f}")
    print(f"{'page':42} {'p50':>8} {'p95':>8}")
    slow = []
    for name, samples in timings.items():
        p50, p95 = percentile(samples, 0.5) * 1000, percentile(samples, 0.95) * 1000
        print(f"{name:42} {p50:8.1f} {p95:8.1f}")
        if p95 > BUDGET_MS:
            slow.append(name)
    print("\nall pages within budget" if not slow else f"\nover budget: {', '.join(slow)}")


if __name__ == "__main__":
    main()
