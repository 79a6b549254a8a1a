"""procqueue and PGSync side by side (issue 14): the same PostgreSQL cluster, the
same ES-API server, the same N-row `listings` table, in one run; plus a direct
`_bulk` of the same documents on the same server as the ceiling.

    .venv/bin/python -m benchmarks.vs_pgsync [--rows 100000] [--updates 10000] [--runs 3]
    .venv/bin/python -m benchmarks.vs_pgsync --quick      # a smoke test, a minute or two

Set-up: a throwaway cluster of its own with `wal_level=logical` (PGSync's replication
slot), one database per system with identical rows (so neither pays for the other's
triggers), PGSync 7.3.0 in its own virtualenv (benchmarks/pgsync_side.py) with its
queue in Redis (`--redis-url`, a database of its own; its keys are removed at the
end), procqueue's `procqueue worker` as a subprocess with its defaults except the
periodic reconciliation, which is off (it would check 5,000 rows in the middle of a
measurement); other `PROCQUEUE_*` settings pass through from the environment
(`PROCQUEUE_SYNC_BATCH_SIZE=1000 .venv/bin/python -m benchmarks.vs_pgsync`). Each
run, the systems' order rotates:

1. initial sync rows/s: `procqueue reindex listings` / a one-shot `pgsync` run / a
   direct bulk of the same documents, each into an empty index of its own while the
   other two indexes are in the server (an untimed first round builds them);
2. U single-row UPDATEs of distinct rows, as fast as one connection commits them,
   with the consumers running (`procqueue worker`, `pgsync --daemon`): rows/s from the
   first write until all U documents show their new title in an `mget` (not
   `_count`: the emulator pays seconds for it); the direct side `_bulk`s the same U
   documents with new titles over the existing ones;
3. isolated update commit -> visible (a GET shows the new title), one system at a
   time in alternation, random gaps (the emulator stalls ~0.45 s every ~1.6 s, so
   fixed intervals would alias with it);
4. write tps of a pgbench single-row UPDATE loop on `listings` (the system's
   triggers) ÷ on an identical table without triggers, consumers stopped: what the
   triggers cost the user's write.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from elasticsearch import AsyncElasticsearch, helpers

from benchmarks.common import (
    USER_ID,
    Environment,
    es_server_marker,
    logical_cluster,
    percentile,
    postmaster_pid,
    process_cpu_seconds,
    tree_cpu_seconds,
)
from benchmarks.pgsync_side import DEFAULT_VENV, PgSync, ensure_venv
from benchmarks.sync_latency import until_worker_registered
from benchmarks.trigger_overhead import pgbench_tps
from procqueue.entities import LISTING
from procqueue.local import env, local_search, scratch_database
from procqueue.migrate import migrate
from procqueue.search.client import make_client
from tests.support.cluster import ThrowawayCluster
from tests.support.worker import table_documents

SYSTEMS = ("procqueue", "pgsync", "direct")
#: Every client's Elasticsearch request timeout: a loaded, shared emulator can take
#: longer than the clients' default 10 s for a large `_bulk`.
ES_TIMEOUT = 60.0

# Identical rows in both databases: ids and values are functions of the row number.
SEED = """
INSERT INTO auth.users (id) VALUES ('{user}');
INSERT INTO public.listings (id, user_id, title, description, category, budget, location,
                             status, created_at)
SELECT md5('listing ' || g)::uuid, '{user}', 'listing ' || g,
       'a used item in good condition, number ' || g,
       (ARRAY['tools', 'books', 'garden'])[1 + g % 3], g % 1000, 'city ' || g % 50, 'active',
       timestamptz '2026-01-01' + g * interval '1 s'
