"""A long run with the xmin pinned (issue 23): claim latency and hot-table growth,
procqueue beside plain Procrastinate under the same load, in the same run.

Two databases on the shared cluster, each with 10,000 seeded `listings` rows and
single-row UPDATEs of random rows at --rate per second (exponential gaps, four writer
connections each) for --minutes:

- procqueue: its triggers (a change row per write, a drain job when none waits) and
  one `procqueue worker` with its defaults, syncing into an ES-API server;
- plain Procrastinate (its schema in `public`, as `procrastinate schema --apply`
  installs it): a row trigger inserting one Procrastinate job per write, coalesced on
  a queueing lock per row (`ON CONFLICT DO NOTHING`), what a trigger-fed Procrastinate
  queue does; one plain worker running a no-op task at concurrency 10.

From --pin-at minutes on, for --pin-minutes, each database has a session idle in a
REPEATABLE READ transaction that holds a transaction id (a forgotten psql, a stuck
report): vacuum keeps every dead row version newer than it, in the queue tables too.

Measured:
- claim latency: procqueue, commit -> the change synced (its change row gone, which a
  drain deletes only after Elasticsearch answered: stricter than a claim); plain
  Procrastinate, the job's `deferred` event -> its `started` event. p50 / p99 / max for
  the whole run and for the pinned window;
- hot-table growth: pg_total_relation_size of each system's queue tables (jobs, events,
  and procqueue's change, error and postponement tables) at the end minus at the start,
  and the peak, with the ratio procqueue / plain.

    .venv/bin/python -m benchmarks.pinned_xmin [--minutes 30] [--rate 200]
        [--pin-at 10] [--pin-minutes 5]

Targets: claim latency p99 < 1 s, pinned window included; procqueue's hot-table growth
<= 2x plain Procrastinate's.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from benchmarks.common import USER_ID, arrive_at_rate, environment, percentile
from benchmarks.noop_throughput import install_plain_procrastinate
from benchmarks.sync_latency import until_worker_registered
from procqueue.local import env, local_postgres, scratch_database

SEED_ROWS = 10_000
WRITERS = 4
WATCH_EVERY = 0.01
SAMPLE_EVERY = 10.0
HOT_TABLES = {
    "procqueue": (
        "procrastinate.procrastinate_jobs",
        "procrastinate.procrastinate_events",
        "procqueue.sync_changes",
        "procqueue.job_errors",
        "procqueue.job_postponements",
    ),
    "plain": ("public.procrastinate_jobs", "public.procrastinate_events"),
}
SEED = f"""
INSERT INTO public.{{table}} (id, user_id, title)
SELECT md5('listing ' || g)::uuid, '{USER_ID}', 'seed ' || g FROM generate_series(1, %s) AS g
"""
# The plain side's table: the columns a write touches, and a trigger that defers a
# Procrastinate job per written row, coalesced on the row's queueing lock.
PLAIN_SCHEMA = """
CREATE TABLE public.plain_listings (id uuid PRIMARY KEY, user_id uuid, title text);
CREATE FUNCTION public.defer_listing_sync() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.procrastinate_jobs (queue_name, task_name, lock, queueing_lock, args)
    VALUES ('sync', 'listing:update', 'listing:' || NEW.id, 'listing:' || NEW.id,
            jsonb_build_object('id', NEW.id))
    ON CONFLICT (queueing_lock) WHERE status = 'todo' DO NOTHING;
    RETURN NULL;
END;
$$;
CREATE TRIGGER listing_sync AFTER INSERT OR UPDATE ON public.plain_listings
    FOR EACH ROW EXECUTE FUNCTION public.defer_listing_sync();
