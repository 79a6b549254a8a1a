"""Sustained single-row writes: commit -> visible in a GET, and the backlog after.

Writers commit single-row writes of `listings` at --rate per second (exponential gaps,
dispatched to --writers connections so a slow commit does not lower the rate) for
--seconds, while --workers `procqueue worker` processes (default settings) keep the
index in step, all on this machine. Every 10 ms a probe sends one `mget` of the
PROBE_BATCH oldest writes not yet visible and stamps each write when its document shows
what was written. The cap keeps the probe's own load on the ES-API server fixed (an
`mget` costs that server ~15 µs of CPU per document: probing a backlog of thousands
every 10 ms would take more than its core and slow the very writes it waits for); with
more writes pending than the cap, a younger write that became visible early is stamped
when it reaches the probe's window, so a backlog can only make the latencies worse.
After the load: how long until every write is visible and no sync job is left.

Side by side, same run, same rate: the direct path, where each writer indexes its row
itself right after committing (procqueue's triggers off), measured by the same probe.

    .venv/bin/python -m benchmarks.sustained_load [--rate 500] [--seconds 60] [--kind insert]

`--kind insert` writes new listings (new documents); `--kind update` overwrites seeded
ones (the ES-API emulator's slow path: about 20 times slower than an insert).
Target (issue 14): at 500/s with 2 workers, p99 <= 1 s and drained <= 2 s after.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import random
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.rows import dict_row

from benchmarks.common import (
    USER_ID,
    Environment,
    arrive_at_rate,
    environment,
    es_server_marker,
    machine_cpu,
    percentile,
    process_cpu_seconds,
)
from benchmarks.sync_latency import DRAIN, until_worker_registered
from procqueue.entities import LISTING
from procqueue.search.client import SearchIndex, make_client
from procqueue.search.document import document_from_row
from procqueue.search.sync import entity_query

CORES = os.cpu_count() or 1
PROBE_BATCH = 100
DRAIN_TIMEOUT = 600.0  # seconds after the load for every write to become visible
BACKLOG = (
    "SELECT count(*) FROM procrastinate.procrastinate_jobs "
    "WHERE status IN ('todo', 'doing') AND task_name LIKE 'listing:%%'"
)


@dataclass
class Probe:
    """Writes not yet visible (id -> (title, committed at)) and the latencies seen."""

    index: str
    pending: dict[str, tuple[str, float]] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    superseded: int = 0

    def wrote(self, listing_id: str, title: str, committed: float) -> None:
        if listing_id in self.pending:
            self.superseded += 1  # only the newest write of a row can become visible
        self.pending[listing_id] = (title, committed)

    async def watch(self, search: SearchIndex, stop: asyncio.Event) -> None:
        while not (stop.is_set() and not self.pending):
            await asyncio.sleep(0.01)
            if not self.pending:
                continue
            wanted = dict(itertools.islice(self.pending.items(), PROBE_BATCH))
            answer = await search.client.mget(
                index=self.index, ids=list(wanted), source_includes=["title"]
            )
            seen = time.perf_counter()
            for doc in answer["docs"]:
                title, committed = wanted[doc["_id"]]
                if doc.get("found") and doc["_source"].get("title") == title:
                    if self.pending.get(doc["_id"]) == (title, committed):
                        del self.pending[doc["_id"]]
                        self.latencies.append(seen - committed)


Write = Callable[[psycopg.AsyncConnection[Any], str | None, str], Awaitable[str]]


async def load(
    dsn: str, write: Write, probe: Probe, ids: list[str], rate: float, seconds: float,
    writers: int,
) -> int:  # fmt: skip
    """`write` at `rate` per second for `seconds`; returns how many were made."""
    rng = random.Random(11)
    arrivals: asyncio.Queue[str | None] = asyncio.Queue()
    made = 0

    async def writer() -> None:
        nonlocal made
        async with await psycopg.AsyncConnection.connect(
            dsn, autocommit=True, row_factory=dict_row
        ) as conn:
            while (title := await arrivals.get()) is not None:
                target = rng.choice(ids) if ids else None
                listing_id = await write(conn, target, title)
                probe.wrote(listing_id, title, time.perf_counter())
                made += 1

    tasks = [asyncio.create_task(writer()) for _ in range(writers)]
    await arrive_at_rate(
        arrivals, lambda: f"t{uuid.uuid4().hex[:12]}", rng, rate, seconds, len(tasks)
    )
    await asyncio.gather(*tasks)
    return made


async def insert_listing(conn: psycopg.AsyncConnection[Any], _: str | None, title: str) -> str:
    cursor = await conn.execute(
        "INSERT INTO listings (user_id, title) VALUES (%s, %s) RETURNING id::text",
        [USER_ID, title],
    )
    row = await cursor.fetchone()
    assert row is not None
    return str(row["id"])


async def update_listing(
    conn: psycopg.AsyncConnection[Any], listing_id: str | None, title: str
) -> str:
    assert listing_id is not None
    await conn.execute("UPDATE listings SET title = %s WHERE id = %s", [title, listing_id])
    return listing_id


def directly(write: Write, search: SearchIndex) -> Write:
    """`write`, then read the row and index it from the writer itself."""
    read = entity_query("read_entity_row", LISTING)

    async def write_and_index(
        conn: psycopg.AsyncConnection[Any], listing_id: str | None, title: str
    ) -> str:
        written = await write(conn, listing_id, title)
        row = await (await conn.execute(read, {"id": written})).fetchone()
        assert row is not None
        await search.put(LISTING, written, document_from_row(LISTING, row))
        return written

    return write_and_index


@dataclass(frozen=True)
class Outcome:
    made: int
    latencies: list[float]
    superseded: int
    drained_after: float
    max_backlog: int
    es_cpu: float  # the ES-API server's CPU seconds, load and drain
    machine_busy: float  # share of all cores busy during the load, 0..1


async def still_pending(dsn: str, probe: Probe) -> str:
    """Why writes are still not visible: their rows' jobs by state, their error
    records and the circuits, read before the benchmark's database is dropped."""
    locks = [f"listing:{listing_id}" for listing_id in probe.pending]
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        jobs = await (await conn.execute(
            "SELECT status::text, count(*) FROM procrastinate.procrastinate_jobs "
            "WHERE lock = ANY(%s) GROUP BY 1", [locks],
        )).fetchall()  # fmt: skip
        errors = await (await conn.execute(
            "SELECT e.error_type, count(*) FROM procqueue.job_errors AS e "
            "JOIN procrastinate.procrastinate_jobs AS j ON j.id = e.job_id "
            "WHERE j.lock = ANY(%s) GROUP BY 1", [locks],
        )).fetchall()  # fmt: skip
        circuits = await (await conn.execute(
            "SELECT sink, is_open FROM procqueue.sink_circuits"
        )).fetchall()  # fmt: skip
    return (
        f"{len(probe.pending)} writes still not visible {DRAIN_TIMEOUT:g} s after the load "
        f"ended; their rows' jobs {dict(jobs)}, error records {dict(errors)}, circuits "
        f"{dict(circuits)}"
    )


