"""A worker process killed with SIGKILL in the middle of a job: another worker
finishes that job within the configured rescue time (heartbeat timeout plus
rescue interval)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

from procqueue.app import build_app
from procqueue.engine.app import ProcqueueApp
from tests.conftest import make_settings
from tests.support import tasks
from tests.support.worker import eventually, running_worker

HEARTBEAT = 0.5
STALLED_TIMEOUT = 2.0
RESCUE_INTERVAL = 1
FAST: dict[str, Any] = {
    "heartbeat_interval": HEARTBEAT,
    "stalled_timeout": STALLED_TIMEOUT,
    "rescue_interval": RESCUE_INTERVAL,
}


@pytest.fixture(scope="module")
async def rescuer(database: str, es_url: str) -> AsyncIterator[ProcqueueApp]:
    """The surviving worker's app: the maintenance tasks on, short timeouts."""
    application = build_app(make_settings(database, es_url, maintenance_tasks=True, **FAST))
    tasks.register(application)
    async with application.open_async():
        yield application


async def job_state(dsn: str, job_id: int) -> tuple[str, int, int | None]:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        row = await (
            await conn.execute(
                "SELECT status::text, attempts, worker_id FROM procrastinate.procrastinate_jobs"
                " WHERE id = %s",
                [job_id],
            )
        ).fetchone()
    assert row is not None
    return row[0], row[1], row[2]


async def start_worker_process(database: str, es_url: str) -> asyncio.subprocess.Process:
    env = {
        **os.environ,
        "PROCQUEUE_DATABASE_URL": database,
        "ELASTICSEARCH_URL": es_url,
        "PROCQUEUE_MAINTENANCE_TASKS": "false",
        "PROCQUEUE_LISTEN_NOTIFY": "false",
        "PROCQUEUE_POLLING_INTERVAL": "0.2",
        **{f"PROCQUEUE_{key.upper()}": str(value) for key, value in FAST.items()},
    }
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.support.worker_process",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )


async def test_job_of_a_killed_worker_is_finished_by_another(
    rescuer: ProcqueueApp, database: str, es_url: str
) -> None:
    job_id = await rescuer.configure_task("test:block_first").defer_async()
    victim = await start_worker_process(database, es_url)
    try:

        async def taken() -> bool:
            status, _, worker = await job_state(database, job_id)
            return status == "doing" and worker is not None

        await eventually(taken, timeout=30)
    finally:
        victim.send_signal(signal.SIGKILL)
        await victim.wait()
    killed_at = time.monotonic()
    assert (await job_state(database, job_id))[0] == "doing"

    async with running_worker(rescuer):

        async def finished() -> bool:
            return (await job_state(database, job_id))[0] == "succeeded"

        budget = STALLED_TIMEOUT + RESCUE_INTERVAL + 3.0  # + margin for a loaded machine
        await eventually(finished, timeout=budget)
    elapsed = time.monotonic() - killed_at
    assert elapsed <= budget

    status, attempts, _ = await job_state(database, job_id)
    assert (status, attempts) == ("succeeded", 2)
    async with await psycopg.AsyncConnection.connect(database) as conn:
        errors = await (
            await conn.execute(
                "SELECT attempt, error_type, transient, final FROM procqueue.job_errors"
                " WHERE job_id = %s",
                [job_id],
            )
        ).fetchall()
        workers = await (
            await conn.execute("SELECT count(*) FROM procrastinate.procrastinate_workers")
        ).fetchone()
    assert errors == [(1, "procqueue.queue.maintenance.WorkerLost", True, False)]
    assert workers == (0,)  # the dead worker was pruned, the rescuer unregistered
