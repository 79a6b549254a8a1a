"""Sustained sync throughput: 20,000 single-row writes (each an UPDATE of its own,
already indexed listing, in its own transaction: one `listing:update` job each),
drained by one worker (concurrency 10), against a direct `_bulk` of the same
documents on the same server (read from the table, 500 a request), measured side by
side in the same run, for each PROCQUEUE_SYNC_BATCH_SIZE asked for (1: one job, one
read, one `_bulk`; the default: micro-batches, procqueue/search/batched.py).

    .venv/bin/python -m benchmarks.sync_throughput [--rows 20000] [--concurrency 10]
        [--sizes 1,50] [--noop]

Target: drained rows/s / direct `_bulk` rows/s >= 0.8. `--noop` also runs the no-op
comparison at the same concurrency: 5,000 no-op jobs drained by procqueue's worker and
by plain Procrastinate's, side by side on one database (benchmarks/noop_throughput.py,
which runs it alone: `--concurrency 4,16` is issue 23's target).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import psycopg
from psycopg.rows import dict_row

from benchmarks import noop_throughput
from benchmarks.common import (
    USER_ID,
    Environment,
    environment,
    es_server_marker,
    machine_cpu,
    postmaster_pid,
    process_cpu_seconds,
    tree_cpu_seconds,
)
from procqueue.app import build_app
from procqueue.engine.app import ProcqueueApp
from procqueue.entities import LISTING
from procqueue.features import Settings
from procqueue.search.client import SearchIndex, search_index
from procqueue.search.document import document_from_row
from procqueue.search.sync import entity_query

DIRECT_CHUNK = 500
#: No-op jobs per worker in the `--noop` comparison.
NOOP_JOBS = 5_000


async def seed(env: Environment, settings: Settings, rows: int) -> list[str]:
    """`rows` listings, indexed (by bulk jobs), so that every later write overwrites."""
    with psycopg.connect(env.dsn) as conn:
        ids = [
            str(row[0])
            for row in conn.execute(
                "INSERT INTO listings (user_id, title, budget) "
                "SELECT %s, 'listing ' || g, g FROM generate_series(1, %s) AS g RETURNING id",
                [USER_ID, rows],
            ).fetchall()
        ]
    app = build_app(settings)
    async with app.open_async():
        await drain(app, settings.concurrency)
        await app.services.aclose()
    return ids


async def update_rows(dsn: str, ids: list[str], round_number: int) -> float:
    """One single-row UPDATE transaction per id, as users make them."""
    started = time.perf_counter()
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        for number, listing_id in enumerate(ids):
            await conn.execute(
                "UPDATE listings SET title = %s, budget = %s WHERE id = %s",
                [f"round {round_number} listing {number}", number + round_number, listing_id],
            )
    return time.perf_counter() - started


async def drain(app: ProcqueueApp, concurrency: int) -> float:
    started = time.perf_counter()
    await app.run_worker_async(
        wait=False, concurrency=concurrency, listen_notify=False, install_signal_handlers=False
    )
    return time.perf_counter() - started


async def drain_measured(env: Environment, app: ProcqueueApp, concurrency: int) -> dict[str, float]:
    """Wall time; CPU time of this worker, the ES-API server and Postgres (every
    backend of the cluster); the share of the machine's cores busy meanwhile."""
    es_marker = es_server_marker(env.es_url)
    postgres = postmaster_pid(env.dsn)
    es_before, pg_before = process_cpu_seconds(es_marker) or 0.0, tree_cpu_seconds(postgres)
    cpu_before, machine_before = time.process_time(), machine_cpu()
    wall = await drain(app, concurrency)
    return {
        "wall": wall,
        "worker_cpu": time.process_time() - cpu_before,
        "es_cpu": (process_cpu_seconds(es_marker) or 0.0) - es_before,
        "postgres_cpu": tree_cpu_seconds(postgres) - pg_before,
        "machine_busy": machine_cpu().busy_share_since(machine_before),
    }


async def direct_bulk(dsn: str, search: SearchIndex, ids: list[str]) -> float:
    """Read the rows and index their documents, DIRECT_CHUNK per `_bulk`; seconds."""
    alias = search.alias(LISTING)
    read = entity_query("read_entity_chunk", LISTING)
    started = time.perf_counter()
    async with await psycopg.AsyncConnection.connect(dsn, row_factory=dict_row) as conn:
        for start in range(0, len(ids), DIRECT_CHUNK):
            cursor = await conn.execute(read, {"ids": ids[start : start + DIRECT_CHUNK]})
            operations: list[dict[str, Any]] = []
            for row in await cursor.fetchall():
                operations += [
                    {"index": {"_index": alias, "_id": row["id"]}},
                    document_from_row(LISTING, row),
                ]
            response = await search.client.bulk(operations=operations)
            assert not response["errors"], "the direct bulk was refused"
    return time.perf_counter() - started


async def job_states(dsn: str) -> dict[str, int]:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cursor = await conn.execute(
            "SELECT status::text, count(*) FROM procrastinate.procrastinate_jobs GROUP BY 1"
        )
        return {status: count for status, count in await cursor.fetchall()}


async def measure_size(
    env: Environment, settings: Settings, ids: list[str], size: int, round_number: int
) -> None:
    write_seconds = await update_rows(env.dsn, ids, round_number)
    app = build_app(settings.model_copy(update={"sync_batch_size": size}))
    async with app.open_async():
        run = await drain_measured(env, app, settings.concurrency)
        search = search_index(app.services)
        direct_seconds = await direct_bulk(env.dsn, search, ids)
        await app.services.aclose()
    rows = len(ids)
    drained, direct = rows / run["wall"], rows / direct_seconds
    print(
        f"batch size {size:4}: {rows} single-row UPDATEs written in {write_seconds:.1f} s; "
        f"drained {drained:.0f} rows/s ({run['wall']:.1f} s), direct _bulk {direct:.0f} rows/s "
        f"({direct_seconds:.1f} s); ratio {drained / direct:.2f} (target >= 0.8); CPU per row: "
        f"worker {run['worker_cpu'] / rows * 1000:.2f} ms, ES-API server "
        f"{run['es_cpu'] / rows * 1000:.2f} ms, Postgres {run['postgres_cpu'] / rows * 1000:.2f} "
        f"ms; cores busy {run['machine_busy']:.0%}; jobs {await job_states(env.dsn)}"
    )


async def run(rows: int, concurrency: int, sizes: list[int], noop: bool) -> None:
    with environment("throughput") as env:
        settings = env.settings(concurrency=concurrency, maintenance_tasks=False)
        ids = await seed(env, settings, rows)
        print(f"{rows} listings seeded and indexed; every write below overwrites a document")
        for round_number, size in enumerate(sizes, start=1):
            await measure_size(env, settings, ids, size, round_number)
    if noop:
        noop_throughput.run(NOOP_JOBS, [concurrency], rounds=1, warmup=500)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument(
        "--sizes", default=f"1,{Settings.model_fields['sync_batch_size'].default}",
        help="batch sizes to measure, comma-separated",
    )  # fmt: skip
    parser.add_argument("--noop", action="store_true")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    asyncio.run(run(args.rows, args.concurrency, sizes, args.noop))


if __name__ == "__main__":
    main()