async def measure(
    env: Environment, search: SearchIndex, write: Write, ids: list[str], args: argparse.Namespace
) -> Outcome:
    probe = Probe(search.alias(LISTING))
    stop = asyncio.Event()
    watching = asyncio.create_task(probe.watch(search, stop))
    max_backlog = 0
    started = time.perf_counter()

    async def sample_backlog() -> None:
        nonlocal max_backlog
        async with await psycopg.AsyncConnection.connect(env.dsn, autocommit=True) as conn:
            while not stop.is_set():
                row = await (await conn.execute(BACKLOG)).fetchone()
                backlog = int(row[0]) if row else 0
                max_backlog = max(max_backlog, backlog)
                if args.timeline:
                    print(f"  {time.perf_counter() - started:5.1f} s: backlog {backlog}")
                await asyncio.sleep(0.5)

    sampling = asyncio.create_task(sample_backlog())
    es_server = es_server_marker(env.es_url)
    es_before = process_cpu_seconds(es_server) or 0.0
    busy_before = machine_cpu()
    made = await load(env.dsn, write, probe, ids, args.rate, args.seconds, args.writers)
    ended = time.perf_counter()
    machine_busy = machine_cpu().busy_share_since(busy_before)
    stop.set()
    try:
        await asyncio.wait_for(watching, timeout=DRAIN_TIMEOUT)
    except TimeoutError:
        raise RuntimeError(await still_pending(env.dsn, probe)) from None
    drained_after = time.perf_counter() - ended
    await sampling
    es_cpu = (process_cpu_seconds(es_server) or 0.0) - es_before
    return Outcome(made, probe.latencies, probe.superseded, drained_after, max_backlog, es_cpu,
                   machine_busy)  # fmt: skip


