"""End-to-end latency from commit to the document being indexed, at a steady
rate of changes with random (exponential) gaps, against a direct client that
commits the same change and then indexes the document itself, on the same
servers in the same run.

Queue path: a `procqueue worker` subprocess (concurrency 10, LISTEN/NOTIFY);
latency = the job's `succeeded` event minus its `deferred` event (both stamped
by Postgres; `deferred` is written in the user's transaction); printed with the
part of it until the job was taken (its `started` event: NOTIFY, fetch or claim).
Direct path: commit, then `index()` from the writer; latency measured around it.

    .venv/bin/python -m benchmarks.sync_latency [--rate 100] [--seconds 20] [--sizes 1,100]

The queue path is measured once per PROCQUEUE_SYNC_BATCH_SIZE asked for (1: no
micro-batches; the default), one after the other in the same run.

Target: queue path p50 <= 8 ms, p99 <= 20 ms (batching must not cost latency).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import time
import uuid

import psycopg
from psycopg.rows import dict_row

from benchmarks.common import USER_ID, environment, percentile, summary_ms
from procqueue.entities import LISTING
from procqueue.features import Settings
from procqueue.search.client import SearchIndex, make_client
from procqueue.search.document import document_from_row
from procqueue.search.sync import entity_query

LATENCIES = """
SELECT extract(epoch FROM done.at - made.at), extract(epoch FROM started.at - made.at)
FROM procrastinate.procrastinate_jobs AS job
JOIN procrastinate.procrastinate_events AS made ON made.job_id = job.id AND made.type = 'deferred'
JOIN procrastinate.procrastinate_events AS started
  ON started.job_id = job.id AND started.type = 'started'
JOIN procrastinate.procrastinate_events AS done ON done.job_id = job.id AND done.type = 'succeeded'
WHERE job.task_name LIKE 'listing:%%' AND job.id > %s
"""


async def seed(dsn: str, rows: int) -> list[str]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cursor = await conn.execute(
            "INSERT INTO listings (user_id, title) SELECT %s, 'seed ' || g "
            "FROM generate_series(1, %s) AS g RETURNING id",
            [USER_ID, rows],
        )
        return [str(row[0]) for row in await cursor.fetchall()]


async def until_worker_registered(dsn: str) -> None:
    """Measure the steady state, not the worker's start-up."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        for _ in range(300):
            row = await (
                await conn.execute("SELECT count(*) FROM procrastinate.procrastinate_workers")
            ).fetchone()
            if row and row[0]:
                await asyncio.sleep(1)  # let it open its LISTEN connection and pool
                return
            await asyncio.sleep(0.1)
    raise RuntimeError("the worker did not start")


async def steady_updates(dsn: str, ids: list[str], rate: float, seconds: float) -> int:
    """Update a different row each time, with exponential gaps averaging 1/rate."""
    rng = random.Random(7)
    deadline = time.monotonic() + seconds
    made = 0
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        next_at = time.monotonic()
        while time.monotonic() < deadline:
            next_at += rng.expovariate(rate)
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            await conn.execute(
                "UPDATE listings SET title = %s WHERE id = %s",
                [f"queued {uuid.uuid4().hex[:8]}", ids[made % len(ids)]],
            )
            made += 1
    return made


async def direct_updates(
    settings: Settings, ids: list[str], rate: float, seconds: float
) -> list[float]:
    rng = random.Random(8)
    search = SearchIndex(make_client(settings.search), settings.index_prefix + "direct_")
    await search.ensure_index(LISTING)
    latencies = []
    deadline = time.monotonic() + seconds
    read = entity_query("read_entity_row", LISTING)
    try:
        async with await psycopg.AsyncConnection.connect(
            settings.dsn, autocommit=True, row_factory=dict_row
        ) as conn:
            next_at = time.monotonic()
            made = 0
            while time.monotonic() < deadline:
                next_at += rng.expovariate(rate)
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
                listing_id = ids[made % len(ids)]
                await conn.execute(
                    "UPDATE listings SET title = %s WHERE id = %s",
                    [f"direct {uuid.uuid4().hex[:8]}", listing_id],
                )
                committed = time.perf_counter()
                row = await (await conn.execute(read, {"id": listing_id})).fetchone()
                assert row is not None
                await search.put(LISTING, listing_id, document_from_row(LISTING, row))
                latencies.append(time.perf_counter() - committed)
                made += 1
    finally:
        await search.client.close()
    return latencies


