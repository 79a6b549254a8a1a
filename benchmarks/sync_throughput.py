"""Sustained sync throughput: 20,000 single-row transactions (each enqueues one
`listing:create` job), drained by one worker with concurrency 10, against
Procrastinate's own throughput for a no-op task drained the same way in the
same run.

    .venv/bin/python -m benchmarks.sync_throughput [--rows 20000] [--concurrency 10]

Target: sync throughput / no-op throughput >= 0.7.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from urllib.parse import urlsplit

import psycopg

from benchmarks.common import USER_ID, environment, process_cpu_seconds
from procqueue.app import build_app
from procqueue.runtime import ProcqueueApp
from procqueue.search.client import search_index
from procqueue.settings import Settings


async def insert_rows(dsn: str, rows: int) -> float:
    """`rows` single-row transactions, as users would make them."""
    started = time.perf_counter()
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        for number in range(rows):
            await conn.execute(
                "INSERT INTO listings (user_id, title, budget) VALUES (%s, %s, %s)",
                [USER_ID, f"listing {number}", number],
            )
    return time.perf_counter() - started


async def drain(app: ProcqueueApp, concurrency: int) -> float:
    started = time.perf_counter()
    await app.run_worker_async(
        wait=False, concurrency=concurrency, listen_notify=False, install_signal_handlers=False
    )
    return time.perf_counter() - started


async def drain_measured(app: ProcqueueApp, concurrency: int, es_url: str) -> dict[str, float]:
    """Wall time, this worker's CPU time and the ES-API server's CPU time."""
    es_marker = f"--elasticsearch-port {urlsplit(es_url).port}"
    es_before = process_cpu_seconds(es_marker) or 0.0
    cpu_before = time.process_time()
    wall = await drain(app, concurrency)
    return {
        "wall": wall,
        "worker_cpu": time.process_time() - cpu_before,
        "es_cpu": (process_cpu_seconds(es_marker) or 0.0) - es_before,
    }


def noop_app(settings: Settings) -> ProcqueueApp:
    app = build_app(settings)

    @app.task(name="bench:noop", queue="bench")
    async def noop(n: int) -> None:
        return None

    return app


async def run(rows: int, concurrency: int) -> None:
    with environment("throughput") as env:
        settings = env.settings(concurrency=concurrency)
        insert_seconds = await insert_rows(env.dsn, rows)
        sync_app = build_app(settings)
        async with sync_app.open_async():
            search = search_index(sync_app.services)
            await search.ensure_index(sync_app.services.entities.get("listing"))
            sync_run = await drain_measured(sync_app, concurrency, env.es_url)
            sync_seconds = sync_run["wall"]
            alias = search.alias(sync_app.services.entities.get("listing"))
            await search.client.indices.refresh(index=alias)
            documents = await search.client.count(index=alias)
            await sync_app.services.aclose()

        with psycopg.connect(env.dsn) as conn:
            conn.execute(
                "SELECT procqueue.add_job('bench:noop', jsonb_build_object('n', g), 'bench') "
                "FROM generate_series(1, %s) AS g",
                [rows],
            )
        bench_app = noop_app(settings)
        async with bench_app.open_async():
            noop_run = await drain_measured(bench_app, concurrency, env.es_url)
            noop_seconds = noop_run["wall"]

        with psycopg.connect(env.dsn) as conn:
            states: dict[str, int] = dict(conn.execute(
                "SELECT status::text, count(*) FROM procrastinate.procrastinate_jobs GROUP BY 1"
            ).fetchall())  # fmt: skip
    sync_rate, noop_rate = rows / sync_seconds, rows / noop_seconds
    print(f"{rows} single-row transactions written in {insert_seconds:.1f} s")
    for label, rate, measured in (("sync", sync_rate, sync_run), ("no-op", noop_rate, noop_run)):
        print(
            f"{label:5} jobs: {rate:.0f} jobs/s ({measured['wall']:.1f} s); CPU per job: worker "
            f"{measured['worker_cpu'] / rows * 1000:.2f} ms, ES-API server "
            f"{measured['es_cpu'] / rows * 1000:.2f} ms (same 2 cores)"
        )
    print(f"documents in the index: {documents['count']}")
    print(f"ratio sync / no-op: {sync_rate / noop_rate:.2f} (target >= 0.7); job states: {states}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=10)
    args = parser.parse_args()
    asyncio.run(run(args.rows, args.concurrency))


if __name__ == "__main__":
    main()
