"""The worker: Procrastinate's, made to outlive its database and to explain every
failure it meets before a task runs (`Worker`); `ProcqueueApp.run_worker_async`
(procqueue/engine/app.py) starts it. Its parts: waiting out outages
(engine/outages.py), refusing jobs it cannot run (engine/refusals.py), saving
outcomes (engine/saving.py). docs/procrastinate.md lists every Procrastinate
method it overrides and why."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
import os
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

from procrastinate import JobContext, RetryDecision
from procrastinate import exceptions as procrastinate_exceptions
from procrastinate import manager as procrastinate_manager
from procrastinate import utils as procrastinate_utils
from procrastinate import worker as procrastinate_worker
from procrastinate.job_context import AbortReason, JobResult
from procrastinate.jobs import Job, Status
from psycopg import sql
from psycopg.rows import dict_row

from procqueue import __version__
from procqueue.engine.connections import connect_async
from procqueue.engine.liveness import Liveness
from procqueue.engine.outages import (
    Backoff,
    first_line,
    is_database_outage,
    run_through_outages,
    worker_gone,
)
from procqueue.engine.queries import query
from procqueue.engine.refusals import Refusals, UnknownTask
from procqueue.engine.saving import OutcomeSaver
from procqueue.errors import ProcqueueError
from procqueue.queue.batch import JOB_RUNNER
from procqueue.queue.outcomes import Postponed, end_in_failure, observe
from procqueue.queue.queries import query as queue_query

if TYPE_CHECKING:
    from procqueue.engine.app import ProcqueueApp

logger = logging.getLogger(__name__)


class WorkerStopped(ProcqueueError):
    """The worker stopped by itself: one of its side tasks failed on something other
    than the database being away."""


#: A LISTEN connection with no notification for this long is checked with a query.
LISTEN_KEEPALIVE = 30.0
#: Seconds of the stop timeout kept for aborting the jobs still running and saving
#: their outcomes; and the least time unregistering may take.
ABORT_RESERVE = 2.0
UNREGISTER_AT_LEAST = 1.0
#: Seconds a fetch in flight may go on once the worker is asked to stop.
FETCH_GRACE = 1.0
#: Seconds a job of a task this worker does not have waits before a worker looks again.
UNKNOWN_TASK_WAIT = 10.0
WORKER_APPLICATION = "procqueue-worker"


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
    - Its fetch loop and heartbeat note each turn in `liveness` (engine/liveness.py),
      which its port's `/livez` reads (engine/probes.py).
    """

    side_task_failure: tuple[str, BaseException] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._registering = asyncio.Lock()
        self._stop_deadline: float | None = None
        self._answer_lost_at: float | None = None
        self._refusals = Refusals()
        #: Attempts this worker ran to an end (not postponements): procqueue.worker_details
        #: (migration 0022) has it as of the last heartbeat.
        self.jobs_done = 0
        self.additional_context = {**(self.additional_context or {}), JOB_RUNNER: self}
        self._outcomes = OutcomeSaver(
            pool=lambda: self._procqueue.pool,
            job_manager=self.app.job_manager,
            delete_jobs=self.delete_jobs,
            time_left=self.stop_time_left,
            on_outage=self.answer_maybe_lost,
            secrets=self._procqueue.services.settings.secret_values,
        )
        self.liveness = Liveness(
            polling_interval=self.fetch_job_polling_interval,
            heartbeat_interval=self.update_heartbeat_interval,
            stalled_timeout=self.stalled_worker_timeout,
            pool_timeout=self._procqueue.pool.timeout,
        )

    @property
    def _procqueue(self) -> ProcqueueApp:
        return cast("ProcqueueApp", self.app)

    # Side tasks ------------------------------------------------------------

    def _start_side_tasks(self) -> list[asyncio.Task[Any]]:
        # The run loop starts (the worker is registered): from now on `/livez` judges it.
        self.liveness.started()
        self._procqueue.services.liveness = self.liveness
        side: dict[str, Callable[[], Awaitable[Any]]] = {
            "update_heartbeats": self._update_heartbeat,
            "deferrer": self._periodic_deferrer,
            "poll_jobs_to_abort": self._poll_jobs_to_abort,
            "record_details": self._record_details,
        }
        if self.listen_notify:
            side["listener"] = self._listen
        return [
            asyncio.create_task(run_through_outages(name, run), name=name)
            for name, run in side.items()
        ]

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
        self.liveness.heartbeat.begin()
        try:
            await self._beat_once()
        finally:  # an error the side task waits out is a turn too
            self.liveness.heartbeat.end()

    async def _beat_once(self) -> None:
        worker_id = self.worker_id
        if worker_id is None:
            return
        async with self._procqueue.pool.connection() as conn:
            cursor = await conn.execute(
                query("worker_heartbeat"), {"worker_id": worker_id, "jobs_done": self.jobs_done}
            )
            row = await cursor.fetchone()
        if row is not None and not row[1]:
            await self._register_again(worker_id)
        elif (
            self._answer_lost_at is not None
            and self._loop_time() - self._answer_lost_at > self.stalled_worker_timeout
        ):
            await self._release_unheld_jobs(worker_id)

    async def _record_details(self) -> None:
        """Say who this worker is beside its Procrastinate row (procqueue.worker_details,
        migration 0022): host, pid, queues, concurrency; read by `procqueue queues` and the
        dashboard's Workers and Queues pages."""
        worker_id = self.worker_id
        if worker_id is None:
            return
        async with self._procqueue.pool.connection() as conn:
            await conn.execute(
                query("record_worker_details"),
                {
                    "worker_id": worker_id,
                    "host": socket.gethostname(),
                    "pid": os.getpid(),
                    "name": self.worker_name,
                    "queues": None if self.queues is None else list(self.queues),
                    "concurrency": self.concurrency,
                    "listens": self.listen_notify,
                    "version": __version__,
                    "jobs_done": self.jobs_done,
                },
            )

    def answer_maybe_lost(self) -> None:
        """A fetch, a claim or an outcome met the database going away: a statement may
        have committed whose answer never came. The next heartbeat that gets through
        releases, once no answer can still be on its way, the jobs that carry this
        worker's id but are not in its hands.

        It also fetches again: a claim that failed may have been rolled back, and the
        jobs it had locked (which a fetch meanwhile skipped) are waiting again, which
        no NOTIFY announces."""
        self._answer_lost_at = self._loop_time()
        self._new_job_event.set()

    async def _release_unheld_jobs(self, worker_id: int) -> None:
        lost_at, self._answer_lost_at = self._answer_lost_at, None
        held = [context.job.id for context in self._running_jobs.values()]
        try:
            async with self._procqueue.pool.connection() as conn:
                cursor = await conn.execute(
                    query("release_unheld_jobs"),
                    {
                        "worker_id": worker_id,
                        "held": held,
                        # Older than any answer could still be on its way.
                        "after": self.stalled_worker_timeout,
                        "reason": f"worker {worker_id} lost the answer of the fetch or claim "
                        "that gave it this job (the database went away); released, no "
                        "attempt spent",
                    },
                )
                released = [row[0] for row in await cursor.fetchall()]
        except Exception:
            self._answer_lost_at = self._answer_lost_at or lost_at  # the next beat tries again
            raise
        if released:
            # Due now, and no NOTIFY announces a job put back to waiting: fetch them
            # (a worker that polls seldom would otherwise leave them until its poll).
            self._new_job_event.set()
            logger.warning(
                "worker %s released %d job(s) it had claimed but never received (the "
                "database went away during the claim): %s",
                worker_id,
                len(released),
                ", ".join(str(job_id) for job_id in released),
            )

    async def _register_again(self, lost_id: int) -> None:
        """Our row is gone: another worker took us for dead (a heartbeat later than
        PROCQUEUE_STALLED_TIMEOUT) and pruned it. Register anew and take back the
        running jobs the rescue has not retried yet."""
        async with self._registering:
            if self.worker_id != lost_id:
                return  # registered again meanwhile
            new_id: int = await self.app.job_manager.register_worker()
            self.worker_id = new_id
            await self._record_details()
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
        new-job hint (or a resumed queue's) only wakes the fetch, an abort hint makes the
        worker read which of its jobs the jobs table says to abort, and anything else is
        ignored."""
        kind = notification.get("type") if isinstance(notification, dict) else None
        if kind in ("job_inserted", "queue_resumed"):  # a resumed queue's jobs wait
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
        """Procrastinate's fetch loop, waiting out database outages; a stop asked while
        a fetch hangs on a database that is away does not wait for it beyond
        FETCH_GRACE (a fetch that committed unseen is rescued: `answer_maybe_lost`)."""
        fetching = asyncio.create_task(self._fetch_through_outages(), name="fetch jobs")
        stopping = asyncio.create_task(self._stop_event.wait())
        try:
            await asyncio.wait({fetching, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not fetching.done():
                await asyncio.wait({fetching}, timeout=FETCH_GRACE)
            if not fetching.done():
                fetching.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await fetching
                self.answer_maybe_lost()
                return
            fetching.result()
        finally:
            stopping.cancel()
            fetching.cancel()  # only if it is still running: the worker itself is cancelled

    async def _fetch_through_outages(self) -> None:
        backoff = Backoff()
        while True:
            try:
                await self._fetch_and_start_jobs()
                return
            except Exception as error:
                if worker_gone(error) and self.worker_id is not None:
                    await self._register_again(self.worker_id)
                    continue
                if not is_database_outage(error):
                    raise
                self.answer_maybe_lost()
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

    async def _fetch_and_start_jobs(self) -> None:
        """Procrastinate's fetch loop (while a slot is free, fetch and start a job; return
        when none is ready or the worker stops), except that one statement fetches a job
        for every slot free at that moment (`fetch_jobs`: procrastinate_fetch_job_v2's
        rules, LIMIT n): a worker draining a backlog pays one round trip and one commit
        per batch of jobs instead of per job, and jobs fetched together tend to end
        together, whose outcomes are then saved together (queue/finishing.py)."""
        slots = self._job_semaphore
        while not self._stop_event.is_set():
            acquiring = asyncio.create_task(slots.acquire())
            taken, jobs = 0, []
            try:
                self.liveness.fetch.wait()  # for a job to end: jobs have their timeout
                await procrastinate_utils.wait_any(acquiring, self._stop_event.wait())
                self.liveness.fetch.end()
                if acquiring.done() and not acquiring.cancelled():
                    taken = 1
                if self._stop_event.is_set():
                    break
                while not slots.locked():  # the other free slots: taken without waiting
                    await slots.acquire()
                    taken += 1
                # Cleared before the fetch, not after it as Procrastinate does: a job
                # announced while the fetch runs (after its snapshot) fetches again.
                self._new_job_event.clear()
                jobs = await self._fetch_jobs(taken)
            finally:
                for _ in range(taken - len(jobs)):
                    slots.release()
            if not jobs:
                break
            for job in jobs:  # fetched: they run, even if the worker is stopping now
                self._start_job(job, holds_slot=True)

    async def _fetch_jobs(self, limit: int) -> list[Job]:
        """Up to `limit` ready jobs, now `doing` for this worker, in fetch order.

        The fetch is pipelined and its rows are read before the COMMIT is sent, as
        Procrastinate's fetch does: a connection cut while the client holds the rows
        rolls the claim back; only a cut during the COMMIT itself can leave jobs
        claimed unseen (`answer_maybe_lost`), as with Procrastinate's."""
        assert self.worker_id is not None
        params = {
            "queues": None if self.queues is None else list(self.queues),
            "worker_id": self.worker_id,
            "limit": limit,
        }
        self.liveness.fetch.begin()
        try:
            async with self._procqueue.pool.connection() as conn:  # commits on the way out
                async with conn.pipeline():
                    await conn.execute(queue_query("walk_jobs_in_fetch_order"))
                    cursor = conn.cursor(row_factory=dict_row)
                    await cursor.execute(query("fetch_jobs"), params)
                rows = await cursor.fetchall()
        finally:  # an error the loop waits out is a turn too
            self.liveness.fetch.end()
        jobs = [Job.from_row(row) for row in rows]
        return sorted(jobs, key=lambda job: (-job.priority, job.id or 0))

    def _start_job(self, job: Job, *, holds_slot: bool) -> None:
        """Run `job` (already `doing` for this worker) as Procrastinate's fetch loop
        does: a task of its own, with the context Procrastinate builds, seen by
        heartbeats, aborts and shutdown; `holds_slot`: it took a concurrency slot,
        given back when it ends."""
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

        def ended(done: asyncio.Task[Any]) -> None:
            self._running_jobs.pop(done, None)
            if holds_slot:
                self._job_semaphore.release()
            if job.lock is not None:
                # A job of the same lock may be waiting for this one; no NOTIFY says it
                # is free now (Procrastinate's worker leaves it to the next poll).
                self._new_job_event.set()

        task.add_done_callback(ended)

    async def _process_job(self, context: JobContext) -> None:
        refusal = self._refusals.refusal(context.job, self.app.tasks.get(context.job.task_name))
        if isinstance(refusal, UnknownTask):
            await self._leave_for_another_worker(context, refusal)
            return
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
            self._start_job(job, holds_slot=False)

    async def _leave_for_another_worker(self, context: JobContext, refusal: UnknownTask) -> None:
        """A job of a task this worker does not have (a newer version's, during a rolling
        upgrade, or a typo) is not this worker's to fail: it goes back to waiting, no
        attempt spent, due again in UNKNOWN_TASK_WAIT, for a worker that has the task;
        health says how long such jobs have waited (queue/health.py)."""
        postponed = Postponed(
            datetime.now(UTC) + timedelta(seconds=UNKNOWN_TASK_WAIT), str(refusal)
        )
        observe(context.job, "postponed", postponed.reason, 0.0)
        result = JobResult(start_timestamp=time.time(), result=postponed)
        await self._persist_job_status(context.job, Status.TODO, None, context, result)

    async def _fail_unrun(self, context: JobContext, error: Exception) -> None:
        """Fail `context.job` for good with `error` recorded, as the middleware would."""
        secrets = self._procqueue.services.settings.secret_values()
        await end_in_failure(self._procqueue.pool, context.job, error, final=True, secrets=secrets)
        await self._persist_job_status(context.job, Status.FAILED, None, context, None)

    def _log_job_outcome(
        self,
        status: Status,
        context: JobContext,
        job_result: JobResult | None,
        job_retry: procrastinate_exceptions.JobRetry | None,
        exc_info: bool | BaseException = False,
    ) -> None:
        # A postponed job did not succeed: its line is the middleware's ("postponed").
        if job_result is not None and isinstance(job_result.result, Postponed):
            return
        super()._log_job_outcome(status, context, job_result, job_retry, exc_info)

    async def _persist_job_status(
        self,
        job: Job,
        status: Status,
        retry_decision: RetryDecision | None,
        context: JobContext,
        job_result: JobResult | None,
    ) -> None:
        """Save an attempt's outcome (engine/saving.py): a postponement puts the same
        row back to waiting; the rest as Procrastinate would, surviving outages."""
        result = job_result.result if job_result is not None else None
        postponed = result if isinstance(result, Postponed) else None
        await self._outcomes.save(job, status, retry_decision, postponed)
        if postponed is None:
            self.jobs_done += 1
        assert job.id is not None
        self._job_ids_to_abort.pop(job.id, None)
        due = postponed.run_at if postponed is not None else None
        if retry_decision is not None:
            due = retry_decision.retry_at
        if due is not None and due.tzinfo is not None:
            # A retry or postponement sends no NOTIFY: fetch when it is due, not at the
            # next poll.
            due_in = (due - datetime.now(UTC)).total_seconds()
            if due_in < self.fetch_job_polling_interval:
                asyncio.get_running_loop().call_later(max(due_in, 0.0), self._new_job_event.set)

    # Stopping --------------------------------------------------------------

    async def _shutdown(self, side_tasks: list[asyncio.Task[Any]]) -> None:
        """Procrastinate's shutdown, but bounded and heartbeating: it ends within
        `shutdown_graceful_timeout` (PROCQUEUE_SHUTDOWN_TIMEOUT) whatever the database
        does. Running jobs may finish until ABORT_RESERVE before the deadline (the
        heartbeat goes on, so no other worker rescues them meanwhile); the rest are
        aborted (Procrastinate retries a job aborted by a shutdown); an outcome that
        cannot be saved by the deadline (the database is away) is left, `doing`, to the
        stalled-job rescue, which runs the job again; the worker's row, if it cannot
        be deleted, is pruned by the other workers."""
        self.liveness.stop()
        self._stop_deadline = self._loop_time() + (self.shutdown_graceful_timeout or math.inf)
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
            await self._wait_for_running_jobs(until=self._stop_deadline - ABORT_RESERVE)
        if self._running_jobs:
            logger.info(
                "%d job(s) still running %g s before the stop timeout: aborting them",
                len(self._running_jobs),
                ABORT_RESERVE,
            )
            for task, context in list(self._running_jobs.items()):
                self._abort_job(task, context, AbortReason.SHUTDOWN)
            await self._wait_for_running_jobs(until=self._stop_deadline)
        await procrastinate_utils.cancel_and_capture_errors(heartbeat)
        if self._running_jobs:
            left = [context.job.id for context in self._running_jobs.values()]
            logger.warning(
                "stopping without saving the outcome of %d job(s) (%s) by the stop timeout "
                "(PROCQUEUE_SHUTDOWN_TIMEOUT, %g s): the stalled-job rescue runs them again",
                len(left),
                ", ".join(str(job_id) for job_id in left),
                self.shutdown_graceful_timeout,
            )
            for task in list(self._running_jobs):
                task.cancel()
        await self._unregister()
        logger.info("Stopped worker on %s", procrastinate_utils.queues_display(self.queues))

    def stop_time_left(self) -> float | None:
        """Seconds until the stop's deadline once the worker is stopping, else None."""
        if self._stop_deadline is None or math.isinf(self._stop_deadline):
            return None  # not stopping, or no stop timeout set
        return self._stop_deadline - self._loop_time()

    @staticmethod
    def _loop_time() -> float:
        return asyncio.get_running_loop().time()

    async def _wait_for_running_jobs(self, until: float) -> None:
        timeout = until - self._loop_time()
        if self._running_jobs and timeout > 0:
            await asyncio.wait(
                list(self._running_jobs), timeout=None if math.isinf(timeout) else timeout
            )

    async def _unregister(self) -> None:
        if self.worker_id is None:
            return
        try:
            async with asyncio.timeout(max(self.stop_time_left() or 0.0, UNREGISTER_AT_LEAST)):
                await self.app.job_manager.unregister_worker(self.worker_id)
        except Exception as error:
            if not (isinstance(error, TimeoutError) or is_database_outage(error)):
                raise
            logger.warning(
                "worker %s could not unregister (%s): other workers prune it after "
                "PROCQUEUE_STALLED_TIMEOUT s",
                self.worker_id,
                first_line(error),
            )
        self.worker_id = None


def _payload(text: str) -> Any:
    """A notification's JSON payload, or None when it is not JSON (a stranger's)."""
    try:
        return json.loads(text)
    except ValueError:
        return None
