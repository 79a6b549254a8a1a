"""Health reads a paused queue with waiting work as paused (degraded, who paused it
and how to resume), never as lag; a paused queue with nothing waiting is no reason.
Workers record what they are (procqueue.worker_details, migration 0022): host, pid,
queues, concurrency, start, jobs done; `procqueue queues` counts them per queue."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

from procqueue.app import build_app
from procqueue.engine.app import ProcqueueApp
from procqueue.queue import operations, queues
from procqueue.queue.health import HealthConfig, Status, evaluate, read_snapshot
from procqueue.queue.metrics import SnapshotCollector
from tests.conftest import make_settings
from tests.support import tasks
from tests.support.worker import eventually, running_worker

ACTOR = operations.Actor("test:health", None)
#: Any waiting job counts as lag at once: a lag reason would show for any queue.
EAGER = HealthConfig(lag_degraded=0.0, lag_unhealthy=0.0, min_workers=0)


@pytest.fixture(scope="module")
async def app(database: str, es_url: str) -> AsyncIterator[ProcqueueApp]:
    application = build_app(make_settings(database, es_url, heartbeat_interval=0.1))
    tasks.register(application)
    async with application.open_async():
        yield application


async def verdict_reasons(database: str) -> tuple[Status, list[str]]:
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        verdict = evaluate(await read_snapshot(conn, EAGER), EAGER)
    return verdict.status, verdict.reasons


async def test_a_paused_queue_with_waiting_jobs_reads_paused_not_lag(
    app: ProcqueueApp, database: str
) -> None:
    queue = f"held-{uuid.uuid4().hex[:6]}"
    await app.configure_task("test:flaky", queue=queue).defer_async(failures=0)
    status, reasons = await verdict_reasons(database)
    assert status is Status.UNHEALTHY
    assert any(reason.startswith(f"queue {queue!r}: oldest waiting job") for reason in reasons)

    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        assert not (await operations.pause_queue(conn, ACTOR, queue)).problems
    status, reasons = await verdict_reasons(database)
    mine = [reason for reason in reasons if f"{queue!r}" in reason]
    assert len(mine) == 1, reasons
    assert mine[0].startswith(f"queue {queue!r} is paused (since ")
    assert mine[0].endswith(
        f"by test:health): 1 job(s) wait; `procqueue resume {queue}` to run them"
    )
    assert status is not Status.HEALTHY  # held work: at least degraded
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        verdict = evaluate(await read_snapshot(conn, EAGER), EAGER)
    # The overview links the reason to the jobs it holds.
    assert verdict.filters[verdict.reasons.index(mine[0])] == {"state": "todo", "queue": queue}
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        snapshot = await read_snapshot(conn, EAGER)
    gauges = {
        metric.name: metric
        for metric in SnapshotCollector(snapshot, evaluate(snapshot, EAGER)).collect()
    }
    assert [(s.labels, s.value) for s in gauges["procqueue_queue_paused"].samples] == [
        ({"queue": queue}, 1.0)
    ]

    async with app.pool.connection() as conn:
        await conn.execute(
            "DELETE FROM procrastinate.procrastinate_jobs WHERE queue_name = %s", [queue]
        )
    status, reasons = await verdict_reasons(database)
    assert not [reason for reason in reasons if f"{queue!r}" in reason]  # nothing waits
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        assert (await operations.resume_queue(conn, ACTOR, queue)).problems == []


async def details(database: str) -> list[queues.WorkerInfo]:
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        return await queues.workers(conn, EAGER.stalled_after)


async def test_a_worker_records_who_it_is_and_counts_its_jobs(
    app: ProcqueueApp, database: str
) -> None:
    queue = f"counted-{uuid.uuid4().hex[:6]}"
    options: dict[str, Any] = {"queues": [queue, "tests"], "concurrency": 3, "name": "counter"}
    async with running_worker(app, **options):

        async def described() -> bool:
            return any(worker.described for worker in await details(database))

        await eventually(described)
        [worker] = await details(database)
        assert (worker.host, worker.pid, worker.name) == (
            socket.gethostname(),
            os.getpid(),
            "counter",
        )
        assert (worker.queues, worker.concurrency, worker.listens) == ([queue, "tests"], 3, True)
        assert worker.started_at is not None and worker.healthy and worker.jobs_done == 0

        task = app.configure_task("test:flaky", queue=queue)
        job_ids = [await task.defer_async(failures=0) for _ in range(4)]

        async def counted() -> bool:
            [current] = await details(database)
            return current.jobs_done == len(job_ids)

        await eventually(counted)  # at the next heartbeat after the jobs ended

        async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
            ran_by = await queues.job_worker(conn, job_ids[0])
            states = {
                state.queue_name: state
                for state in await queues.queue_states(conn, ["never-used"], EAGER.stalled_after)
            }
        assert ran_by == queues.JobWorker(
            worker.worker_id, socket.gethostname(), os.getpid(), "counter"
        )
        assert (states[queue].workers, states[queue].slots) == (1, 3)
        assert (states["never-used"].workers, states["never-used"].waiting) == (0, 0)
        assert not states["never-used"].paused
    # Stopped: its row goes, and its details with it.
    assert await details(database) == []
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        assert await queues.job_worker(conn, job_ids[0]) is None
