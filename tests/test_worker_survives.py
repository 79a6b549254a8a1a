"""A worker outlives its database: killed connections and a Postgres restart (a
throwaway cluster of this module's own, never the machine's server) never end the
worker process; it reconnects (LISTEN too: the polling interval here is 600 s),
its jobs in flight finish, and it exits only on SIGTERM, with status 0. A worker
shutting down keeps heartbeating until its jobs are done, so no other worker
rescues them; a worker taken for dead registers again; a configuration error
stops it at once with status 2 and one line."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from procqueue.app import build_app
from procqueue.engine.app import ProcqueueApp
from procqueue.engine.worker import WORKER_APPLICATION
from procqueue.entities import LISTING
from procqueue.migrate import migrate
from tests.conftest import make_settings
from tests.support import cli_worker
from tests.support.cluster import ThrowawayCluster, throwaway_cluster
from tests.support.history import run_cli
from tests.support.supabase import supabase_database
from tests.support.worker import (
    SELLER_ID,
    clear_queue,
    eventually,
    indexed_documents,
    job_counts,
    running_worker,
    table_documents,
)

RUN = uuid.uuid4().hex
DRAIN_TIMEOUT = 90


def index_prefix(database: str) -> str:
    """The indexes of one database's workers, in this run."""
    return f"t{uuid.uuid5(uuid.NAMESPACE_URL, RUN + database).hex[:8]}_"


def worker_env(database: str, es_url: str, **overrides: str) -> dict[str, str]:
    return {
        "DATABASE_URL": database,
        "ELASTICSEARCH_URL": es_url,
        "PROCQUEUE_INDEX_PREFIX": index_prefix(database),
        "PROCQUEUE_MAINTENANCE_TASKS": "false",
        # Only a working LISTEN makes jobs run promptly.
        "PROCQUEUE_POLLING_INTERVAL": "600",
        "PROCQUEUE_RETRY_BACKOFF": "0.1",
        "PROCQUEUE_CONCURRENCY": "4",
        **{f"PROCQUEUE_{key.upper()}": value for key, value in overrides.items()},
    }


@contextlib.asynccontextmanager
async def app_with(database: str, es_url: str, **overrides: Any) -> AsyncIterator[ProcqueueApp]:
    app = build_app(
        make_settings(database, es_url, index_prefix=index_prefix(database), **overrides)
    )
    cli_worker.register(app)
    async with app.open_async():
        yield app
    await app.services.aclose()


@contextlib.asynccontextmanager
async def worker_processes(
    env: dict[str, str], logs: Path, count: int
) -> AsyncIterator[list[asyncio.subprocess.Process]]:
    processes = [
        await cli_worker.start_cli_worker(env, logs / f"worker-{index}.log", f"w{index}")
        for index in range(count)
    ]
    try:
        yield processes
    finally:
        for process in processes:
            if process.returncode is None:
                process.kill()
                await process.wait()


async def stop(processes: list[asyncio.subprocess.Process]) -> list[int]:
    """SIGTERM each worker; their exit codes."""
    for process in processes:
        process.send_signal(signal.SIGTERM)
    return [await asyncio.wait_for(process.wait(), timeout=60) for process in processes]


def assert_clean_logs(logs: Path) -> None:
    for log in logs.glob("worker-*.log"):
        text = log.read_text(errors="replace")
        for symptom in ("was never retrieved", "invalid status to retry", "stopping the worker"):
            assert symptom not in text, f"{log.name}: {symptom}\n{text[-3000:]}"


async def registered_workers(dsn: str) -> int:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        row = await (
            await conn.execute("SELECT count(*) FROM procrastinate.procrastinate_workers")
        ).fetchone()
    return int(row[0]) if row else 0


async def insert_listings(dsn: str, count: int, title: str) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        for _ in range(count):
            await conn.execute(
                "INSERT INTO listings (id, user_id, title) VALUES (%s, %s, %s)",
                [str(uuid.uuid4()), SELLER_ID, title],
            )


async def update_listings(dsn: str, title: str) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute("UPDATE listings SET title = %s", [title])


async def sleepers(dsn: str, count: int, seconds: float) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        for _ in range(count):
            await conn.execute(
                "SELECT procqueue.add_job('test:sleep', %s::jsonb, 'tests')",
                [f'{{"seconds": {seconds}}}'],
            )


async def running_jobs(dsn: str) -> int:
    return (await job_counts(dsn)).get("doing", 0)


async def drained(dsn: str) -> bool:
    counts = await job_counts(dsn)
    return not counts.get("todo") and not counts.get("doing")


async def index_matches_table(app: ProcqueueApp, dsn: str) -> bool:
    return await indexed_documents(app, LISTING) == await table_documents(dsn, LISTING)


