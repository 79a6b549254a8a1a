"""How an attempt's outcome is told, in one place for every path that ends one:
the middleware, the worker's refusals and unsaved outcomes, the stalled-job rescue.

- `is_final(task, job, error)`: the one answer to "does this failure end the job?"
  (the job's task's retry strategy; a job whose task is unknown cannot retry);
- `end_in_failure(...)`: the one way an attempt ends badly: its record
  (procqueue.job_errors, secrets removed), a Sentry event when it is final, the
  metric and one log line;
- `observe(...)`: the metric and the log line of any other outcome (succeeded,
  postponed, aborted);
- `Postponed`: what the middleware answers for a job that waits (a sink's circuit
  is open, a writer still holds the row, a rate limit): the worker puts the same
  row back to waiting, attempts unchanged (procqueue/engine/saving.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from procrastinate.jobs import Job
from procrastinate.tasks import Task

from procqueue.queue import metrics, sentry
from procqueue.queue.failures import describe, record_failed_attempt

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Postponed:
    """An attempt that did not run its side effect and waits until `run_at`: not a
    success, not a failure, no attempt spent."""

    run_at: datetime
    reason: str

    def __str__(self) -> str:
        return f"postponed until {self.run_at.isoformat(timespec='seconds')}: {self.reason}"


def job_log_fields(job: Job) -> dict[str, Any]:
    """The `extra` of a log line about one attempt of `job` (JSON logs keep them)."""
    return {
        "job_id": job.id,
        "task": job.task_name,
        "queue": job.queue,
        "attempt": job.attempts + 1,
    }


def is_final(task: Task[Any, Any, Any] | None, job: Job, error: BaseException) -> bool:
    """Whether `error` in this attempt of `job` ends it for good: its task's retry
    strategy says no retry (or there is no task of its name to ask)."""
    if task is None or not isinstance(error, Exception):
        return True
    return task.get_retry_exception(error, job) is None


async def end_in_failure(
    pool: Any,
    job: Job,
    error: BaseException,
    *,
    final: bool,
    secrets: tuple[str, ...],
    duration: float = 0.0,
) -> str:
    """Record this failed attempt of `job`, alert on it if `final`, meter and log it;
    returns the redacted reason ("Type: message")."""
    await record_failed_attempt(pool, job, error, final=final, secrets=secrets)
    if final:
        sentry.capture_final_failure(error, job)
    error_type, message = describe(error, secrets)
    reason = f"{error_type.rsplit('.', 1)[-1]}: {message}"
    observe(job, "failed" if final else "retried", reason, duration)
    return reason


def observe(job: Job, outcome: str, reason: str, duration: float) -> None:
    """Meter an attempt's outcome and log it in one line (with its redacted reason)."""
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
