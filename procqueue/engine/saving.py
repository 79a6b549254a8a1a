"""Saving an attempt's outcome: succeeded or failed (Procrastinate's finish, several
jobs per statement: procqueue/queue/finishing.py), retried (Procrastinate's retry),
or postponed (the same row back to waiting, attempts unchanged: migration 0018) —
waiting for the database when it is away. An outcome refused because the job is no
longer this worker's is dropped; one refused for another reason fails the job."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from procrastinate import RetryDecision
from procrastinate.jobs import DeleteJobCondition, Job, Status
from procrastinate.manager import JobManager
from psycopg_pool import AsyncConnectionPool

from procqueue.engine.outages import Backoff, first_line, is_database_outage, job_not_ours
from procqueue.engine.queries import query
from procqueue.queue.finishing import Finisher
from procqueue.queue.outcomes import Postponed, end_in_failure

logger = logging.getLogger(__name__)

@dataclass
class OutcomeSaver:
    pool: Callable[[], AsyncConnectionPool[Any]]
    job_manager: JobManager
    delete_jobs: DeleteJobCondition
    #: Seconds left before the worker's stop deadline; None while it is not stopping.
    time_left: Callable[[], float | None]
    secrets: Callable[[], tuple[str, ...]]
    #: Told of each outage met while saving (a save may have committed unseen).
    on_outage: Callable[[], None] = lambda: None

    def __post_init__(self) -> None:
        self._finisher = Finisher(
            self.pool,
            lambda job, status, delete: self.job_manager.finish_job(
                job=job, status=status, delete_job=delete
            ),
        )

    async def save(
        self,
        job: Job,
        status: Status,
        retry_decision: RetryDecision | None,
        postponed: Postponed | None,
    ) -> None:
        backoff = Backoff()
        while True:
            try:
                async with asyncio.timeout(self.time_left()):
                    await self._save(job, status, retry_decision, postponed)
                return
            except Exception as error:
                if (left := self.time_left()) is not None and left <= 0:
                    logger.warning(
                        "job %s (%s): its outcome could not be saved (%s) before the worker's "
                        "stop timeout: the stalled-job rescue will run it again",
                        job.id,
                        job.task_name,
                        first_line(error),
                    )
                    return
                if job_not_ours(error):
                    logger.warning(
                        "job %s (%s) was rescued by another worker while this one ran it; "
                        "this attempt's outcome (%s) is not saved",
                        job.id,
                        job.task_name,
                        _outcome_name(status, retry_decision, postponed),
                    )
                    return
                if not is_database_outage(error):
                    await self._fail_unsaved(job, error)
                    return
                self.on_outage()
                wait = backoff.next_wait()
                if (left := self.time_left()) is not None:
                    wait = min(wait, max(left, 0.0))
                await asyncio.sleep(wait)

    async def _save(
        self,
        job: Job,
        status: Status,
        retry_decision: RetryDecision | None,
        postponed: Postponed | None,
    ) -> None:
        if postponed is not None:
            async with self.pool().connection() as conn:
                await conn.execute(
                    query("postpone_job"),
                    {"job_id": job.id, "run_at": postponed.run_at, "reason": postponed.reason},
                )
            return
        if retry_decision is not None:
            await self.job_manager.retry_job(
                job=job,
                retry_at=retry_decision.retry_at,
                lock=retry_decision.lock,
                priority=retry_decision.priority,
                queue=retry_decision.queue,
            )
            return
        delete = {
            DeleteJobCondition.ALWAYS: True,
            DeleteJobCondition.NEVER: False,
            DeleteJobCondition.SUCCESSFUL: status == Status.SUCCEEDED,
        }[self.delete_jobs]
        await self._finisher.finish(job, status, delete)

    async def _fail_unsaved(self, job: Job, error: Exception) -> None:
        logger.error(
            "job %s (%s): Procrastinate refused to save its outcome: %s",
            job.id,
            job.task_name,
            first_line(error),
            exc_info=error,
        )
        await end_in_failure(self.pool(), job, error, final=True, secrets=self.secrets())
        try:
            await self.job_manager.finish_job(job=job, status=Status.FAILED, delete_job=False)
        except Exception as again:
            logger.error("job %s could not be failed either: %s", job.id, first_line(again))


def _outcome_name(
    status: Status, retry_decision: RetryDecision | None, postponed: Postponed | None
) -> str:
    if postponed is not None:
        return "postponed"
    return "retry" if retry_decision is not None else status.value
