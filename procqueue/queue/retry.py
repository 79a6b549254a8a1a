"""Retry policy: transient failures retry with exponential backoff, others fail at once."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from procrastinate import BaseRetryStrategy, RetryDecision
from procrastinate.jobs import Job

from procqueue.errors import TransientError
from procqueue.queue.failures import is_transient


@dataclass(frozen=True)
class BackoffRetry(BaseRetryStrategy):
    """Retry transient errors `max_retries` times, waiting base * 2**attempt seconds,
    or until the error's `retry_at` (when the service said to come back) if later.
    Every task uses this one strategy."""

    max_retries: int = 3
    base_seconds: float = 2.0
    max_seconds: float = 300.0

    def delay(self, attempts: int) -> float:
        return float(min(self.max_seconds, self.base_seconds * 2**attempts))

    def will_retry(self, error: BaseException, attempts: int) -> bool:
        return is_transient(error) and attempts < self.max_retries

    def get_retry_decision(self, *, exception: BaseException, job: Job) -> RetryDecision | None:
        if not self.will_retry(exception, job.attempts):
            return None
        retry_at = datetime.now(UTC) + timedelta(seconds=self.delay(job.attempts))
        asked = exception.retry_at if isinstance(exception, TransientError) else None
        return RetryDecision(retry_at=max(retry_at, asked) if asked is not None else retry_at)
