"""Worker middlewares: the job timeout, and one `HandleOutcome` that decides once
what an attempt's outcome is (succeeded, postponed, retried, failed, aborted) and
then records it (procqueue.job_errors), alerts on it (Sentry, final failures only),
meters it (Prometheus) and logs it in one line. `worker_middleware(settings)` is
the stack the app installs."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from procrastinate import JobContext
from procrastinate.jobs import Job
from procrastinate.worker import Worker

from procqueue.errors import TransientError
from procqueue.queue import metrics, sentry
from procqueue.queue.failures import describe, record_failed_attempt
from procqueue.queue.jobs import add_job
from procqueue.settings import Settings

logger = logging.getLogger(__name__)

CallNext = Callable[[], Awaitable[Any]]


class JobTimeout(TransientError):
    """The job ran longer than the configured timeout and was cancelled."""


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
class HandleOutcome:
    """Decide each attempt's outcome once, then record, alert, meter and log it."""

    secrets: tuple[str, ...] = ()

    async def __call__(self, call_next: CallNext, context: JobContext, worker: Worker) -> Any:
        job = context.job
        started = time.monotonic()
        outcome, reason = "aborted", ""
        try:
            result = await call_next()
            outcome = "succeeded"
            return result
        except TransientError as error:
            if error.spends_attempt:
                outcome, reason = await self._failed(error, context, worker)
                raise
            outcome, reason = "postponed", describe(error, self.secrets)[1]
            await self._postpone(job, error, worker)
            return f"postponed: {reason}"
        except Exception as error:
            outcome, reason = await self._failed(error, context, worker)
            raise
        finally:
            self._observe(job, outcome, reason, time.monotonic() - started)

    async def _failed(
        self, error: Exception, context: JobContext, worker: Worker
    ) -> tuple[str, str]:
        job = context.job
        task = worker.app.tasks.get(job.task_name)
        final = task is None or task.get_retry_exception(error, job) is None
        pool = worker.app.connector.pool  # type: ignore[attr-defined]
        await record_failed_attempt(pool, job, error, final=final, secrets=self.secrets)
        if final:
            sentry.capture_final_failure(error, job)
        error_type, message, _ = describe(error, self.secrets)
        return ("failed" if final else "retried"), f"{error_type.rsplit('.', 1)[-1]}: {message}"

    @staticmethod
    async def _postpone(job: Job, error: TransientError, worker: Worker) -> None:
        """The same job again, due at the error's `retry_at` (coalesced into a waiting
        job of the same queueing lock, if there is one)."""
        wait = error.retry_at - datetime.now(UTC) if error.retry_at is not None else None
        pool = worker.app.connector.pool  # type: ignore[attr-defined]
        async with pool.connection() as conn:
            await add_job(
                conn, job.task_name, job.task_kwargs, job.queue,
                lock=job.lock, queueing_lock=job.queueing_lock,
                delay=max(wait.total_seconds(), 0.0) if wait is not None else 0.0,
            )  # fmt: skip

    @staticmethod
    def _observe(job: Job, outcome: str, reason: str, duration: float) -> None:
        metrics.observe_job(job.task_name, job.queue, outcome, duration)
        # Procrastinate logs its own line per attempt (with the traceback of a final
        # failure); this one carries the outcome, the duration and the redacted reason.
        logger.log(
            logging.ERROR if outcome == "failed" else logging.INFO,
            "job %s (%s) attempt %d %s in %.3f s%s",
            job.id,
            job.task_name,
            job.attempts + 1,
            "failed for good" if outcome == "failed" else outcome,
            duration,
            f": {reason}" if reason else "",
            extra={**job_log_fields(job), "duration": round(duration, 6), "outcome": outcome},
        )


def worker_middleware(settings: Settings) -> list[Any]:
    """The worker's middleware stack, outermost first."""
    # Sentry itself is started by the worker (ProcqueueApp.run_worker_async): without
    # SENTRY_DSN the SDK has no client and final failures send nothing.
    return [HandleOutcome(settings.secret_values()), EnforceTimeout(settings.job_timeout)]
