"""Micro-batches: a job that starts claims more ready jobs like it, and one piece of
work serves them all, while each claimed job stays a job of its own.

A family of tasks (for example `listing:create|update|delete`, whose args are one
string `id`) gets one `Batches`. When a job of the family starts, it claims up to
`size - 1` more ready jobs of the family in its queue (`claim_jobs_like`, with the
rules of Procrastinate's own fetch: `FOR UPDATE SKIP LOCKED`, a lock's earliest job
first and never two jobs of one lock running at once), marks them `doing` by its
worker, and hands them to the worker (`JobRunner.adopt`), which runs each through the
same middleware and saves each outcome with Procrastinate's own functions, as if it
had fetched them: heartbeats, aborts, the stalled-job rescue, retries, failure
records, circuits, metrics and events see ordinary jobs. The claiming job (the
leader) does its own job's work at once and, beside it, one piece of work for every
key it claimed; each claimed job (a follower) waits for its key's outcome, a result
or an error, and returns or raises it.

Nothing waits to fill a batch, and a job's own work never waits for a claim: with no
other ready job the leader's claim finds none, and with `size` 1 it claims nothing
(no query).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol

import psycopg
from procrastinate import JobContext
from procrastinate.jobs import Job
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from procqueue.errors import TransientError
from procqueue.queue.queries import query

logger = logging.getLogger(__name__)

#: The key of the worker in each job's `additional_context`.
JOB_RUNNER = "procqueue.job_runner"

#: What a batch's work answers per key: a result to return, or an error to raise.
Outcomes = Mapping[str, Any]
Work = Callable[[Sequence[str]], Awaitable[Outcomes]]


class JobRunner(Protocol):
    """What runs the jobs a leader claims: procqueue's worker (procqueue/engine/worker.py)."""

    def claiming_worker_id(self) -> int | None:
        """The worker id to claim jobs for; None while the worker is not taking jobs."""

    def adopt(self, jobs: Sequence[Job]) -> None:
        """Run `jobs` (already `doing` for this worker) as if the worker had fetched them."""

    def answer_maybe_lost(self) -> None:
        """A claim failed on the database: it may have committed jobs this worker never
        saw (procqueue/engine/worker.py releases them)."""


@dataclass(frozen=True)
class BatchSpec:
    """A family of tasks whose jobs can be served together: their args are exactly
    one string, `key_arg`; `size`: jobs per batch at most (1: no batching)."""

    task_names: tuple[str, ...]
    key_arg: str
    size: int


async def claim_jobs_like(
    pool: AsyncConnectionPool[Any], spec: BatchSpec, queue: str, worker_id: int, limit: int
) -> list[Job]:
    """Up to `limit` ready jobs of `spec`'s tasks in `queue`, now `doing` for
    `worker_id` (committed before they run, as Procrastinate's fetch is)."""
    params = {
        "queue": queue, "task_names": list(spec.task_names), "key_arg": spec.key_arg,
        "limit": limit, "worker_id": worker_id,
    }  # fmt: skip
    async with pool.connection() as conn:
        async with conn.pipeline():
            await conn.execute(query("walk_jobs_in_fetch_order"))
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute(query("claim_jobs_like"), params)
        return [Job.from_row(row) for row in await cursor.fetchall()]


@dataclass
class _Pending:
    key: str
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    outcome: Any = None
    traceback: TracebackType | None = None

    def settle(self, outcome: Any) -> None:
        self.outcome = outcome
        if isinstance(outcome, BaseException):
            self.traceback = outcome.__traceback__
        self.ready.set()

    async def wait(self) -> Any:
        await self.ready.wait()
        if isinstance(self.outcome, BaseException):
            # One error can be every follower's: each raise would add that follower's
            # frames to the shared object (as asyncio's Future, start from the original).
            raise self.outcome.with_traceback(self.traceback)
        return self.outcome


class Batches:
    """The batches of one task family in one app: which running jobs wait for a
    leader's work (by job id)."""

    def __init__(self, pool: Callable[[], AsyncConnectionPool[Any]], spec: BatchSpec) -> None:
        self.pool = pool
        self.spec = spec
        self._pending: dict[int, _Pending] = {}

    async def run(self, context: JobContext, key: str, work: Work) -> Any:
        """The outcome of `context.job` (whose key is `key`): a follower's from its
        leader's work; a leader's from `work` over its own key, while it claims more
        jobs and serves them with one more `work` (so that no job waits for a claim)."""
        job = context.job
        pending = self._pending.pop(job.id, None) if job.id is not None else None
        if pending is not None:
            return await pending.wait()
        leading = asyncio.create_task(self._lead(context, work))
        own = _Pending(key)
        try:
            own.settle((await work([key]))[key])
        except Exception as error:
            own.settle(error)
        except BaseException:
            leading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await leading
            raise
        await leading
        return await own.wait()

    async def _lead(self, context: JobContext, work: Work) -> None:
        """Claim jobs, hand them to the worker and serve them with one `work` over
        their keys; each waits for its key's outcome (an error, if this is cancelled)."""
        claiming = asyncio.create_task(self._claim(context))
        cancelled = TransientError(
            f"job {context.job.id}, which was to write this job's batch, was cancelled (a "
            "timeout or an abort) first"
        )
        try:
            followers = await asyncio.shield(claiming)
        except asyncio.CancelledError:
            # The claim may have committed: its jobs are ours to end.
            self._adopt(context, await claiming, failure=cancelled)
            raise
        waiting = self._adopt(context, followers)
        if not waiting:
            return
        outcomes: Outcomes = {}
        failure: BaseException | None = None
        try:
            outcomes = await work(list(dict.fromkeys(p.key for p in waiting.values())))
        except Exception as error:
            failure = error
        except BaseException:
            failure = cancelled
            raise
        finally:
            for job_id, follower in waiting.items():
                self._pending.pop(job_id, None)
                follower.settle(failure if failure is not None else outcomes[follower.key])

    def _adopt(
        self, context: JobContext, jobs: Sequence[Job], failure: BaseException | None = None
    ) -> dict[int, _Pending]:
        """Hand claimed `jobs` to the worker, waiting for an outcome (`failure`, if given)."""
        if not jobs:
            return {}
        waiting = {job.id: _Pending(str(job.task_kwargs[self.spec.key_arg]))
                   for job in jobs if job.id is not None}  # fmt: skip
        if failure is not None:
            for follower in waiting.values():
                follower.settle(failure)
        self._pending.update(waiting)
        runner: JobRunner = context.additional_context[JOB_RUNNER]
        runner.adopt(jobs)
        return waiting

    async def _claim(self, context: JobContext) -> list[Job]:
        runner: JobRunner | None = context.additional_context.get(JOB_RUNNER)
        if self.spec.size <= 1 or runner is None:
            return []
        worker_id = runner.claiming_worker_id()
        if worker_id is None:
            return []
        try:
            return await claim_jobs_like(
                self.pool(), self.spec, context.job.queue, worker_id, self.spec.size - 1
            )
        except psycopg.Error as error:
            # Claiming is an optimisation: the job goes on alone (its own work then
            # meets the database's trouble, if there is one, and is handled as ever).
            # The claim may have committed unseen: the worker looks for such jobs.
            logger.info("job %s claims no batch: %s", context.job.id, type(error).__name__)
            runner.answer_maybe_lost()
            return []
