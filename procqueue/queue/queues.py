"""Queues and workers as operators see them (`procqueue queues`, the dashboard's
Queues and Workers pages): which queues there are, paused or not, their jobs, and the
workers that take them, with what each worker said of itself when it registered
(procqueue.worker_details, migration 0022). Pausing and resuming are audited
operations: procqueue/queue/operations.py."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import class_row

from procqueue.queue.jobs import JobSpec
from procqueue.queue.queries import query

Connection = psycopg.AsyncConnection[Any]


@dataclass(frozen=True)
class QueueState:
    """One queue: paused (since when, by whom, why) or not; its jobs waiting (due
    now), scheduled (due later), running and failed; the live workers that take its
    jobs (by name, or serving every queue) and their concurrency summed: slots they
    share with the other queues they serve. A queue has no limit of its own."""

    queue_name: str
    paused: bool
    paused_at: datetime | None
    paused_by: str | None
    reason: str | None
    waiting: int
    scheduled: int
    running: int
    failed: int
    workers: int
    slots: int


@dataclass(frozen=True)
class WorkerInfo:
    """One registered worker: Procrastinate's row (id, heartbeat), its jobs in hand,
    and what it said of itself when it registered (None for a worker that did not:
    plain Procrastinate's). `jobs_done` is as of its last heartbeat."""

    worker_id: int
    last_heartbeat: datetime
    heartbeat_age_seconds: float
    healthy: bool
    jobs_in_hand: int
    host: str | None
    pid: int | None
    name: str | None
    queues: list[str] | None
    concurrency: int | None
    listens: bool | None
    version: str | None
    started_at: datetime | None
    jobs_done: int | None

    @property
    def described(self) -> bool:
        return self.host is not None


@dataclass(frozen=True)
class JobWorker:
    """The worker that holds or ran a job (while it is registered)."""

    worker_id: int
    host: str
    pid: int
    name: str | None


@dataclass(frozen=True)
class PausedQueue:
    queue_name: str
    paused_at: datetime
    paused_by: str
    reason: str | None


def known_queues(specs: Iterable[JobSpec], *others: str) -> set[str]:
    """The queues of these job specs and `others`: queues that may be paused before
    they have any job."""
    return {spec.queue for spec in specs} | set(others)


async def queue_states(
    conn: Connection, named: Iterable[str], stalled_after: timedelta
) -> list[QueueState]:
    """Every queue: `named` ones (the features' queues, whether or not they have jobs
    yet), those jobs hold, those live workers serve by name, the paused ones."""
    cursor = conn.cursor(row_factory=class_row(QueueState))
    await cursor.execute(
        query("queue_overview"), {"named": sorted(set(named)), "stalled_after": stalled_after}
    )
    return await cursor.fetchall()


async def workers(conn: Connection, stalled_after: timedelta) -> list[WorkerInfo]:
    cursor = conn.cursor(row_factory=class_row(WorkerInfo))
    await cursor.execute(query("worker_list"), {"stalled_after": stalled_after})
    return await cursor.fetchall()


async def job_worker(conn: Connection, job_id: int) -> JobWorker | None:
    """The worker (host, pid) that holds or ran job `job_id`; None once that worker
    stopped (Procrastinate then clears the job's worker id) or when it said nothing
    of itself (a plain Procrastinate worker)."""
    cursor = conn.cursor(row_factory=class_row(JobWorker))
    await cursor.execute(query("job_worker"), {"job_id": job_id})
    return await cursor.fetchone()


async def paused_queue(conn: Connection, queue: str) -> PausedQueue | None:
    cursor = conn.cursor(row_factory=class_row(PausedQueue))
    await cursor.execute(query("paused_queue"), {"queue": queue})
    return await cursor.fetchone()


async def in_use(conn: Connection, queue: str) -> bool:
    """Jobs hold the queue's name, a worker serves it by name, or it is paused."""
    row = await (await conn.execute(query("queue_in_use"), {"queue": queue})).fetchone()
    return bool(row and row[0])
