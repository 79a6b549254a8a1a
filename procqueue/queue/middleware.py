"""Worker middlewares: the job timeout, and one `HandleOutcome` that decides once
what an attempt's outcome is (succeeded, postponed, retried, failed, aborted); a
failure ends through the one `end_in_failure` (queue/outcomes.py: recorded, alerted
when final, metered, logged), a postponement is answered as `Postponed` and saved by
the worker on the same row. `worker_middleware(settings)` is the stack the app installs."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from procrastinate import JobContext
from procrastinate.jobs import Job
from procrastinate.worker import Worker

from procqueue.errors import SinkUnavailable, TransientError
from procqueue.queue import metrics
from procqueue.queue.circuit import Circuits
from procqueue.queue.failures import describe
from procqueue.queue.outcomes import Postponed, end_in_failure, is_final, observe
from procqueue.queue.queries import query
from procqueue.settings import CoreSettings

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
class HandleOutcome:
    """Decide each attempt's outcome once, then record, alert, meter and log it.
    `sinks` maps task names to the outside service their jobs call, whose circuit
    (queue/circuit.py) holds them back while it is down."""

    secrets: tuple[str, ...] = ()
    sinks: Mapping[str, str] = field(default_factory=dict)
    circuits: Circuits = field(default_factory=Circuits)

    async def __call__(self, call_next: CallNext, context: JobContext, worker: Worker) -> Any:
        job = context.job
        sink = self.sinks.get(job.task_name)
        started = time.monotonic()
        outcome, reason = "aborted", ""
        try:
            wait = None if sink is None else self.circuits.wait_before(sink, job.id)
            if wait is not None:
                outcome, reason = "postponed", f"{sink} is unavailable; its circuit is open"
                return _postponed(reason, wait)
            result = await call_next()
            outcome = "succeeded"
            return result
        except SinkUnavailable as error:
            outcome, reason = "postponed", describe(error, self.secrets)[1]
            return await self._outage(job, error, worker)
        except TransientError as error:
            if error.spends_attempt:
                outcome = await self._failed(error, context, worker, started)
                raise
            outcome, reason = "postponed", describe(error, self.secrets)[1]
            return _postponed(reason, 0.0, run_at=error.retry_at)
        except Exception as error:
            outcome = await self._failed(error, context, worker, started)
            raise
        finally:
            if sink is not None and outcome in ("succeeded", "retried", "failed"):
                await self._answered(sink, worker)
            if outcome not in ("retried", "failed"):
                observe(job, outcome, reason, time.monotonic() - started)

    async def _failed(
        self, error: Exception, context: JobContext, worker: Worker, started: float
    ) -> str:
        job = context.job
        final = is_final(worker.app.tasks.get(job.task_name), job, error)
        pool = worker.app.connector.pool  # type: ignore[attr-defined]
        await end_in_failure(
            pool, job, error, final=final, secrets=self.secrets,
            duration=time.monotonic() - started,
        )  # fmt: skip
        return "failed" if final else "retried"

    async def _outage(self, job: Job, error: SinkUnavailable, worker: Worker) -> Postponed:
        """The job's service is down: open (or keep open) its circuit, and postpone the
        job until the next probe is due or the service asked (Retry-After), whichever
        is later."""
        reason = describe(error, self.secrets)[1]
        opened = self.circuits.tripped(error.sink, job.id, reason)
        circuit = self.circuits.get(error.sink)
        wait = max(circuit.probe_due - self.circuits.clock(), 0.0)
        if opened:
            logger.warning(
                "%s is unavailable, its jobs wait (no retry spent) until it answers; next "
                "probe in %.1f s: %s",
                error.sink, wait, reason,
            )  # fmt: skip
            metrics.SINK_CIRCUIT_OPEN.labels(error.sink).set(1)
            await _execute(
                worker, "circuit_opened",
                {"sink": error.sink, "opened_at": circuit.opened_at, "reason": reason[:500]},
            )  # fmt: skip
        asked = error.retry_at if _seconds_until(error.retry_at) > wait else None
        return _postponed(reason, wait, run_at=asked)

    async def _answered(self, sink: str, worker: Worker) -> None:
        closed = self.circuits.answered(sink)
        if closed is None:
            return
        assert closed.opened_at is not None
        down = (datetime.now(UTC) - closed.opened_at).total_seconds()
        logger.warning("%s answers again after %.1f s: its jobs run again", sink, down)
        metrics.SINK_CIRCUIT_OPEN.labels(sink).set(0)
        await _execute(worker, "circuit_closed", {"sink": sink})


def _postponed(reason: str, seconds: float, *, run_at: datetime | None = None) -> Postponed:
    """The answer for a job that waits: due at `run_at`, or else in `seconds`."""
    return Postponed(run_at or datetime.now(UTC) + timedelta(seconds=seconds), reason)


async def _execute(worker: Worker, name: str, params: Mapping[str, Any]) -> None:
    """Record a circuit's change for health; the worker goes on if it cannot."""
    pool = worker.app.connector.pool  # type: ignore[attr-defined]
    try:
        async with pool.connection() as conn:
            await conn.execute(query(name), params)
    except Exception as error:
        logger.warning("could not record %s: %s", name, type(error).__name__)


def _seconds_until(moment: datetime | None) -> float:
    return 0.0 if moment is None else max((moment - datetime.now(UTC)).total_seconds(), 0.0)


def worker_middleware(settings: CoreSettings, sinks: Mapping[str, str]) -> list[Any]:
    """The worker's middleware stack, outermost first; `sinks`: task name -> the
    outside service its jobs call."""
    # Sentry itself is started by the worker (ProcqueueApp.run_worker_async): without
    # SENTRY_DSN the SDK has no client and final failures send nothing.
    circuits = Circuits(first_wait=settings.retry_backoff, max_wait=settings.circuit_max_wait)
    return [
        HandleOutcome(settings.secret_values(), sinks, circuits),
        EnforceTimeout(settings.job_timeout),
    ]
