"""The worker: Procrastinate's, made to outlive its database and to explain every
failure it meets before a task runs (`Worker`); `ProcqueueApp.run_worker_async`
(procqueue/runtime.py) starts it."""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

import psycopg
from procrastinate import JobContext, RetryDecision
from procrastinate import manager as procrastinate_manager
from procrastinate import utils as procrastinate_utils
from procrastinate import worker as procrastinate_worker
from procrastinate.job_context import JobResult
from procrastinate.jobs import DeleteJobCondition, Job, Status
from psycopg import sql
from psycopg_pool import PoolClosed

from procqueue.connections import connect_async
from procqueue.errors import PermanentError, ProcqueueError
from procqueue.queries import query
from procqueue.queue import metrics, sentry
from procqueue.queue.batch import JOB_RUNNER
from procqueue.queue.failures import describe, record_failed_attempt
from procqueue.queue.finishing import Finisher

if TYPE_CHECKING:
    from procqueue.runtime import ProcqueueApp

logger = logging.getLogger(__name__)


class WorkerStopped(ProcqueueError):
    """The worker stopped by itself: one of its side tasks failed on something other
    than the database being away."""


class UnknownTask(PermanentError):
    """A job names a task this worker does not have."""


class InvalidJobArgs(PermanentError):
    """A job's args are not keyword arguments its task takes."""


#: Waits between attempts to reach a database that went away: doubling from the
#: first to the cap, each +-25 % so that many workers do not knock at once.
RECONNECT_FIRST_WAIT = 0.2
RECONNECT_MAX_WAIT = 5.0
#: A LISTEN connection with no notification for this long is checked with a query.
LISTEN_KEEPALIVE = 30.0
#: Tries to save a job's outcome, once the worker is stopping, before leaving it to the rescue.
SAVE_TRIES_WHEN_STOPPING = 3
WORKER_APPLICATION = "procqueue-worker"


def is_database_outage(error: BaseException) -> bool:
    """Whether `error` means the database is away for now (a killed connection, a
    restart, the network, no pooled connection in time), which waiting cures, as
    opposed to a fault waiting cannot cure (a missing function or privilege, bad SQL).
    Procrastinate's connector wraps the psycopg error: its cause is looked at too."""
    current: BaseException | None = error
    for _ in range(5):
        if current is None or isinstance(current, PoolClosed):
            return False
        if isinstance(current, psycopg.OperationalError | ConnectionError | TimeoutError):
            return True
        current = current.__cause__
    return False


def _job_not_ours(error: BaseException) -> bool:
    """Procrastinate refused to save an outcome: the job is no longer `doing` (the
    stalled-job rescue gave it to another worker, which may have finished it)."""
    cause = error.__cause__ or error
    return isinstance(cause, psycopg.errors.RaiseException) and "Job was not found" in str(cause)


def _worker_gone(error: BaseException) -> bool:
    """Fetching a job failed because this worker's row is gone (taken for dead)."""
    cause = error.__cause__ or error
    return isinstance(cause, psycopg.errors.ForeignKeyViolation) and "worker" in str(cause)


class _Backoff:
    def __init__(self) -> None:
        self.tries = 0

    def next_wait(self) -> float:
        wait = min(RECONNECT_MAX_WAIT, RECONNECT_FIRST_WAIT * 2.0 ** min(self.tries, 16))
        self.tries += 1
        return wait * random.uniform(0.75, 1.25)


