"""Finishing jobs together: the outcomes of jobs that end in the same turn of the
event loop (a micro-batch's jobs end together, procqueue/queue/batch.py) are saved
with one statement calling Procrastinate's own finish function once per job, so
events and stats are what they would be job by job.

If that statement fails (one of the jobs is no longer running: rescued meanwhile),
it finished none of them, and each is finished alone, meeting its own error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from procrastinate.jobs import Job, Status
from psycopg_pool import AsyncConnectionPool

from procqueue.queue.queries import query

#: Finishes one job alone (Procrastinate's JobManager.finish_job).
FinishOne = Callable[[Job, Status, bool], Awaitable[None]]


@dataclass
class _Finish:
    job: Job
    status: Status
    delete: bool
    done: asyncio.Future[None]


@dataclass
class Finisher:
    pool: Callable[[], AsyncConnectionPool[Any]]
    finish_one: FinishOne
    _waiting: list[_Finish] = field(default_factory=list)
    _flush: asyncio.Task[None] | None = None

    async def finish(self, job: Job, status: Status, delete: bool) -> None:
        """Save `job`'s end as Procrastinate's finish_job does, with the others
        ending in this turn of the event loop."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Finish(job, status, delete, done))
        if self._flush is None:
            self._flush = asyncio.create_task(self._flush_waiting())
        await done

    async def _flush_waiting(self) -> None:
        await asyncio.sleep(0)  # the other jobs ending in this turn join
        batch, self._waiting, self._flush = self._waiting, [], None
        if len(batch) > 1:
            try:
                await self._finish_together(batch)
            except Exception:
                pass  # none was finished: each alone below, with its own error
            else:
                for item in batch:
                    _settle(item.done)
                return
        await asyncio.gather(*(self._finish_alone(item) for item in batch))

    async def _finish_together(self, batch: list[_Finish]) -> None:
        async with self.pool().connection() as conn:
            await conn.execute(
                query("finish_jobs"),
                {
                    "ids": [item.job.id for item in batch],
                    "statuses": [item.status.value for item in batch],
                    "deletes": [item.delete for item in batch],
                },
            )

    async def _finish_alone(self, item: _Finish) -> None:
        try:
            await self.finish_one(item.job, item.status, item.delete)
        except Exception as error:
            _settle(item.done, error)
        else:
            _settle(item.done)


def _settle(done: asyncio.Future[None], error: Exception | None = None) -> None:
    """Answer a waiting `finish`, unless it stopped waiting (cancelled: a worker's
    stop timeout)."""
    if done.done():
        return
    if error is None:
        done.set_result(None)
    else:
        done.set_exception(error)