async def kill_worker_connections(dsn: str) -> int:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        row = await (
            await conn.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND application_name = %s"
                " AND pid <> pg_backend_pid()",
                [WORKER_APPLICATION],
            )
        ).fetchone()
    return int(row[0]) if row else 0


async def test_workers_outlive_the_killing_of_their_connections(
    database: str, db: psycopg.AsyncConnection[Any], es_url: str, tmp_path: Path
) -> None:
    await clear_queue(database)  # the module's other tests may leave failed jobs here
    env = worker_env(database, es_url)
    async with app_with(database, es_url) as app, worker_processes(env, tmp_path, 2) as workers:
        await eventually(lambda: _at_least(registered_workers(database), 2), timeout=30)
        await insert_listings(database, 20, "before the kills")
        for round_ in range(3):
            await sleepers(database, 6, 0.5)
            await update_listings(database, f"round {round_}")
            await eventually(lambda: _at_least(running_jobs(database), 1), timeout=30)
            killed = await kill_worker_connections(database)
            assert killed >= 4  # each worker's pool and LISTEN connection
            await eventually(lambda: drained(database), timeout=DRAIN_TIMEOUT)
        # Idle now: with a 600 s polling interval only a re-established LISTEN runs these.
        await insert_listings(database, 10, "after the kills")
        await eventually(lambda: drained(database), timeout=DRAIN_TIMEOUT)
        await eventually(lambda: index_matches_table(app, database), timeout=30)
        assert [worker.returncode for worker in workers] == [None, None]
        assert "failed" not in await job_counts(database)
        assert await stop(workers) == [0, 0]
    assert_clean_logs(tmp_path)


async def _at_least(count: Awaitable[int], minimum: int) -> bool:
    return await count >= minimum


@pytest.fixture(scope="module")
def cluster() -> Iterator[ThrowawayCluster]:
    with throwaway_cluster() as started:
        yield started


@pytest.fixture(scope="module")
def cluster_database(cluster: ThrowawayCluster) -> Iterator[str]:
    with supabase_database(cluster.dsn, "pq_worker_survives") as dsn:
        migrate(dsn)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO auth.users (id, email) VALUES (%s, 'seller@example.com')", [SELLER_ID]
            )
        yield dsn


async def test_workers_outlive_a_postgres_restart(
    cluster: ThrowawayCluster, cluster_database: str, es_url: str, tmp_path: Path
) -> None:
    database = cluster_database
    await clear_queue(database)  # the module's other tests leave failed jobs here
    env = worker_env(database, es_url)
    async with worker_processes(env, tmp_path, 2) as workers:
        await eventually(lambda: _at_least(registered_workers(database), 2), timeout=30)
        await insert_listings(database, 20, "before the restart")
        await eventually(lambda: drained(database), timeout=DRAIN_TIMEOUT)
        # Jobs in flight (and waiting) when the server goes down.
        await sleepers(database, 8, 1.5)
        await update_listings(database, "just before the restart")
        await eventually(lambda: _at_least(running_jobs(database), 2), timeout=30)
        await asyncio.to_thread(cluster.restart, 3.0)

        async with app_with(database, es_url) as app:
            await eventually(lambda: drained(database), timeout=DRAIN_TIMEOUT)
            await insert_listings(database, 10, "after the restart")
            await update_listings(database, "after the restart")
            await eventually(lambda: drained(database), timeout=DRAIN_TIMEOUT)
            await eventually(lambda: index_matches_table(app, database), timeout=30)
        assert [worker.returncode for worker in workers] == [None, None]
        counts = await job_counts(database)
        assert "failed" not in counts, counts
        assert await stop(workers) == [0, 0]
    assert_clean_logs(tmp_path)


async def test_a_stop_while_the_database_is_down_ends_within_the_shutdown_timeout(
    cluster: ThrowawayCluster, cluster_database: str, es_url: str, tmp_path: Path
) -> None:
    """SIGTERM while Postgres is down, jobs in hand and listings waiting: the worker
    exits 0 within PROCQUEUE_SHUTDOWN_TIMEOUT (+ the process's own exit), and once the
    database is back the jobs it could not finish are rescued and nothing drifts."""
    database = cluster_database
    env = worker_env(database, es_url, shutdown_timeout="3")
    async with worker_processes(env, tmp_path, 1) as [worker]:
        await eventually(lambda: _at_least(registered_workers(database), 1), timeout=30)
        await sleepers(database, 6, 30.0)  # 4 in hand (concurrency 4), 2 waiting
        await insert_listings(database, 10, "just before the stop")
        await eventually(lambda: _at_least(running_jobs(database), 4), timeout=30)
        await asyncio.to_thread(cluster.down)
        try:
            worker.send_signal(signal.SIGTERM)
            started = asyncio.get_running_loop().time()
            code = await asyncio.wait_for(worker.wait(), timeout=60)
            took = asyncio.get_running_loop().time() - started
        finally:
            await asyncio.to_thread(cluster.up)
    assert code == 0, (tmp_path / "worker-0.log").read_text()[-3000:]
    assert took < 3 + 7, f"the stop took {took:.1f} s"
    log = (tmp_path / "worker-0.log").read_text()
    assert "the stalled-job rescue" in log, log[-3000:]
    # The jobs left `doing` are the rescue's: a worker with the rescue on drains all.
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        await conn.execute(
            "UPDATE procrastinate.procrastinate_jobs SET args = '{\"seconds\": 0.1}'"
            " WHERE task_name = 'test:sleep'"
        )
    rescuing = {"maintenance_tasks": "true", "rescue_interval": "1", "stalled_timeout": "2"}
    env = worker_env(database, es_url, heartbeat_interval="0.5", **rescuing)
    async with worker_processes(env, tmp_path, 1) as workers:
        async with app_with(database, es_url) as app:
            await eventually(lambda: drained(database), timeout=DRAIN_TIMEOUT)
            await eventually(lambda: index_matches_table(app, database), timeout=30)
        assert await stop(workers) == [0]


