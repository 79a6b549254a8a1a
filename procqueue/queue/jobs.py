"""Job specs: the contract between a job family's enqueuers (SQL triggers, Python)
and its task. The feature slices define their specs (procqueue/*/jobs.py); tasks
are registered under them, triggers receive them as arguments from `procqueue
migrate`, and the dashboard and `verify --repair` read them, so no SQL file spells
a task or queue name."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

from procqueue.queue.queries import query
from procqueue.queue.retry import BackoffRetry


@dataclass(frozen=True)
class JobSpec:
    """One kind of job: its task, its queue, the service its task calls and, for jobs
    of one row or one object, the prefix of its lock. Such jobs take `lock_prefix +
    key` as both lock (never two at once) and queueing lock (a second enqueue while
    one waits is coalesced). Jobs of many keys name the args member holding them."""

    task_name: str
    queue: str
    lock_prefix: str | None = None
    sink: str | None = None  # the outside service its task calls (its circuit's name)
    #: For jobs of many keys: the args member listing them ({"ids": [...]}).
    keys_arg: str | None = None
    #: The family's own retry policy; None: the app's (PROCQUEUE_MAX_RETRIES,
    #: PROCQUEUE_RETRY_BACKOFF, PROCQUEUE_RETRY_BACKOFF_MAX).
    retry: BackoffRetry | None = None
    #: A first-attempt success leaves the jobs table at once for the log of finished
    #: attempts (procqueue/queue/finished_attempts.py): for jobs made by the thousand
    #: that nobody looks up one by one.
    leaves_when_succeeded: bool = False

    def lock(self, key: str) -> str | None:
        return None if self.lock_prefix is None else f"{self.lock_prefix}{key}"

    def key_of(self, lock: str) -> str | None:
        """The key in one of this spec's locks, or None if it is not one."""
        if self.lock_prefix is None or not lock.startswith(self.lock_prefix):
            return None
        return lock[len(self.lock_prefix) :] or None


async def enqueue(
    conn: AsyncConnection[Any],
    spec: JobSpec,
    args: Mapping[str, Any],
    *,
    key: str | None = None,
    delay: float = 0.0,
) -> int | None:
    """Enqueue one job of `spec` (locked on `key`, if given) in `conn`'s transaction;
    returns its id, or None when it was coalesced into a waiting one."""
    lock = spec.lock(key) if key is not None else None
    return await add_job(
        conn, spec.task_name, args, spec.queue, lock=lock, queueing_lock=lock, delay=delay
    )


async def add_job(
    conn: AsyncConnection[Any],
    task_name: str,
    args: Mapping[str, Any],
    queue: str,
    *,
    lock: str | None = None,
    queueing_lock: str | None = None,
    delay: float = 0.0,
    run_at: datetime | None = None,
) -> int | None:
    """procqueue.add_job from Python: the one enqueue path the triggers use too. Due
    at `run_at` if given, else `delay` seconds from now."""
    cursor = await conn.execute(
        query("enqueue_job"),
        {
            "task_name": task_name,
            "args": Jsonb(dict(args)),
            "queue_name": queue,
            "job_lock": lock,
            "queueing_lock": queueing_lock,
            "delay": delay,
            "run_at": run_at,
        },
    )
    row = await cursor.fetchone()
    return None if row is None else row[0]