"""
# What the hot tables hold at the end, by table and state.
HOLDINGS = {
    "procqueue": """
        SELECT 'jobs ' || status, count(*) FROM procrastinate.procrastinate_jobs GROUP BY status
        UNION ALL SELECT 'events', count(*) FROM procrastinate.procrastinate_events
        UNION ALL SELECT 'change rows', count(*) FROM procqueue.sync_changes
        UNION ALL SELECT 'error records', count(*) FROM procqueue.job_errors
    """,
    "plain": """
        SELECT 'jobs ' || status, count(*) FROM public.procrastinate_jobs GROUP BY status
        UNION ALL SELECT 'events', count(*) FROM public.procrastinate_events
    """,
}
PLAIN_CLAIMS = """
SELECT s.at, extract(epoch FROM s.at - d.at)
FROM public.procrastinate_events AS d
JOIN public.procrastinate_events AS s ON s.job_id = d.job_id AND s.type = 'started'
WHERE d.type = 'deferred'
"""


@dataclass
class Side:
    name: str
    dsn: str
    table: str
    ids: list[str]
    claims: list[tuple[float, float]] = field(default_factory=list)  # (at, seconds)
    sizes: list[int] = field(default_factory=list)
    writes: int = 0
    holds: dict[str, int] = field(default_factory=dict)  # what the hot tables hold at the end


async def table_bytes(conn: psycopg.AsyncConnection[Any], system: str) -> int:
    total = 0
    for table in HOT_TABLES[system]:
        cursor = await conn.execute("SELECT pg_total_relation_size(to_regclass(%s))", [table])
        row = await cursor.fetchone()
        total += int(row[0]) if row and row[0] is not None else 0
    return total


async def write_load(
    side: Side, rate: float, seconds: float, wrote: Callable[[str, float], None] | None
) -> None:
    """Single-row UPDATEs of random rows at `rate` per second for `seconds`."""
    rng = random.Random(side.name)
    arrivals: asyncio.Queue[str | None] = asyncio.Queue()

    async def writer() -> None:
        async with await psycopg.AsyncConnection.connect(side.dsn, autocommit=True) as conn:
            while (listing_id := await arrivals.get()) is not None:
                await conn.execute(
                    sql.SQL("UPDATE public.{} SET title = %s WHERE id = %s").format(
                        sql.Identifier(side.table)
                    ),
                    [f"t{rng.random()}", listing_id],
                )
                side.writes += 1
                if wrote:
                    wrote(listing_id, time.monotonic())

    tasks = [asyncio.create_task(writer()) for _ in range(WRITERS)]
    await arrive_at_rate(arrivals, lambda: rng.choice(side.ids), rng, rate, seconds, len(tasks))
    await asyncio.gather(*tasks)


async def watch_changes(side: Side, pending: dict[str, float], stop: asyncio.Event) -> None:
    """procqueue: a write is synced when its row has no change row left."""
    async with await psycopg.AsyncConnection.connect(side.dsn, autocommit=True) as conn:
        while not (stop.is_set() and not pending):
            await asyncio.sleep(WATCH_EVERY)
            if not pending:
                continue
            waiting = list(pending)
            cursor = await conn.execute(
                "SELECT entity_id FROM procqueue.sync_changes "
                "WHERE entity = 'listing' AND entity_id = ANY(%s)",
                [waiting],
            )
            still = {str(row[0]) for row in await cursor.fetchall()}
            seen = time.monotonic()
            for listing_id in waiting:
                if listing_id not in still and listing_id in pending:
                    side.claims.append((seen, seen - pending.pop(listing_id)))


async def sample_sizes(sides: list[Side], stop: asyncio.Event) -> None:
    conns = [await psycopg.AsyncConnection.connect(side.dsn, autocommit=True) for side in sides]
    try:
        while not stop.is_set():
            for side, conn in zip(sides, conns, strict=True):
                side.sizes.append(await table_bytes(conn, side.name))
            try:
                await asyncio.wait_for(stop.wait(), SAMPLE_EVERY)
            except TimeoutError:
                pass
        for side, conn in zip(sides, conns, strict=True):
            side.sizes.append(await table_bytes(conn, side.name))
    finally:
        for conn in conns:
            await conn.close()


async def pin_xmin(dsns: list[str], after: float, seconds: float) -> tuple[float, float]:
    """Sessions idle in a transaction holding an xid, one per database; (from, to)."""
    await asyncio.sleep(after)
    conns = [await psycopg.AsyncConnection.connect(dsn) for dsn in dsns]
    for conn in conns:
        await conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        await conn.execute("SELECT txid_current()")
    pinned_from = time.monotonic()
    print(f"  xmin pinned for {seconds:g} s", flush=True)
    await asyncio.sleep(seconds)
    for conn in conns:
        await conn.rollback()
        await conn.close()
    print("  xmin released", flush=True)
    return pinned_from, time.monotonic()


async def synced_seed(dsn: str, es_url: str, index_prefix: str) -> dict[str, str]:
    """The environment of a procqueue process on this bench database, once its seeded
    rows are indexed by `procqueue reindex` and the seed's changes and jobs are gone:
    the clock starts on an empty queue."""
    worker_env = {
        **os.environ, "DATABASE_URL": dsn, "ELASTICSEARCH_URL": es_url,
        "PROCQUEUE_INDEX_PREFIX": index_prefix,
    }  # fmt: skip
    reindex = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "procqueue.cli", "reindex", "listings", "-q", env=worker_env
    )
    if await reindex.wait():
        raise RuntimeError("procqueue reindex of the seed failed")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM procqueue.sync_changes")
        conn.execute("DELETE FROM procrastinate.procrastinate_jobs")
        conn.execute("VACUUM ANALYZE procrastinate.procrastinate_jobs")
    return worker_env


def latency_line(values: list[float]) -> str:
    if not values:
        return "no samples"
    return (
        f"p50 {percentile(values, 0.5) * 1000:.0f} ms, p99 {percentile(values, 0.99) * 1000:.0f}"
        f" ms, max {max(values) * 1000:.0f} ms (n={len(values)})"
    )


async def plain_claims(side: Side, started_wall: float, started_mono: float) -> None:
    """Defer -> start of every plain job, on the monotonic clock of the run."""
    async with await psycopg.AsyncConnection.connect(side.dsn) as conn:
        cursor = await conn.execute(PLAIN_CLAIMS)
        for at, seconds in await cursor.fetchall():
            side.claims.append((started_mono + at.timestamp() - started_wall, float(seconds)))


async def measure(
    procqueue_side: Side, plain_side: Side, args: argparse.Namespace,
    start_workers: Callable[[], Awaitable[list[asyncio.subprocess.Process]]],
) -> tuple[float, float]:  # fmt: skip
    seconds = args.minutes * 60
    workers = await start_workers()
    try:
        await until_worker_registered(procqueue_side.dsn)
        stop = asyncio.Event()
        pending: dict[str, float] = {}

        def wrote(listing_id: str, at: float) -> None:
            pending.setdefault(listing_id, at)  # the oldest unsynced write of the row

        sides = [procqueue_side, plain_side]
        sampling = asyncio.create_task(sample_sizes(sides, stop))
        watching = asyncio.create_task(watch_changes(procqueue_side, pending, stop))
        pinning = asyncio.create_task(
            pin_xmin([s.dsn for s in sides], args.pin_at * 60, args.pin_minutes * 60)
        )
        started_wall, started_mono = time.time(), time.monotonic()
        await asyncio.gather(
            write_load(procqueue_side, args.rate, seconds, wrote),
            write_load(plain_side, args.rate, seconds, None),
        )
        window = await pinning
        stop.set()
        await asyncio.wait_for(watching, timeout=300)
        await sampling
        await plain_claims(plain_side, started_wall, started_mono)
        for side in sides:
            async with await psycopg.AsyncConnection.connect(side.dsn) as conn:
                cursor = await conn.execute(HOLDINGS[side.name])
                side.holds = {str(what): int(count) for what, count in await cursor.fetchall()}
        return window
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            await worker.wait()


def report(side: Side, window: tuple[float, float]) -> str:
    values = [seconds for _, seconds in side.claims]
    pinned = [seconds for at, seconds in side.claims if window[0] <= at <= window[1]]
    growth = side.sizes[-1] - side.sizes[0]
    return (
        f"{side.name:9}: {side.writes} writes; claim latency {latency_line(values)}; "
        f"while pinned {latency_line(pinned)}; hot tables {side.sizes[0] / 2**20:.1f} -> "
        f"{side.sizes[-1] / 2**20:.1f} MiB (peak {max(side.sizes) / 2**20:.1f}), growth "
        f"{growth / 2**20:.1f} MiB; they hold "
        + ", ".join(f"{what} {count}" for what, count in sorted(side.holds.items()))
    )


async def run(args: argparse.Namespace) -> None:
    with (
        environment("pinned_xmin") as bench,
        local_postgres(env("PROCQUEUE_TEST_DATABASE_URL")) as admin,
        scratch_database(admin, "pq_bench_pinned_plain") as plain_dsn,
    ):
        install_plain_procrastinate(plain_dsn)
        with psycopg.connect(plain_dsn, autocommit=True) as conn:
            conn.execute(PLAIN_SCHEMA)
        ids: list[str] = []
        for dsn, table in ((bench.dsn, "listings"), (plain_dsn, "plain_listings")):
            with psycopg.connect(dsn, autocommit=True) as conn:
                seeded = conn.execute(SEED.format(table=table) + " RETURNING id", [SEED_ROWS])
                ids = [str(row[0]) for row in seeded.fetchall()]
        worker_env = await synced_seed(bench.dsn, bench.es_url, bench.settings().index_prefix)
        with psycopg.connect(plain_dsn, autocommit=True) as conn:
            conn.execute("DELETE FROM public.procrastinate_jobs")

        async def start_workers() -> list[asyncio.subprocess.Process]:
            procqueue_worker = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "procqueue.cli", "worker", env=worker_env,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
            plain_worker = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "benchmarks.pinned_xmin", "--serve-plain", plain_dsn,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
            return [procqueue_worker, plain_worker]

        procqueue_side = Side("procqueue", bench.dsn, "listings", ids)
        plain_side = Side("plain", plain_dsn, "plain_listings", ids)
        window = await measure(procqueue_side, plain_side, args, start_workers)
    print(
        f"{args.minutes:g} min of single-row UPDATEs at {args.rate:g}/s per system, xmin "
        f"pinned from minute {args.pin_at:g} for {args.pin_minutes:g} min"
    )
    print(report(procqueue_side, window))
    print(report(plain_side, window))
    ratio = (procqueue_side.sizes[-1] - procqueue_side.sizes[0]) / max(
        1, plain_side.sizes[-1] - plain_side.sizes[0]
    )
    print(f"hot-table growth, procqueue / plain: {ratio:.2f}")
    print("targets: claim latency p99 < 1000 ms (pinned window included); growth <= 2.0")


def serve_plain(dsn: str) -> None:
    """Plain Procrastinate's worker (its defaults, concurrency 10), a no-op task."""
    import procrastinate

    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=dsn))

    @app.task(name="listing:update", queue="sync")
    async def sync(id: str) -> None:
        return None

    async def work() -> None:
        async with app.open_async():
            await app.run_worker_async(concurrency=10)

    asyncio.run(work())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--pin-at", type=float, default=10, help="minutes")
    parser.add_argument("--pin-minutes", type=float, default=5)
    parser.add_argument("--serve-plain", metavar="DSN", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_plain:
        serve_plain(args.serve_plain)
    else:
        asyncio.run(run(args))


if __name__ == "__main__":
    main()
