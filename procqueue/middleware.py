"""Worker middlewares: the job timeout, and a record of every failed attempt."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from procrastinate import JobContext
from procrastinate.worker import Worker

from procqueue.errors import TransientError
from procqueue.failures import describe, is_transient
from procqueue.queries import query

logger = logging.getLogger(__name__)

CallNext = Callable[[], Awaitable[Any]]


class JobTimeout(TransientError):
    """The job ran longer than the configured timeout and was cancelled."""


@dataclass(frozen=True)
class EnforceTimeout:
    """Cancel a job that runs longer than `seconds`; the timeout counts as transient."""

    seconds: float

    async def __call__(self, call_next: CallNext, context: JobContext, worker: Worker) -> Any:
        deadline = asyncio.timeout(self.seconds)
        try:
            async with deadline:
                return await call_next()
        except TimeoutError:
            if deadline.expired():
                raise JobTimeout(
                    f"job ran longer than {self.seconds:g} s and was cancelled; it will be "
                    "retried (raise PROCQUEUE_JOB_TIMEOUT if such jobs are legitimate)"
                ) from None
            raise


@dataclass(frozen=True)
class RecordFailures:
    """Write every failed attempt to procqueue.job_errors, secrets removed."""

    secrets: tuple[str, ...] = ()

    async def __call__(self, call_next: CallNext, context: JobContext, worker: Worker) -> Any:
        try:
            return await call_next()
        except Exception as error:
            await self._record(error, context, worker)
            raise

    async def _record(self, error: BaseException, context: JobContext, worker: Worker) -> None:
        job = context.job
        task = worker.app.tasks.get(job.task_name)
        will_retry = task is not None and task.get_retry_exception(error, job) is not None
        error_type, message, trace = describe(error, self.secrets)
        pool = worker.app.connector.pool  # type: ignore[attr-defined]
        try:
            async with pool.connection() as conn:
                await conn.execute(
                    query("insert_job_error"),
                    {
                        "job_id": job.id,
                        "attempt": job.attempts + 1,
                        "task_name": job.task_name,
                        "queue_name": job.queue,
                        "error_type": error_type,
                        "message": message,
                        "traceback": trace,
                        "transient": is_transient(error),
                        "final": not will_retry,
                    },
                )
        except Exception as record_error:
            # The job's own outcome matters more than its record: log and go on.
            logger.warning(
                "could not record the failure of job %s: %s", job.id, type(record_error).__name__
            )
        log = logger.error if not will_retry else logger.warning
        log(
            "job %s (%s) attempt %d failed%s: %s: %s",
            job.id,
            job.task_name,
            job.attempts + 1,
            "" if will_retry else " for good",
            error_type,
            message,
            extra={"job_id": job.id, "task": job.task_name, "attempt": job.attempts + 1},
        )