async def test_a_worker_shutting_down_heartbeats_until_its_jobs_are_done(
    database: str, es_url: str, tmp_path: Path
) -> None:
    fast = {"heartbeat_interval": "0.2", "stalled_timeout": "1"}
    env = worker_env(database, es_url, **fast)
    async with worker_processes(env, tmp_path, 1) as (leaving,):
        async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
            row = await (
                await conn.execute(
                    "SELECT procqueue.add_job('test:sleep', '{\"seconds\": 4}', 'tests')"
                )
            ).fetchone()
        assert row is not None
        job_id = row[0]
        await eventually(lambda: _status_is(database, job_id, "doing"), timeout=30)
        leaving.send_signal(signal.SIGTERM)
        # Another worker, rescuing stalled jobs every second.
        async with app_with(
            database, es_url, maintenance_tasks=True, rescue_interval=1,
            heartbeat_interval=0.2, stalled_timeout=1,
        ) as rescuer, running_worker(rescuer, queues=["maintenance"]):  # fmt: skip
            assert await asyncio.wait_for(leaving.wait(), timeout=30) == 0
    async with await psycopg.AsyncConnection.connect(database) as conn:
        state = await (
            await conn.execute(
                "SELECT status::text, attempts,"
                " (SELECT count(*) FROM procqueue.job_errors WHERE job_id = j.id)"
                " FROM procrastinate.procrastinate_jobs AS j WHERE id = %s",
                [job_id],
            )
        ).fetchone()
    assert state == ("succeeded", 1, 0)  # never taken for a stalled job
    assert_clean_logs(tmp_path)


async def test_a_worker_taken_for_dead_registers_again_and_goes_on(
    database: str, es_url: str
) -> None:
    async with app_with(database, es_url, heartbeat_interval=0.1) as app:
        async with running_worker(app, queues=["tests"]) as worker:

            async def worker_ids() -> set[int]:
                async with app.pool.connection() as conn:
                    cursor = await conn.execute(
                        "SELECT id FROM procrastinate.procrastinate_workers"
                    )
                    return {row[0] for row in await cursor.fetchall()}

            await eventually(lambda: _non_empty(worker_ids()))
            before = await worker_ids()
            # What another worker's rescue does to a worker whose heartbeat was late.
            async with app.pool.connection() as conn:
                await conn.execute(
                    "DELETE FROM procrastinate.procrastinate_workers WHERE id = ANY(%s)",
                    [list(before)],
                )
            await eventually(lambda: _non_empty(worker_ids()))
            assert not (await worker_ids()) & before
            job_id = await app.configure_task("test:flaky").defer_async(failures=0)

            async def succeeded() -> bool:
                async with app.pool.connection() as conn:
                    cursor = await conn.execute(
                        "SELECT status::text FROM procrastinate.procrastinate_jobs WHERE id = %s",
                        [job_id],
                    )
                    row = await cursor.fetchone()
                return row is not None and row[0] == "succeeded"

            await eventually(succeeded)
            assert not worker.done()


async def _status_is(dsn: str, job_id: int, status: str) -> bool:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cursor = await conn.execute(
            "SELECT status::text FROM procrastinate.procrastinate_jobs WHERE id = %s", [job_id]
        )
        row = await cursor.fetchone()
    return row is not None and row[0] == status


async def _non_empty(values: Awaitable[set[int]]) -> bool:
    return bool(await values)


async def test_a_bad_prune_cron_stops_the_worker_with_status_2_and_one_line(
    database: str,
) -> None:
    code, _, err = await run_cli(
        database, "worker", maintenance_tasks="true", prune_cron="every ten minutes"
    )
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("procqueue: error: ")]
    assert len(lines) == 1, err
    assert "PROCQUEUE_PRUNE_CRON" in lines[0] and "every ten minutes" in lines[0]
    assert "Traceback" not in err