async def max_job_id(dsn: str) -> int:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        row = await (await conn.execute(
            "SELECT coalesce(max(id), 0) FROM procrastinate.procrastinate_jobs"
        )).fetchone()  # fmt: skip
    return int(row[0]) if row else 0


async def queue_path(
    dsn: str, worker_env: dict[str, str], ids: list[str], rate: float, seconds: float
) -> tuple[list[float], list[float]]:
    """Commit-to-indexed latencies of steady updates with a `procqueue worker` running,
    and the part of each until its job was taken."""
    since = await max_job_id(dsn)
    worker = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "procqueue.cli", "worker", env=worker_env,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        await until_worker_registered(dsn)
        made = await steady_updates(dsn, ids, rate, seconds)
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            for _ in range(600):
                queued = await (await conn.execute(LATENCIES, [since])).fetchall()
                if len(queued) >= made:
                    break
                await asyncio.sleep(0.1)
    finally:
        worker.terminate()
        await worker.wait()
    return [float(row[0]) for row in queued], [float(row[1]) for row in queued]


async def run(rate: float, seconds: float, sizes: list[int]) -> None:
    with environment("latency") as env:
        settings = env.settings(concurrency=10)
        ids = await seed(env.dsn, int(rate * seconds) + 100)
        worker_env = {
            **os.environ,
            "DATABASE_URL": env.dsn,
            "ELASTICSEARCH_URL": env.es_url,
            "PROCQUEUE_INDEX_PREFIX": settings.index_prefix,
            "PROCQUEUE_CONCURRENCY": "10",
        }
        # Index the seed first, so the measured updates overwrite like the direct path.
        seeding = await asyncio.create_subprocess_exec(
            sys.executable, "-c", DRAIN, env=worker_env, stderr=subprocess.DEVNULL
        )
        await seeding.wait()
        queued: list[tuple[int, tuple[list[float], list[float]]]] = [
            (size, await queue_path(
                env.dsn, {**worker_env, "PROCQUEUE_SYNC_BATCH_SIZE": str(size)}, ids, rate, seconds
            ))
            for size in sizes
        ]  # fmt: skip
        direct = await direct_updates(settings, ids, rate, seconds)
    print(f"rate {rate:g} changes/s for {seconds:g} s, random gaps")
    for size, (latencies, until_taken) in queued:
        print(
            f"queue path, batch size {size:3}: {summary_ms(latencies)}  "
            "(target p50 <= 8 ms, p99 <= 20 ms)"
        )
        print(f"  of which until the job was taken: {summary_ms(until_taken)}")
    print(f"direct path: {summary_ms(direct)}")
    for size, (queue_latencies, _) in queued:
        ratios = []
        for fraction in (0.5, 0.95, 0.99):
            ratio = percentile(queue_latencies, fraction) / percentile(direct, fraction)
            ratios.append(f"p{int(fraction * 100)} {ratio:.1f}")
        print(f"ratio queue (batch size {size}) / direct: {', '.join(ratios)}")


DRAIN = """
import asyncio
from procqueue.app import build_app
from procqueue.features import load_settings
app = build_app(load_settings())
async def main():
    async with app.open_async():
        await app.run_worker_async(wait=False, listen_notify=False, install_signal_handlers=False)
        await app.services.aclose()
asyncio.run(main())
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=100)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument(
        "--sizes", default=f"1,{Settings.model_fields['sync_batch_size'].default}",
        help="PROCQUEUE_SYNC_BATCH_SIZE of the worker, one measured run each, comma-separated",
    )  # fmt: skip
    args = parser.parse_args()
    asyncio.run(run(args.rate, args.seconds, [int(size) for size in args.sizes.split(",")]))


if __name__ == "__main__":
    main()
