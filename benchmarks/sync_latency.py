"""End-to-end latency from commit to the document being indexed, at a steady
rate of changes with random (exponential) gaps, against a direct client that
commits the same change and then indexes the document itself, on the same
servers in the same run.

Queue path: a `procqueue worker` subprocess (concurrency 10, LISTEN/NOTIFY). A
single-row write is a change row in procqueue.sync_changes (docs/bulk.md, "The write
path"), which a drain job deletes only after Elasticsearch answered its `_bulk`: so
latency = the first look, after the writer's commit, that finds the row's change
gone (a watcher looks every millisecond; each update is of a row of its own).
Direct path: commit, then `index()` from the writer; latency measured around it.

    .venv/bin/python -m benchmarks.sync_latency [--rate 100] [--seconds 20]

Target (issue 23, unchanged): queue path p50 <= 20 ms at 100 changes/s on an idle queue.
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

WATCH_EVERY = 0.001


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


async def steady_updates(
    dsn: str, ids: list[str], rate: float, seconds: float, committed: dict[str, float]
) -> int:
    """Update a different row each time, with exponential gaps averaging 1/rate;
    each row's commit time goes into `committed`."""
    rng = random.Random(7)
    deadline = time.monotonic() + seconds
    made = 0
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        next_at = time.monotonic()
        while time.monotonic() < deadline:
            next_at += rng.expovariate(rate)
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            listing_id = ids[made % len(ids)]
            await conn.execute(
                "UPDATE listings SET title = %s WHERE id = %s",
                [f"queued {uuid.uuid4().hex[:8]}", listing_id],
            )
            committed[listing_id] = time.perf_counter()
            made += 1
    return made


async def watch_changes(
    dsn: str, committed: dict[str, float], synced: dict[str, float], stop: asyncio.Event
) -> None:
    """Every WATCH_EVERY seconds, which committed rows' changes are gone (synced)."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        while not stop.is_set() or len(synced) < len(committed):
            waiting = [i for i in committed if i not in synced]
            if waiting:
                looked = time.perf_counter()
                cursor = await conn.execute(
                    "SELECT entity_id FROM procqueue.sync_changes WHERE entity = 'listing'"
                    " AND entity_id = ANY(%s)",
                    [waiting],
                )
                present = {row[0] for row in await cursor.fetchall()}
                for listing_id in waiting:
                    if listing_id not in present and committed[listing_id] < looked:
                        synced[listing_id] = time.perf_counter()
            await asyncio.sleep(WATCH_EVERY)


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


async def queue_path(
    dsn: str, worker_env: dict[str, str], ids: list[str], rate: float, seconds: float
) -> list[float]:
    """Commit-to-indexed latencies of steady updates with a `procqueue worker` running."""
    worker = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "procqueue.cli", "worker", env=worker_env,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    committed: dict[str, float] = {}
    synced: dict[str, float] = {}
    stop = asyncio.Event()
    try:
        await until_worker_registered(dsn)
        watcher = asyncio.create_task(watch_changes(dsn, committed, synced, stop))
        await steady_updates(dsn, ids, rate, seconds, committed)
        stop.set()
        await asyncio.wait_for(watcher, timeout=60)
    finally:
        worker.terminate()
        await worker.wait()
    return [synced[i] - committed[i] for i in committed]


async def run(rate: float, seconds: float) -> None:
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
        queued = await queue_path(env.dsn, worker_env, ids, rate, seconds)
        direct = await direct_updates(settings, ids, rate, seconds)
    print(f"rate {rate:g} changes/s for {seconds:g} s, random gaps")
    print(f"queue path: {summary_ms(queued)}  (target p50 <= 20 ms)")
    print(f"direct path: {summary_ms(direct)}")
    ratios = []
    for fraction in (0.5, 0.95, 0.99):
        ratio = percentile(queued, fraction) / percentile(direct, fraction)
        ratios.append(f"p{int(fraction * 100)} {ratio:.1f}")
    print(f"ratio queue / direct: {', '.join(ratios)}")


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
    args = parser.parse_args()
    asyncio.run(run(args.rate, args.seconds))


if __name__ == "__main__":
    main()
