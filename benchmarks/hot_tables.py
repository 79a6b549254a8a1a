"""What the hot queue tables hold after a million synced changes (issue 23, "the jobs
table stays small").

10,000 seeded `listings` rows take --changes single-row UPDATEs of random rows from
pgbench (--clients connections, flat out or at --rate per second in all) while one
`procqueue worker` with its defaults syncs them into an ES-API server. Once the writes
end and the queue is quiet (no change row waits, no job waits or runs), the script
prints what the hot tables hold, by table and state, their size, and the rows of the
log of first-attempt successes (procqueue.finished_attempts, migration 0026), then
checks that the index holds every row's latest title.

    .venv/bin/python -m benchmarks.hot_tables [--changes 1000000] [--clients 8] [--rate N]

Target: after 1,000,000 synced changes the hot tables hold only live and failed work
(no succeeded job, no event of one).
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from typing import Any

import psycopg
from elasticsearch import AsyncElasticsearch

from benchmarks.common import environment
from benchmarks.pinned_xmin import HOLDINGS, HOT_TABLES, SEED, synced_seed, table_bytes
from benchmarks.sync_latency import until_worker_registered
from benchmarks.trigger_overhead import pgbench_tps
from procqueue.entities import LISTING

SEED_ROWS = 10_000
# One random seeded row per transaction (the seed's ids are md5('listing ' || g)).
UPDATE_SCRIPT = f"""\\set n random(1, {SEED_ROWS})
UPDATE public.listings SET title = 'change ' || random() WHERE id = md5('listing ' || :n)::uuid;
"""
KEPT_SUCCESSES = """
SELECT j.task_name, p.reason, count(*)
FROM procrastinate.procrastinate_jobs AS j
LEFT JOIN procqueue.job_postponements AS p ON p.job_id = j.id
WHERE j.status = 'succeeded' AND j.attempts <= 1
GROUP BY 1, 2
"""
QUIET = """
SELECT NOT EXISTS (SELECT FROM procqueue.sync_changes)
   AND NOT EXISTS (SELECT FROM procrastinate.procrastinate_jobs
                   WHERE status IN ('todo', 'doing') AND queue_name <> 'maintenance')
"""


async def until_quiet(dsn: str, timeout: float) -> float:
    """Seconds until no change row waits and no job but maintenance waits or runs."""
    started = time.monotonic()
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        while time.monotonic() - started < timeout:
            row = await (await conn.execute(QUIET)).fetchone()
            if row and row[0]:
                return time.monotonic() - started
            await asyncio.sleep(0.5)
    raise TimeoutError(f"the queue was not quiet {timeout:g} s after the writes")


async def log_exists(conn: psycopg.AsyncConnection[Any]) -> bool:
    """The log of first-attempt successes exists (not with code before migration 0026,
    which this script also measures, for a before/after)."""
    row = await (
        await conn.execute("SELECT to_regclass('procqueue.finished_attempts') IS NOT NULL")
    ).fetchone()
    return bool(row and row[0])


async def titles_in_index(es_url: str, index: str) -> dict[str, str]:
    client = AsyncElasticsearch(es_url)
    try:
        await client.indices.refresh(index=index)
        found: dict[str, str] = {}
        answer = await client.search(
            index=index, size=SEED_ROWS, source_includes=["title"], query={"match_all": {}}
        )
        for hit in answer["hits"]["hits"]:
            found[hit["_id"]] = hit["_source"]["title"]
        return found
    finally:
        await client.close()


async def run(args: argparse.Namespace) -> None:
    with environment("hot_tables") as bench:
        with psycopg.connect(bench.dsn, autocommit=True) as conn:
            conn.execute(SEED.format(table="listings"), [SEED_ROWS])
        settings = bench.settings()
        worker_env = await synced_seed(bench.dsn, bench.es_url, settings.index_prefix)
        worker = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "procqueue.cli", "worker", env=worker_env,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            await until_worker_registered(bench.dsn)
            async with await psycopg.AsyncConnection.connect(bench.dsn) as conn:
                before = await table_bytes(conn, "procqueue")
            per_client = args.changes // args.clients
            started = time.monotonic()
            tps = await asyncio.to_thread(
                pgbench_tps, bench.dsn, UPDATE_SCRIPT, 0, args.clients, per_client, args.rate
            )
            wrote = time.monotonic() - started
            settled = await until_quiet(bench.dsn, timeout=1800)
            async with await psycopg.AsyncConnection.connect(bench.dsn) as conn:
                after = await table_bytes(conn, "procqueue")
                holds = {
                    str(what): int(count)
                    for what, count in await (await conn.execute(HOLDINGS["procqueue"])).fetchall()
                }
                kept_successes = await (await conn.execute(KEPT_SUCCESSES)).fetchall()
                logged = await (
                    await conn.execute(
                        "SELECT task_name, count(*) FROM procqueue.finished_attempts GROUP BY 1"
                        if await log_exists(conn)
                        else "SELECT 'none: no log before migration 0026', 0"
                    )
                ).fetchall()
                titles: dict[str, str] = dict(
                    await (await conn.execute("SELECT id::text, title FROM listings")).fetchall()
                )
        finally:
            worker.terminate()
            await worker.wait()
        indexed = await titles_in_index(bench.es_url, f"{settings.index_prefix}{LISTING.index}")
    changes = per_client * args.clients
    stale = len([key for key, title in titles.items() if indexed.get(key) != title])
    print(
        f"{changes} single-row UPDATEs of {SEED_ROWS} rows from {args.clients} pgbench clients "
        f"in {wrote:.0f} s ({tps:.0f} tps); queue quiet {settled:.1f} s after the last write"
    )
    print("hot tables hold: " + ", ".join(f"{k} {v}" for k, v in sorted(holds.items())))
    print(
        f"hot tables ({', '.join(HOT_TABLES['procqueue'])}): {before / 2**20:.1f} -> "
        f"{after / 2**20:.1f} MiB"
    )
    print("log of first-attempt successes: " + ", ".join(f"{t} {n}" for t, n in logged))
    print(f"index: {len(indexed)} documents, {stale} not at their row's latest title")
    # A job kept after a failed attempt holds failed work, whatever its end; one kept
    # after a postponement holds why it waited (an outage, a rate limit).
    kept = sum(count for _, _, count in kept_successes)
    print(
        f"first-attempt successes still in the jobs table: {kept}"
        + "".join(f"; {task}, postponed ({reason}): {n}" for task, reason, n in kept_successes)
    )
    unexplained = sum(count for _, reason, count in kept_successes if reason is None)
    verdict = "met" if not unexplained and not stale else "missed"
    print(f"target: only live and failed work in the hot tables: {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--changes", type=int, default=1_000_000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rate", type=float, help="changes per second in all (default: flat out)")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