def report(name: str, outcome: Outcome, seconds: float) -> None:
    values = outcome.latencies
    cpu_per_write = outcome.machine_busy * CORES * seconds / outcome.made
    print(
        f"{name:7}: {outcome.made} writes ({outcome.made / seconds:.0f}/s), visible "
        f"p50 {percentile(values, 0.5) * 1000:.0f} ms, p99 {percentile(values, 0.99) * 1000:.0f} "
        f"ms, max {max(values) * 1000:.0f} ms (n={len(values)}, {outcome.superseded} "
        f"superseded); all visible {outcome.drained_after:.2f} s after the load; "
        f"largest backlog {outcome.max_backlog} jobs; ES-API server CPU "
        f"{outcome.es_cpu / outcome.made * 1000:.2f} ms per write; cores busy during the "
        f"load {outcome.machine_busy:.0%} ({cpu_per_write * 1000:.2f} ms of CPU per write)"
    )


async def run(args: argparse.Namespace) -> None:
    with environment("sustained_load") as env:
        settings = env.settings()
        ids: list[str] = []
        worker_env = {
            **os.environ,
            "DATABASE_URL": env.dsn,
            "ELASTICSEARCH_URL": env.es_url,
            "PROCQUEUE_INDEX_PREFIX": settings.index_prefix,
        }
        write: Write = insert_listing
        if args.kind == "update":
            write = update_listing
            async with await psycopg.AsyncConnection.connect(env.dsn, autocommit=True) as conn:
                cursor = await conn.execute(
                    "INSERT INTO listings (user_id, title) SELECT %s, 'seed ' || g "
                    "FROM generate_series(1, %s) AS g RETURNING id::text",
                    [USER_ID, int(args.rate * args.seconds)],
                )
                ids = [str(row[0]) for row in await cursor.fetchall()]
        # Index the seed (and create the index) before measuring.
        seeding = await asyncio.create_subprocess_exec(
            sys.executable, "-c", DRAIN, env=worker_env, stderr=subprocess.DEVNULL
        )
        await seeding.wait()
        search = SearchIndex(make_client(settings.search), settings.index_prefix)
        command = [sys.executable, "-m", "procqueue.cli", "worker"]
        workers = [
            await asyncio.create_subprocess_exec(
                *command, env=worker_env, stderr=subprocess.DEVNULL
            )
            for _ in range(args.workers)
        ]
        try:
            await until_worker_registered(env.dsn)
            queued = await measure(env, search, write, ids, args)
        finally:
            for worker in workers:
                worker.terminate()
            for worker in workers:
                await worker.wait()
        async with await psycopg.AsyncConnection.connect(env.dsn, autocommit=True) as conn:
            await conn.execute("ALTER TABLE listings DISABLE TRIGGER USER")
        try:
            direct = await measure(env, search, directly(write, search), ids, args)
        finally:
            await search.client.close()
    print(
        f"{args.kind} at {args.rate:g}/s for {args.seconds:g} s, {args.writers} writer "
        f"connections; queue: {args.workers} workers (default settings)"
    )
    report("queue", queued, args.seconds)
    report("direct", direct, args.seconds)
    for fraction in (0.5, 0.99):
        ratio = percentile(queued.latencies, fraction) / percentile(direct.latencies, fraction)
        print(f"queue / direct at p{int(fraction * 100)}: {ratio:.1f}")
    print("target: p99 <= 1000 ms, all visible <= 2 s after the load")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=500)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--kind", choices=("insert", "update"), default="insert")
    parser.add_argument("--timeline", action="store_true", help="print the backlog every 0.5 s")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
