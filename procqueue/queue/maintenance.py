"""Periodic maintenance tasks: stalled-job rescue and pruning.

Both run as Procrastinate periodic jobs on the `maintenance` queue (every worker
that does not restrict its queues serves it), each with a queueing lock so
that a busy queue never piles them up.

- Rescue (every PROCQUEUE_RESCUE_INTERVAL seconds): a job still `doing` whose
  worker has not heartbeaten for PROCQUEUE_STALLED_TIMEOUT seconds lost its
  worker (SIGKILL, out of memory, host gone). The attempt is recorded as a
  transient `WorkerLost` failure and the job retried now, or failed for good
  once the retry policy is exhausted (a job that kills its worker every time
  must not loop forever). Each lost worker is reported to Sentry once. A job
  `doing` longer than PROCQUEUE_JOB_TIMEOUT + PROCQUEUE_STALLED_TIMEOUT is taken back
  the same way (`JobOverran`) even under a live worker: no live worker holds one that
  long (the timeout cancels it), so its worker lost it — a claim whose answer was lost
  after the commit, a worker that stopped while the database was down.
- Prune (PROCQUEUE_PRUNE_CRON): succeeded jobs older than
  PROCQUEUE_PRUNE_SUCCEEDED_AFTER (and the log of succeeded attempts whose job left
  at once, migration 0026), failed/cancelled/aborted ones older than
  PROCQUEUE_PRUNE_FAILED_AFTER, with their events and error rows, in batches
  of PROCQUEUE_PRUNE_BATCH_SIZE, each its own short transaction, for at most
  half the job timeout per run (the rest waits for the next run). Each run
  first rolls up the completed hours of task stats (migration 0017) and the
  Charts page's minutes (0023); so does each rescue run, for at most 24 hours,
  which also samples every queue's depth and lag once a minute (chart_history.py).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from croniter import croniter
from procrastinate import exceptions
from procrastinate.jobs import Job, Status
from psycopg.rows import dict_row

from procqueue.engine.app import ProcqueueApp
from procqueue.errors import ConfigError, TransientError
from procqueue.queue import sentry
from procqueue.queue.chart_history import record_chart_history
from procqueue.queue.health import roll_up_task_stats
from procqueue.queue.outcomes import end_in_failure, is_final
from procqueue.queue.queries import query

logger = logging.getLogger(__name__)

MAINTENANCE_QUEUE = "maintenance"
RESCUE_TASK = "procqueue:rescue_stalled"
PRUNE_TASK = "procqueue:prune"
FINISHED_SUCCESSFULLY = ("succeeded",)
FINISHED_UNSUCCESSFULLY = ("failed", "cancelled", "aborted")


class WorkerLost(TransientError):
    """The worker running the job stopped heartbeating (killed, out of memory, host lost)."""


class JobOverran(TransientError):
    """The job was `doing` longer than any live worker holds one: whoever holds it lost
    it (a claim whose answer was lost, a stop while the database was down)."""


@dataclass
class RescueReport:
    retried: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    pruned_workers: list[int] = field(default_factory=list)


@dataclass
class PruneReport:
    succeeded: int = 0
    unsuccessful: int = 0
    orphan_errors: int = 0
    logged_attempts: int = 0
    complete: bool = True


async def rescue_stalled_jobs(app: ProcqueueApp) -> RescueReport:
    """Retry (or fail for good) every job whose worker stopped heartbeating, and every
    job `doing` longer than its timeout plus PROCQUEUE_STALLED_TIMEOUT, whoever holds it."""
    settings = app.services.settings
    timeout = settings.stalled_timeout
    overrun = settings.overrun_after
    report = RescueReport()
    lost: dict[int | None, list[int]] = defaultdict(list)
    stalled = [
        (job, WorkerLost(
            f"worker {job.worker_id} stopped heartbeating for more than {timeout:g} s while "
            "running this job (killed, out of memory or host lost); see that worker's logs"
        ))
        for job in await app.job_manager.get_stalled_jobs(seconds_since_heartbeat=timeout)
    ]  # fmt: skip
    seen = {job.id for job, _ in stalled}
    overran = [
        (job, JobOverran(
            f"job was running for more than {overrun:g} s (PROCQUEUE_JOB_TIMEOUT + "
            f"PROCQUEUE_STALLED_TIMEOUT) under worker {job.worker_id}, longer than a live "
            "worker holds one: the worker lost it (a claim whose answer was lost, a stop "
            "while the database was down); taken back"
        ))
        for job in await _overran_jobs(app, overrun)
        if job.id not in seen
    ]  # fmt: skip
    for job, error in stalled + overran:
        assert job.id is not None
        final = is_final(app.tasks.get(job.task_name), job, error)
        if not await _settle(app, job, final):
            continue
        await end_in_failure(app.pool, job, error, final=final, secrets=settings.secret_values())
        (report.failed if final else report.retried).append(job.id)
        if isinstance(error, WorkerLost):
            lost[job.worker_id].append(job.id)
    for worker_id, job_ids in lost.items():
        sentry.capture_lost_worker(worker_id, job_ids, timeout)
    report.pruned_workers = await app.job_manager.prune_stalled_workers(timeout)
    if report.retried or report.failed or report.pruned_workers:
        logger.warning(
            "stalled-job rescue: retried %s, failed %s, pruned workers %s",
            report.retried,
            report.failed,
            report.pruned_workers,
        )
    return report


async def _overran_jobs(app: ProcqueueApp, seconds: float) -> list[Job]:
    async with app.pool.connection() as conn:
        cursor = conn.cursor(row_factory=dict_row)
        await cursor.execute(query("overran_jobs"), {"seconds": seconds})
        return [Job.from_row(row) for row in await cursor.fetchall()]


async def _settle(app: ProcqueueApp, job: Job, final: bool) -> bool:
    """Retry the job now, or fail it; False if it finished on its own meanwhile."""
    try:
        if final:
            await app.job_manager.finish_job(job, status=Status.FAILED, delete_job=False)
        else:
            await app.job_manager.retry_job(job)
    except exceptions.ConnectorException as error:
        logger.info("job %s was not rescued, it is no longer running: %s", job.id, error)
        return False
    return True


async def _prune_status(
    app: ProcqueueApp, status: str, cutoff: datetime, deadline: float
) -> tuple[int, bool]:
    """Delete the jobs of one final status that ended before `cutoff`, batch by
    batch along the end-event index; (deleted, finished before the deadline)."""
    batch_size = app.services.settings.prune_batch_size
    params: dict[str, Any] = {
        "status": status,
        "event_type": status,  # same name; a separate parameter keeps its own type
        "cutoff": cutoff,
        "batch_size": batch_size,
        "after_at": datetime.min.replace(tzinfo=UTC),
    }
    total = 0
    while True:
        async with app.pool.connection() as conn:
            cursor = await conn.execute(query("prune_finished_jobs"), params)
            deleted, scanned, last_at = await cursor.fetchone() or (0, 0, None)
        total += deleted
        if scanned < batch_size:
            return total, True
        if time.monotonic() >= deadline:
            return total, False
        # Resume at the last time seen (>=): ties are looked at again, rows
        # deleted are gone, so a batch never skips a job.
        params["after_at"] = last_at


async def _prune_in_batches(
    app: ProcqueueApp, name: str, cutoff: datetime, deadline: float
) -> tuple[int, bool]:
    """Run the named one-batch delete until a batch comes back short; (deleted,
    finished before the deadline)."""
    batch_size = app.services.settings.prune_batch_size
    total = 0
    while True:
        async with app.pool.connection() as conn:
            cursor = await conn.execute(query(name), {"cutoff": cutoff, "batch_size": batch_size})
        total += cursor.rowcount
        if cursor.rowcount < batch_size:
            return total, True
        if time.monotonic() >= deadline:
            return total, False


async def prune(app: ProcqueueApp, now: datetime | None = None) -> PruneReport:
    """Delete old finished jobs (with events and errors) in short batches."""
    settings = app.services.settings
    now = now or datetime.now(UTC)
    deadline = time.monotonic() + settings.job_timeout / 2
    report = PruneReport()
    # First, while the events that the hourly task stats need still exist.
    await roll_up_task_stats(app.pool, deadline)
    await record_chart_history(app.pool, deadline)
    for status in FINISHED_SUCCESSFULLY + FINISHED_UNSUCCESSFULLY:
        successful = status in FINISHED_SUCCESSFULLY
        age = settings.prune_succeeded_after if successful else settings.prune_failed_after
        count, complete = await _prune_status(app, status, now - age, deadline)
        if successful:
            report.succeeded += count
        else:
            report.unsuccessful += count
        report.complete = report.complete and complete
    report.logged_attempts, complete = await _prune_in_batches(
        app, "prune_finished_attempts", now - settings.prune_succeeded_after, deadline
    )
    report.complete = report.complete and complete
    report.orphan_errors, complete = await _prune_in_batches(
        app, "prune_orphan_errors", now - settings.prune_failed_after, deadline
    )
    report.complete = report.complete and complete
    if (
        report.succeeded
        or report.unsuccessful
        or report.logged_attempts
        or report.orphan_errors
        or not report.complete
    ):
        logger.info(
            "pruned %d succeeded and %d failed/cancelled/aborted jobs, %d logged succeeded "
            "attempts, %d orphan error rows%s",
            report.succeeded,
            report.unsuccessful,
            report.logged_attempts,
            report.orphan_errors,
            "" if report.complete else " (time budget used up; the next run goes on)",
        )
    return report


def register(app: ProcqueueApp) -> None:
    """The two periodic tasks; PROCQUEUE_MAINTENANCE_TASKS=false leaves them out."""
    settings = app.services.settings
    if not settings.maintenance_tasks:
        return
    # Checked here, when the app is built: Procrastinate's periodic deferrer would
    # only fail on it inside a running worker, with a traceback.
    if not croniter.is_valid(settings.prune_cron):
        raise ConfigError(
            f"PROCQUEUE_PRUNE_CRON is not a cron expression: {settings.prune_cron!r}: give "
            "five fields (minute hour day-of-month month day-of-week), e.g. '*/10 * * * *'"
        )

    async def rescue_stalled(timestamp: int) -> dict[str, list[int]]:
        report = await rescue_stalled_jobs(app)
        await roll_up_task_stats(app.pool, deadline=0)  # keeps the hourly stats a minute behind
        await record_chart_history(app.pool, deadline=0)  # one depth sample a minute
        return {"retried": report.retried, "failed": report.failed}

    async def prune_old_jobs(timestamp: int) -> dict[str, int]:
        report = await prune(app)
        return {"succeeded": report.succeeded, "unsuccessful": report.unsuccessful}

    rescue = app.task(
        name=RESCUE_TASK, queue=MAINTENANCE_QUEUE, priority=100, queueing_lock=RESCUE_TASK
    )(rescue_stalled)
    app.periodic(cron=f"* * * * * */{settings.rescue_interval}", periodic_id="rescue")(rescue)
    pruner = app.task(
        name=PRUNE_TASK, queue=MAINTENANCE_QUEUE, priority=100, queueing_lock=PRUNE_TASK
    )(prune_old_jobs)
    app.periodic(cron=settings.prune_cron, periodic_id="prune")(pruner)
