"""Worker middlewares: the job timeout, a record of every failed attempt, a Sentry
alert for final failures, and a structured log line plus Prometheus metrics for
every attempt. `worker_middleware(settings)` is the stack the app installs."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from procrastinate import JobContext
from procrastinate.jobs import Job
from procrastinate.worker import Worker

from procqueue.errors import TransientError
from procqueue.queries import query
from procqueue.queue import metrics, sentry
from procqueue.queue.failures import describe, is_transient
from procqueue.settings import Settings

logger = logging.getLogger(__name__)

CallNext = Callable[[], Awaitable[Any]]


class JobTimeout(TransientError):
    """The job ran longer than the configured timeout and was cancelled."""


def will_retry(error: BaseException, context: JobContext, worker: Worker) -> bool:
    """Whether the task's retry policy will run this job again after `error`."""
    task = worker.app.tasks.get(context.job.task_name)
    return task is not None and task.get_retry_exception(error, context.job) is not None


def job_log_fields(job: Job) -> dict[str, Any]:
    """The `extra` of a log line about one attempt of `job` (JSON logs keep them)."""
    return {
        "job_id": job.id,
        "task": job.task_name,
        "queue": job.queue,
        "attempt": job.attempts + 1,
    }


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
        pool = worker.app.connector.pool  # type: ignore[attr-defined]
        final = not will_retry(error, context, worker)
        await record_failed_attempt(pool, context.job, error, final=final, secrets=self.secrets)


async def record_failed_attempt(
    pool: Any, job: Job, error: BaseException, *, final: bool, secrets: tuple[str, ...]
) -> None:
    """Write one failed attempt of `job` to procqueue.job_errors and log it."""
    error_type, message, trace = describe(error, secrets)
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
                    "final": final,
                },
            )
    except Exception as record_error:
        # The job's own outcome matters more than its record: log and go on.
        logger.warning(
            "could not record the failure of job %s: %s", job.id, type(record_error).__name__
        )
    log = logger.error if final else logger.warning
    log(
        "job %s (%s) attempt %d failed%s: %s: %s",
        job.id,
        job.task_name,
        job.attempts + 1,
        " for good" if final else "",
        error_type,
        message,
        extra=job_log_fields(job),
    )


@dataclass(frozen=True)
class ObserveJobs:
    """Time every attempt: a structured log line (job id, task, attempt, duration,
    outcome) and the Prometheus histogram and counter per task."""

    async def __call__(self, call_next: CallNext, context: JobContext, worker: Worker) -> Any:
        started = time.monotonic()
        outcome = "aborted"
        try:
            result = await call_next()
            outcome = "succeeded"
            return result
        except Exception as error:
            outcome = "retried" if will_retry(error, context, worker) else "failed"
            raise
        finally:
            duration = time.monotonic() - started
            job = context.job
            metrics.observe_job(job.task_name, job.queue, outcome, duration)
            logger.info(
                "job %s (%s) attempt %d %s in %.3f s",
                job.id,
                job.task_name,
                job.attempts + 1,
                outcome,
                duration,
                extra={
                    **job_log_fields(job),
                    "duration": round(duration, 6),
                    "outcome": outcome,
                },
            )


@dataclass(frozen=True)
class AlertFinalFailures:
    """Send a job's final failure to Sentry; attempts that will be retried send nothing."""

    async def __call__(self, call_next: CallNext, context: JobContext, worker: Worker) -> Any:
        try:
            return await call_next()
        except Exception as error:
            if not will_retry(error, context, worker):
                sentry.capture_final_failure(error, context.job)
            raise


def worker_middleware(settings: Settings) -> list[Any]:
    """The worker's middleware stack, outermost first."""
    # Sentry itself is started by the worker (ProcqueueApp.run_worker_async): without
    # SENTRY_DSN the SDK has no client and AlertFinalFailures sends nothing.
    return [
        ObserveJobs(),
        RecordFailures(settings.secret_values()),
        AlertFinalFailures(),
        EnforceTimeout(settings.job_timeout),
    ]