FROM generate_series(1, {rows}) AS g;
CREATE TABLE public.listings_plain (LIKE public.listings INCLUDING ALL);
INSERT INTO public.listings_plain SELECT * FROM public.listings;
CREATE TABLE public.bench_ids (n int PRIMARY KEY, id uuid NOT NULL);
INSERT INTO public.bench_ids
SELECT g, md5('listing ' || g)::uuid FROM generate_series(1, {rows}) AS g;
-- The sample schema's own trigger (review notifications) is the user's, not either system's.
ALTER TABLE public.listings DISABLE TRIGGER listing_review_notification;
"""

PGBENCH_UPDATE = (
    "\\set n random(1, {rows})\n"
    "UPDATE public.{table} SET title = 'bench ' || :n || ' ' || random() "
    "WHERE id = (SELECT id FROM public.bench_ids WHERE n = :n);\n"
)


def row_id(number: int) -> str:
    """The id SEED gives row `number` (md5 of 'listing N' as a uuid)."""
    import hashlib

    return str(uuid.UUID(hashlib.md5(f"listing {number}".encode()).hexdigest()))


@dataclass(frozen=True)
class Options:
    rows: int
    updates: int
    runs: int
    samples: int
    tps_seconds: int
    tps_rounds: int
    redis_url: str
    pgsync_venv: Path


@dataclass
class Results:
    """Every figure of every run, by measure and system."""

    figures: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, measure: str, system: str, value: float) -> None:
        self.figures.setdefault(measure, {}).setdefault(system, []).append(value)

    def get(self, measure: str, system: str) -> list[float]:
        return self.figures.get(measure, {}).get(system, [])


@dataclass(frozen=True)
class Bench:
    options: Options
    cluster: ThrowawayCluster
    es: AsyncElasticsearch
    es_marker: str | None  # how to find the local ES-API server's process, for its CPU
    procqueue_env: Mapping[str, str]
    procqueue_dsn: str
    pgsync_dsn: str
    pgsync: PgSync
    index: Mapping[str, str]  # where each system's documents are read


# -- Elasticsearch helpers -------------------------------------------------------------


async def drop_indexes(es: AsyncElasticsearch, pattern: str) -> None:
    found = await es.indices.get(index=pattern, ignore_unavailable=True, allow_no_indices=True)
    for name in found:
        await es.indices.delete(index=name)


async def stale_ids(
    es: AsyncElasticsearch, index: str, expected: Mapping[str, str], *, stop_early: bool
) -> list[str]:
    """The ids (in `expected`'s order) whose document is missing or has another title.
    `stop_early`: stop at the first chunk with a stale one and count the rest as stale
    too; changes drain roughly in order, so while waiting only the oldest 100 are read
    (polling must not load the server that the system under test is writing to)."""
    ids = list(expected)
    stale: list[str] = []
    start = 0
    while start < len(ids):
        chunk = ids[start : start + (100 if stop_early and start == 0 else 1000)]
        response = await es.mget(index=index, ids=chunk, source_includes=["title"])
        for doc in response["docs"]:
            title = doc.get("_source", {}).get("title") if doc.get("found") else None
            if title != expected[doc["_id"]]:
                stale.append(doc["_id"])
        start += len(chunk)
        if stale and stop_early:
            return stale + ids[start:]
    return stale


async def until_visible(
    es: AsyncElasticsearch, index: str, expected: Mapping[str, str], timeout: float
) -> tuple[float, int]:
    """(perf_counter when every document showed its expected title, how many did not
    by `timeout`)."""
    pending = dict(expected)
    deadline = time.perf_counter() + timeout
    while True:
        still = await stale_ids(es, index, pending, stop_early=True)
        now = time.perf_counter()
        if not still or now > deadline:
            return now, len(still)
        pending = {key: pending[key] for key in still}
        await asyncio.sleep(0.2)


async def direct_bulk(es: AsyncElasticsearch, index: str, docs: Mapping[str, Any]) -> None:
    actions = ({"_index": index, "_id": key, "_source": doc} for key, doc in docs.items())
    await helpers.async_bulk(es, actions, chunk_size=1000)


# -- processes -------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def procqueue_worker(bench: Bench) -> AsyncIterator[asyncio.subprocess.Process]:
    """`procqueue worker` (its defaults), yielded once it is registered."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "procqueue.cli", "worker", env=dict(bench.procqueue_env),
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        await until_worker_registered(bench.procqueue_dsn)
        yield process
    finally:
        process.terminate()
        await process.wait()


@dataclass(frozen=True)
class CpuMeter:
    """CPU seconds of the consumer, Postgres and the ES-API server, between two reads."""

    consumer: int | None  # None: this process (the direct side)
    postmaster: int
    es_marker: str | None

    def read(self) -> tuple[float, float, float]:
        consumer = time.process_time() if self.consumer is None else tree_cpu_seconds(self.consumer)
        es = process_cpu_seconds(self.es_marker) if self.es_marker else None
        return consumer, tree_cpu_seconds(self.postmaster), es or 0.0


# -- the measures ----------------------------------------------------------------------


async def initial_sync(bench: Bench, system: str, documents: Mapping[str, Any]) -> float:
    """Seconds to copy the whole table into an empty index."""
    es = bench.es
    if system == "procqueue":
        await drop_indexes(es, f"{bench.index['procqueue']}_v*")
        started = time.perf_counter()
        reindex = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "procqueue.cli", "reindex", "listings",
            env=dict(bench.procqueue_env), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        _, errors = await reindex.communicate()
        if reindex.returncode != 0:
            raise RuntimeError(f"procqueue reindex failed: {errors.decode()[-2000:]}")
        return time.perf_counter() - started
    if system == "pgsync":
        bench.pgsync.bootstrap()  # a fresh slot, checkpoint and queue each run
        await drop_indexes(es, bench.index["pgsync"])
        return bench.pgsync.initial_sync()
    await drop_indexes(es, bench.index["direct"])
    await es.indices.create(index=bench.index["direct"], mappings=LISTING.mappings())
    started = time.perf_counter()
    await direct_bulk(es, bench.index["direct"], documents)
    return time.perf_counter() - started


async def titles(dsn: str, ids: Sequence[str]) -> dict[str, str]:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cursor = await conn.execute(
            "SELECT id::text, title FROM public.listings WHERE id = ANY(%s::uuid[])", [list(ids)]
        )
        return {key: title for key, title in await cursor.fetchall()}


async def drain_updates(
    bench: Bench,
    system: str,
    ids: Sequence[str],
    run: int,
    documents: Mapping[str, Any],
    meter: CpuMeter,
    alive: Callable[[], bool],
) -> dict[str, float]:
    """Rows/s from the first of `ids`' single-row updates until all are visible."""
    expected = {key: f"run {run} {system} {n}" for n, key in enumerate(ids)}
    before = meter.read()
    started = time.perf_counter()
    if system == "direct":
        changed = {key: {**documents[key], "title": title} for key, title in expected.items()}
        await direct_bulk(bench.es, bench.index["direct"], changed)
    else:
        dsn = bench.procqueue_dsn if system == "procqueue" else bench.pgsync_dsn
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            for key, title in expected.items():
                await conn.execute(
                    "UPDATE public.listings SET title = %s WHERE id = %s", [title, key]
                )
    written = time.perf_counter() - started
    done, stale = await until_visible(
        bench.es, bench.index[system], expected, timeout=max(120.0, len(ids) / 20)
    )
    after = meter.read()
    if stale and alive():
        # Untimed: a backlog left behind would slow the next system's measurement.
        await until_visible(bench.es, bench.index[system], expected, timeout=len(ids) / 10)
    cpu = [b - a for a, b in zip(before, after, strict=True)]
    return {
        "rate": (len(ids) - stale) / (done - started),
        "seconds": done - started,
        "written": written,
        "stale": stale,
        "cpu_consumer": cpu[0],
        "cpu_postgres": cpu[1],
        "cpu_es": cpu[2],
    }


async def isolated_latency(
    bench: Bench, system: str, conn: psycopg.AsyncConnection[Any], key: str, timeout: float = 30.0
) -> float | None:
    """Commit -> a GET shows the new title, in seconds; None if not within `timeout`."""
    title = f"latency {uuid.uuid4().hex}"
    await conn.execute("UPDATE public.listings SET title = %s WHERE id = %s", [title, key])
    committed = time.perf_counter()
    while time.perf_counter() - committed < timeout:
        doc = await bench.es.get(index=bench.index[system], id=key, source_includes=["title"])
        if doc["_source"].get("title") == title:
            return time.perf_counter() - committed
        await asyncio.sleep(0.002)
    return None


async def latencies(
    bench: Bench, run: int, results: Results, alive: Mapping[str, Callable[[], bool]]
) -> None:
    rng = random.Random(1000 + run)
    async with (
        await psycopg.AsyncConnection.connect(bench.procqueue_dsn, autocommit=True) as pq,
        await psycopg.AsyncConnection.connect(bench.pgsync_dsn, autocommit=True) as pgs,
    ):
        connections = {"procqueue": pq, "pgsync": pgs}
        for sample in range(bench.options.samples):
            order = list(connections) if sample % 2 == 0 else list(reversed(connections))
            for system in order:
                if not alive[system]():
                    continue
                await asyncio.sleep(rng.uniform(0.05, 0.6))
                key = row_id(rng.randint(1, bench.options.rows))
                latency = await isolated_latency(bench, system, connections[system], key)
                if latency is None:
                    results.add("latency misses", system, 1)
                else:
                    results.add("latency", system, latency)


def write_tps(bench: Bench, run: int, results: Results) -> None:
    """pgbench rounds, alternating: each system's table with its triggers, then without."""
    variants = [
        (system, variant, dsn, table)
        for system, dsn in (("procqueue", bench.procqueue_dsn), ("pgsync", bench.pgsync_dsn))
        for variant, table in (("with", "listings"), ("without", "listings_plain"))
    ]
    for round_number in range(bench.options.tps_rounds):
        shift = (run + round_number) % len(variants)
        for system, variant, dsn, table in variants[shift:] + variants[:shift]:
            script = PGBENCH_UPDATE.format(rows=bench.options.rows, table=table)
            tps = pgbench_tps(dsn, script, bench.options.tps_seconds)
            results.add(f"tps {variant}", system, tps)


async def one_run(bench: Bench, run: int, results: Results) -> None:
    options = bench.options
    order = list(SYSTEMS[run % 3 :] + SYSTEMS[: run % 3])
    print(f"\nrun {run + 1}/{options.runs} (order: {', '.join(order)})", flush=True)
    documents = await table_documents(bench.procqueue_dsn, LISTING)

    for system in order:
        seconds = await initial_sync(bench, system, documents)
        results.add("initial rows/s", system, options.rows / seconds)
        print(f"  initial sync {system:9}: {options.rows / seconds:8,.0f} rows/s ({seconds:.1f} s)")
    sample = [row_id(n) for n in random.Random(run).sample(range(1, options.rows + 1), 2000)]
    for system in ("procqueue", "pgsync"):
        # each against its own database: from the second run on, the update phases and
        # the write-tps rounds have given the two databases' rows different titles
        dsn = bench.procqueue_dsn if system == "procqueue" else bench.pgsync_dsn
        expected = await titles(dsn, sample)
        missing = await stale_ids(bench.es, bench.index[system], expected, stop_early=False)
        if missing:
            results.notes.append(f"run {run + 1}: {system}'s initial sync lacks {len(missing)} "
                                 "of 2,000 sampled documents")  # fmt: skip

    ids = [row_id(n) for n in random.Random(run + 100).sample(range(1, options.rows + 1),
                                                                 options.updates)]  # fmt: skip
    postmaster = postmaster_pid(bench.cluster.dsn)
    with bench.pgsync.daemon() as daemon:
        async with procqueue_worker(bench) as worker:
            consumers = {"procqueue": worker.pid, "pgsync": daemon.pid, "direct": None}
            alive: dict[str, Callable[[], bool]] = {
                "procqueue": lambda: worker.returncode is None,
                "pgsync": lambda: daemon.poll() is None,
                "direct": lambda: True,
            }
            for system in order:
                meter = CpuMeter(consumers[system], postmaster, bench.es_marker)
                drained = await drain_updates(
                    bench, system, ids, run, documents, meter, alive[system]
                )
                results.add("drain rows/s", system, drained["rate"])
                for part in ("consumer", "postgres", "es"):
                    results.add(f"drain cpu {part}", system, drained[f"cpu_{part}"])
                if drained["stale"]:
                    results.notes.append(f"run {run + 1}: {system} left {drained['stale']:.0f} "
                                         "documents stale at the timeout")  # fmt: skip
                print(
                    f"  {options.updates:,} updates {system:9}: {drained['rate']:6,.0f} rows/s "
                    f"({drained['seconds']:.1f} s, writes {drained['written']:.1f} s; CPU s: "
                    f"consumer {drained['cpu_consumer']:.1f}, Postgres "
                    f"{drained['cpu_postgres']:.1f}, ES-API {drained['cpu_es']:.1f})",
                    flush=True,
                )
            await latencies(bench, run, results, alive)
            for system in ("procqueue", "pgsync"):
                if not alive[system]():
                    results.notes.append(
                        f"run {run + 1}: {system}'s consumer exited during the run"
                    )
    for system in ("procqueue", "pgsync"):
        values = results.get("latency", system)[-options.samples :]
        if not values:
            continue
        print(f"  latency {system:9}: p50 {percentile(values, 0.5) * 1000:.0f} ms, "
              f"p99 {percentile(values, 0.99) * 1000:.0f} ms (this run)")  # fmt: skip
    write_tps(bench, run, results)
    with psycopg.connect(bench.procqueue_dsn, autocommit=True) as conn:
        # pgbench's backlog, left unsynced (the next run's initial sync rewrites every
        # document): otherwise the next run's worker would sync it while it is measured
        conn.execute("DELETE FROM procqueue.sync_changes")
        conn.execute("DELETE FROM procrastinate.procrastinate_jobs")
    for system in ("procqueue", "pgsync"):
        with_, without = (results.get(f"tps {v}", system)[-options.tps_rounds :]
                          for v in ("with", "without"))  # fmt: skip
        print(f"  write tps {system:9}: with triggers {statistics.fmean(with_):,.0f}, without "
              f"{statistics.fmean(without):,.0f}")  # fmt: skip


# -- report ----------------------------------------------------------------------------


def spread(values: Sequence[float], digits: int = 0) -> str:
    """The mean, and the range when there are several runs."""
    if not values:
        return "—"
    text = f"{statistics.fmean(values):,.{digits}f}"
    if len(values) > 1:
        text += f" ({min(values):,.{digits}f}–{max(values):,.{digits}f})"
    return text


def row(*cells: str) -> None:
    print("| " + " | ".join(cells) + " |")


def report(options: Options, results: Results) -> None:
    def mean(measure: str, system: str) -> float:
        values = results.get(measure, system)
        return statistics.fmean(values) if values else float("nan")

    def cells(measure: str, systems: Sequence[str], digits: int = 0) -> list[str]:
        return [spread(results.get(measure, system), digits) for system in systems]

    print(f"\n{options.rows:,} rows, {options.updates:,} updates, {options.runs} run(s); "
          "mean (min–max) over runs")  # fmt: skip
    row("measure", "procqueue", "PGSync", "direct `_bulk`", "procqueue ÷ PGSync",
        "procqueue ÷ direct", "PGSync ÷ direct")  # fmt: skip
    row(*["---"] * 7)
    for measure, label in (
        ("initial rows/s", "initial sync, rows/s"),
        ("drain rows/s", f"{options.updates:,} single-row updates drained, rows/s"),
    ):
        pq, pgs, direct = (mean(measure, system) for system in SYSTEMS)
        ratios = (pq / pgs, pq / direct, pgs / direct)
        row(label, *cells(measure, SYSTEMS), *(f"{value:.2f}" for value in ratios))
    for part in ("consumer", "postgres", "es"):
        measure = f"drain cpu {part}"
        ratio = mean(measure, "procqueue") / max(mean(measure, "pgsync"), 1e-9)
        row(f"CPU s during the drain: {part}", *cells(measure, SYSTEMS, 1), f"{ratio:.1f}", "", "")
    latency = {system: results.get("latency", system) for system in ("procqueue", "pgsync")}
    for fraction in (0.5, 0.99):
        pq, pgs = (
            percentile(latency[s], fraction) if latency[s] else float("nan")
            for s in ("procqueue", "pgsync")
        )
        label = f"isolated update, commit → visible p{int(fraction * 100)}, ms"
        row(label, f"{pq * 1000:.0f}", f"{pgs * 1000:.0f}", "", f"{pq / pgs:.2f}", "", "")
    misses = [len(results.get("latency misses", system)) for system in ("procqueue", "pgsync")]
    row("latency samples (misses: not visible in 30 s)",
        *(f"{len(latency[s])} ({m})" for s, m in zip(latency, misses, strict=True)),
        "", "", "", "")  # fmt: skip
    for variant in ("with", "without"):
        row(f"write tps {variant} triggers", *cells(f"tps {variant}", ("procqueue", "pgsync")),
            "", "", "", "")  # fmt: skip
    pq, pgs = (mean("tps with", s) / mean("tps without", s) for s in ("procqueue", "pgsync"))
    row("write tps, triggers ÷ none", f"{pq:.2f}", f"{pgs:.2f}", "", f"{pq / pgs:.2f}", "", "")
    for note in results.notes:
        print(f"note: {note}")


# -- set-up ----------------------------------------------------------------------------


@contextlib.contextmanager
def databases(cluster: ThrowawayCluster, token: str, rows: int) -> Iterator[tuple[str, str]]:
    """(procqueue's, PGSync's) database, seeded alike; procqueue's migrated after the seed."""
    with (
        scratch_database(cluster.dsn, f"vs_{token}_procqueue") as procqueue_dsn,
        scratch_database(cluster.dsn, f"vs_{token}_pgsync") as pgsync_dsn,
    ):
        for dsn in (procqueue_dsn, pgsync_dsn):
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(SEED.format(user=USER_ID, rows=int(rows)))
                conn.execute("VACUUM ANALYZE")
        migrate(procqueue_dsn)
        yield procqueue_dsn, pgsync_dsn


async def run(options: Options) -> None:
    bin_dir = ensure_venv(options.pgsync_venv)
    token = uuid.uuid4().hex[:6]
    prefix = f"vs{token}_"
    index = {
        "procqueue": f"{prefix}{LISTING.index}",
        "pgsync": f"{prefix}pgsync_listings",
        "direct": f"{prefix}direct_listings",
    }
    results = Results()
    with (
        logical_cluster() as cluster,
        databases(cluster, token, options.rows) as (procqueue_dsn, pgsync_dsn),
        local_search(env("ELASTICSEARCH_URL")) as es_url,
        tempfile.TemporaryDirectory(prefix="procqueue-vs-pgsync-") as work_dir,
    ):
        settings = Environment(procqueue_dsn, es_url).settings(
            index_prefix=prefix, elasticsearch_timeout=ES_TIMEOUT
        )
        es = make_client(settings.search)
        pgsync = PgSync.configure(
            bin_dir, Path(work_dir), host="127.0.0.1", port=cluster.port,
            database=f"vs_{token}_pgsync", index=index["pgsync"], es_url=es_url,
            es_timeout=ES_TIMEOUT, redis_url=options.redis_url, table=LISTING.table,
            columns=list(LISTING.fields), properties=LISTING.mappings()["properties"],
        )  # fmt: skip
        bench = Bench(
            options=options,
            cluster=cluster,
            es=es,
            es_marker=None if env("ELASTICSEARCH_URL") else es_server_marker(es_url),
            procqueue_env={
                **os.environ,
                "DATABASE_URL": procqueue_dsn,
                "ELASTICSEARCH_URL": es_url,
                "PROCQUEUE_INDEX_PREFIX": prefix,
                "PROCQUEUE_RECONCILE_CRON": "",
                "PROCQUEUE_ELASTICSEARCH_TIMEOUT": str(ES_TIMEOUT),
            },
            procqueue_dsn=procqueue_dsn,
            pgsync_dsn=pgsync_dsn,
            pgsync=pgsync,
            index=index,
        )
        print(f"PostgreSQL {cluster.dsn} (wal_level=logical), ES-API {es_url}, "
              f"Redis {options.redis_url}, PGSync from {bin_dir}")  # fmt: skip
        try:
            # Untimed: every system's index exists before the first timed initial sync,
            # so each one rebuilds its own index with the other two in the server: the
            # emulator slows with everything it stores (it saves its whole state every
            # ~1.6 s), and an empty server would favour whichever system went first.
            documents = await table_documents(procqueue_dsn, LISTING)
            for system in SYSTEMS:
                await initial_sync(bench, system, documents)
            for number in range(options.runs):
                await one_run(bench, number, results)
        finally:
            pgsync.teardown()
            with contextlib.suppress(Exception):
                await drop_indexes(es, f"{prefix}*")
            await es.close()
    report(options, results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--updates", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--samples", type=int, default=60,
                        help="isolated updates per system per run")  # fmt: skip
    parser.add_argument("--tps-seconds", type=int, default=5)
    parser.add_argument("--tps-rounds", type=int, default=2)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/13")
    parser.add_argument("--pgsync-venv", type=Path, default=DEFAULT_VENV)
    parser.add_argument("--quick", action="store_true",
                        help="a small run for a smoke test (a minute or two)")  # fmt: skip
    args = parser.parse_args()
    if args.quick:
        args.rows, args.updates, args.runs = 5_000, 500, 1
        args.samples, args.tps_seconds, args.tps_rounds = 15, 2, 1
    if args.updates > args.rows:
        parser.error("--updates cannot exceed --rows (each update is a distinct row)")
    # SIGTERM cleans up like Ctrl-C: the cluster, the daemon, Redis keys, indexes.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    options = Options(
        rows=args.rows, updates=args.updates, runs=args.runs, samples=args.samples,
        tps_seconds=args.tps_seconds, tps_rounds=args.tps_rounds, redis_url=args.redis_url,
        pgsync_venv=args.pgsync_venv,
    )  # fmt: skip
    asyncio.run(run(options))


if __name__ == "__main__":
    main()