class Worker(procrastinate_worker.Worker):
    """Procrastinate's worker, made to outlive its database and to explain every
    failure.

    - The database going away (killed connections, a restart) never stops it: its
      fetch loop and each side task (heartbeat, periodic deferrer, abort poller,
      listener) wait and try again with capped backoff; the listener LISTENs again
      and fetches what was deferred meanwhile; a job's outcome is saved once the
      database is back. A side task failing on anything else stops the worker, which
      remembers why so that `run_worker_async` raises (a non-zero exit) instead of
      returning as after a signal.
    - Taken for dead (its row pruned after a late heartbeat), it registers again.
    - Stopping, it heartbeats until its running jobs are done, so no other worker
      rescues them; a job the rescue did take meanwhile is left to its new worker.
    - A job it cannot run (an unknown task, args that are not an object or not
      arguments its task takes: checks Procrastinate makes before, or not at all,
      our middleware) fails with a recorded reason instead of crashing the worker's
      job task and staying `doing`.
    """

    side_task_failure: tuple[str, BaseException] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._registering = asyncio.Lock()
        self._signatures: dict[str, inspect.Signature | None] = {}
        self.additional_context = {**(self.additional_context or {}), JOB_RUNNER: self}
        self._finisher = Finisher(
            lambda: self._procqueue.pool,
            lambda job, status, delete: self.app.job_manager.finish_job(
                job=job, status=status, delete_job=delete
            ),
        )

    @property
    def _procqueue(self) -> ProcqueueApp:
        return cast("ProcqueueApp", self.app)

    # Side tasks ------------------------------------------------------------

    def _start_side_tasks(self) -> list[asyncio.Task[Any]]:
        side: dict[str, Callable[[], Awaitable[Any]]] = {
            "update_heartbeats": self._update_heartbeat,
            "deferrer": self._periodic_deferrer,
            "poll_jobs_to_abort": self._poll_jobs_to_abort,
        }
        if self.listen_notify:
            side["listener"] = self._listen
        return [
            asyncio.create_task(self._supervised(name, run), name=name)
            for name, run in side.items()
        ]

    async def _supervised(self, name: str, run: Callable[[], Awaitable[Any]]) -> None:
        """Run a side task again after a wait each time it fails because the database
        is away; any other failure ends it (and the worker: `_monitor_side_tasks`)."""
        backoff = _Backoff()
        while True:
            started = time.monotonic()
            try:
                await run()
                return
            except Exception as error:
                if not is_database_outage(error):
                    raise
                if time.monotonic() - started > 2 * RECONNECT_MAX_WAIT:
                    backoff = _Backoff()  # it had worked again since the last failure
                wait = backoff.next_wait()
                logger.log(
                    logging.WARNING if backoff.tries == 1 else logging.INFO,
                    "worker side task %s lost the database (%s); trying again in %.1f s",
                    name,
                    first_line(error),
                    wait,
                )
                await asyncio.sleep(wait)

    async def _monitor_side_tasks(self, side_tasks: list[asyncio.Task[Any]]) -> None:
        # Procrastinate's own watch ends with the first side task to finish, and the
        # deferrer finishes at once when there is no periodic task.
        pending = set(side_tasks)
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                error = None if task.cancelled() else task.exception()
                if error is not None:
                    self.side_task_failure = (task.get_name(), error)
                    logger.error(
                        "side task %s failed, stopping the worker: %s",
                        task.get_name(),
                        first_line(error),
                        exc_info=error,
                    )
                    self.stop()  # type: ignore[no-untyped-call]
                    return

    async def _update_heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.update_heartbeat_interval)
            await self._beat()

    async def _beat(self) -> None:
        worker_id = self.worker_id
        if worker_id is None:
            return
        async with self._procqueue.pool.connection() as conn:
            cursor = await conn.execute(query("worker_heartbeat"), {"worker_id": worker_id})
            row = await cursor.fetchone()
        if row is not None and not row[1]:
            await self._register_again(worker_id)

    async def _register_again(self, lost_id: int) -> None:
        """Our row is gone: another worker took us for dead (a heartbeat later than
        PROCQUEUE_STALLED_TIMEOUT) and pruned it. Register anew and take back the
        running jobs the rescue has not retried yet."""
        async with self._registering:
            if self.worker_id != lost_id:
                return  # registered again meanwhile
            new_id: int = await self.app.job_manager.register_worker()
            self.worker_id = new_id
            running = [context.job.id for context in self._running_jobs.values()]
            async with self._procqueue.pool.connection() as conn:
                cursor = await conn.execute(
                    query("reclaim_worker_jobs"), {"worker_id": new_id, "job_ids": running}
                )
                kept = len(await cursor.fetchall())
        logger.warning(
            "worker %s was taken for dead (no heartbeat for PROCQUEUE_STALLED_TIMEOUT s, e.g. "
            "while the database was away) and pruned; registered again as worker %s, keeping "
            "%d of its %d running job(s) (the others were rescued and may run twice)",
            lost_id,
            new_id,
            kept,
            len(running),
        )

    async def _listen(self) -> None:
        """LISTEN on this worker's channels; once listening, fetch (jobs deferred while
        nothing listened were announced to no one). Returns only by failing."""
        settings = self._procqueue.services.settings
        async with await connect_async(
            settings.dsn,
            transaction_pooler=settings.uses_transaction_pooler,
            application_name=WORKER_APPLICATION,
            autocommit=True,
            connect_timeout=10,
        ) as conn:
            for channel in procrastinate_manager.get_channel_for_queues(self.queues):
                await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
            self._new_job_event.set()
            while True:
                async for notify in conn.notifies(timeout=LISTEN_KEEPALIVE):
                    await self._handle_notification(
                        channel=notify.channel, notification=_payload(notify.payload)
                    )
                await conn.execute("SELECT 1")  # a connection cut silently fails here

    async def _handle_notification(self, *, channel: str, notification: Any) -> None:
        """A notification is a hint, never an order: anyone who can connect may NOTIFY
        on any channel (Postgres checks no privilege; Supabase's API roles can). So a
        new-job hint only wakes the fetch, an abort hint makes the worker read which
        of its jobs the jobs table says to abort, and anything else is ignored."""
        kind = notification.get("type") if isinstance(notification, dict) else None
        if kind == "job_inserted":
            self._new_job_event.set()
        elif kind == "abort_job_requested":
            try:
                requested = await self.app.job_manager.list_jobs_to_abort_async()
            except Exception as error:
                if not is_database_outage(error):
                    raise
                return  # the abort poller asks again
            self._handle_abort_jobs_requested(requested)

    # Fetching and running jobs ---------------------------------------------

    async def _fetch_and_process_jobs(self) -> None:
        backoff = _Backoff()
        while True:
            try:
                await super()._fetch_and_process_jobs()  # type: ignore[no-untyped-call]
                return
            except Exception as error:
                if _worker_gone(error) and self.worker_id is not None:
                    await self._register_again(self.worker_id)
                    continue
                if not is_database_outage(error):
                    raise
                wait = backoff.next_wait()
                logger.log(
                    logging.WARNING if backoff.tries == 1 else logging.INFO,
                    "the worker cannot fetch jobs (%s); trying again in %.1f s",
                    first_line(error),
                    wait,
                )
                await procrastinate_utils.wait_any(asyncio.sleep(wait), self._stop_event.wait())
                if self._stop_event.is_set():
                    return

    async def _process_job(self, context: JobContext) -> None:
        refusal = self._refusal(context.job)
        if refusal is not None:
            await self._fail_unrun(context, refusal)
            return
        try:
            await super()._process_job(context)
        except Exception as error:
            # Not the task's error (the middleware handles those): Procrastinate's own,
            # around it. Fail the job rather than leave it `doing` for good.
            logger.error(
                "the worker failed around job %s (%s): %s",
                context.job.id,
                context.job.task_name,
                first_line(error),
                exc_info=error,
            )
            await self._fail_unrun(context, error)

    # Jobs a running job claimed for its batch (procqueue/queue/batch.py) ----

    def claiming_worker_id(self) -> int | None:
        return None if self._stop_event.is_set() else self.worker_id

    def adopt(self, jobs: Sequence[Job]) -> None:
        """Run jobs a running job claimed as if this worker had fetched them: same
        middleware, same saving of outcomes, seen by heartbeats, aborts, shutdown and
        re-registration; outside the concurrency limit, as they wait on their batch."""
        for job in jobs:
            context = JobContext(
                app=self.app, worker_name=self.worker_name, worker_queues=self.queues,
                additional_context=dict(self.additional_context or {}), job=job,
                abort_reason=functools.partial(self._job_ids_to_abort.get, job.id or 0),
                start_timestamp=time.time(),
            )  # fmt: skip
            task = asyncio.create_task(
                self._process_job(context), name=f"process job {job.task_name}[{job.id}]"
            )
            self._running_jobs[task] = context
            task.add_done_callback(lambda done: self._running_jobs.pop(done, None))

    def _refusal(self, job: Job) -> Exception | None:
        """Why `job` cannot run at all, or None."""
        kwargs: Any = job.task_kwargs
        if not isinstance(kwargs, dict):
            return InvalidJobArgs(
                f"job args must be a JSON object of keyword arguments, got "
                f"{_json_kind(kwargs)}: {_clipped_repr(kwargs)}; enqueue "
                f"procqueue.add_job({job.task_name!r}, '{{...}}'::jsonb, ...)"
            )
        task = self.app.tasks.get(job.task_name)
        if task is None:
            return UnknownTask(
                f"no task named {job.task_name!r} in this worker: a typo in what enqueued it, "
                "or a worker older than that code (deploy one that has the task, then "
                f"`procqueue retry {job.id}`)"
            )
        signature = self._signature(task)
        if signature is None:
            return None
        try:
            signature.bind(*([None] if task.pass_context else []), **kwargs)
        except TypeError as error:
            wanted = [
                name if parameter.default is inspect.Parameter.empty else f"{name}=..."
                for name, parameter in signature.parameters.items()
                if parameter.kind
                in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
            ]
            given = ", ".join(_clipped_repr(key, 40) for key in list(kwargs)[:10]) or "none"
            return InvalidJobArgs(
                f"{job.task_name} takes ({', '.join(wanted)}); the job's args ({given}) do "
                f"not fit: {error}"
            )
        return None

    def _signature(self, task: Any) -> inspect.Signature | None:
        if task.name not in self._signatures:
            try:
                self._signatures[task.name] = inspect.signature(task.func)
            except (TypeError, ValueError):
                self._signatures[task.name] = None
        return self._signatures[task.name]

    async def _fail_unrun(self, context: JobContext, error: Exception) -> None:
        """Fail `context.job` for good with `error` recorded, as the middleware would."""
        job = context.job
        secrets = self._procqueue.services.settings.secret_values()
        await record_failed_attempt(self._procqueue.pool, job, error, final=True, secrets=secrets)
        sentry.capture_final_failure(error, job)
        metrics.observe_job(job.task_name, job.queue, "failed", 0.0)
        error_type, message = describe(error, secrets)
        logger.error(
            "job %s (%s) attempt %d failed for good: %s: %s",
            job.id,
            job.task_name,
            job.attempts + 1,
            error_type.rsplit(".", 1)[-1],
            message,
            extra={"job_id": job.id, "task": job.task_name, "queue": job.queue},
        )
        await self._persist_job_status(job, Status.FAILED, None, context, None)

    async def _persist_job_status(
        self,
        job: Job,
        status: Status,
        retry_decision: RetryDecision | None,
        context: JobContext,
        job_result: JobResult | None,
    ) -> None:
        """Save an attempt's outcome, waiting for the database if it is away. An
        outcome Procrastinate refuses because the job is no longer this worker's
        (rescued meanwhile) is dropped with a warning; one it refuses for another
        reason fails the job, recorded, rather than leave it `doing` for good."""
        backoff = _Backoff()
        while True:
            try:
                await self._save_outcome(job, status, retry_decision)
                break
            except Exception as error:
                if _job_not_ours(error):
                    logger.warning(
                        "job %s (%s) was rescued by another worker while this one ran it; "
                        "this attempt's outcome (%s) is not saved",
                        job.id,
                        job.task_name,
                        "retry" if retry_decision else status.value,
                    )
                    break
                if not is_database_outage(error):
                    await self._fail_unsaved(job, error)
                    break
                if self._stop_event.is_set() and backoff.tries >= SAVE_TRIES_WHEN_STOPPING:
                    logger.warning(
                        "job %s (%s): its outcome could not be saved (%s) and the worker is "
                        "stopping: the stalled-job rescue will run it again",
                        job.id,
                        job.task_name,
                        first_line(error),
                    )
                    break
                await asyncio.sleep(backoff.next_wait())
        assert job.id is not None
        self._job_ids_to_abort.pop(job.id, None)
        retry_at = retry_decision.retry_at if retry_decision is not None else None
        if retry_at is not None and retry_at.tzinfo is not None:
            # A retry sends no NOTIFY: fetch when it is due, not at the next poll.
            due_in = (retry_at - datetime.now(UTC)).total_seconds()
            if due_in < self.fetch_job_polling_interval:
                asyncio.get_running_loop().call_later(max(due_in, 0.0), self._new_job_event.set)

    async def _save_outcome(
        self, job: Job, status: Status, retry_decision: RetryDecision | None
    ) -> None:
        manager = self.app.job_manager
        if retry_decision is not None:
            await manager.retry_job(
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
        secrets = self._procqueue.services.settings.secret_values()
        await record_failed_attempt(self._procqueue.pool, job, error, final=True, secrets=secrets)
        try:
            await self.app.job_manager.finish_job(job=job, status=Status.FAILED, delete_job=False)
        except Exception as again:
            logger.error("job %s could not be failed either: %s", job.id, first_line(again))

    # Stopping --------------------------------------------------------------

    async def _shutdown(self, side_tasks: list[asyncio.Task[Any]]) -> None:
        """Procrastinate's shutdown, but heartbeating until the running jobs are done
        (else other workers would rescue them meanwhile), and leaving the worker's
        row to be pruned if the database is away."""
        heartbeat = [task for task in side_tasks if task.get_name() == "update_heartbeats"]
        await procrastinate_utils.cancel_and_capture_errors(
            [task for task in side_tasks if task not in heartbeat]
        )
        if self._running_jobs:
            logger.info(
                "stopping: waiting for %d running job(s) to finish: %s",
                len(self._running_jobs),
                ", ".join(str(context.job.id) for context in self._running_jobs.values()),
            )
            await asyncio.wait(self._running_jobs, timeout=self.shutdown_graceful_timeout)
        await procrastinate_utils.cancel_and_capture_errors(heartbeat)
        if self._running_jobs:
            logger.info(
                "%d job(s) still running after the graceful timeout: aborting them",
                len(self._running_jobs),
            )
            await self._abort_running_jobs()  # type: ignore[no-untyped-call]
        if self.worker_id is not None:
            try:
                await self.app.job_manager.unregister_worker(self.worker_id)
            except Exception as error:
                if not is_database_outage(error):
                    raise
                logger.warning(
                    "worker %s could not unregister (%s): other workers prune it after "
                    "PROCQUEUE_STALLED_TIMEOUT s",
                    self.worker_id,
                    first_line(error),
                )
            self.worker_id = None
        logger.info("Stopped worker on %s", procrastinate_utils.queues_display(self.queues))


def _payload(text: str) -> Any:
    """A notification's JSON payload, or None when it is not JSON (a stranger's)."""
    try:
        return json.loads(text)
    except ValueError:
        return None


def _json_kind(value: Any) -> str:
    kinds = {str: "a JSON string", list: "a JSON array", bool: "a JSON boolean"}
    if value is None:
        return "JSON null"
    for kind, name in kinds.items():
        if isinstance(value, kind):
            return name
    return "a JSON number" if isinstance(value, int | float) else type(value).__name__


def _clipped_repr(value: Any, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def first_line(error: BaseException) -> str:
    """The first line of an error and of its cause (Procrastinate's connector wraps
    every database error in an empty-sounding ConnectorException)."""
    for candidate in (error.__cause__, error):
        text = str(candidate or "").strip()
        if text and text != "Database error.":
            return text.splitlines()[0]
    return type(error).__name__
