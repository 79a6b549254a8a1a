"""The Procrastinate App procqueue runs: it carries the services its jobs use, and
its worker starts after the preflight checks and stops non-zero when a failure (not
a signal) stopped it. The worker itself is procqueue/engine/worker.py."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import procrastinate
from procrastinate.tasks import Task
from psycopg_pool import AsyncConnectionPool
from typing_extensions import Unpack

from procqueue.engine import preflight
from procqueue.engine.outages import first_line
from procqueue.engine.services import Services
from procqueue.engine.worker import Worker, WorkerStopped
from procqueue.queue import sentry
from procqueue.queue.jobs import JobSpec
from procqueue.queue.retry import BackoffRetry


class ProcqueueApp(procrastinate.App):
    """A Procrastinate App that also carries the services its jobs use and the retry
    policy of every job family that has none of its own."""

    services: Services
    retry: BackoffRetry = BackoffRetry()

    def retry_of(self, spec: JobSpec) -> BackoffRetry:
        """The retry policy of `spec`'s jobs: its own, or the app's."""
        return spec.retry or self.retry

    def task_of(
        self, spec: JobSpec, **options: Any
    ) -> Callable[[Callable[..., Any]], Task[Any, Any, Any]]:
        """Procrastinate's `task` decorator for `spec`: its name, its queue, its retry
        policy (`retry_of`), and `options` (pass_context, priority, queueing_lock...)."""
        decorator: Callable[[Callable[..., Any]], Task[Any, Any, Any]] = self.task(
            name=spec.task_name, queue=spec.queue, retry=self.retry_of(spec), **options
        )
        return decorator

    @property
    def pool(self) -> AsyncConnectionPool[Any]:
        """The connector's psycopg pool. Its connections carry no session state (the
        same through a transaction pooler): SQL names the queue's objects with their
        schema, `procrastinate.` or `procqueue.` (procqueue/engine/qualified.py)."""
        pool: AsyncConnectionPool[Any] = self.connector.pool  # type: ignore[attr-defined]
        return pool

    async def preflight(self) -> None:
        """Refuse to work (PreflightError, one line) on a database or role where the
        worker cannot work correctly (procqueue/engine/preflight.py)."""
        settings = self.services.settings
        async with self.pool.connection() as conn:
            await preflight.check_worker(
                conn,
                self.services.entities.entities,
                (settings.notifications_table, settings.push_tokens_table),
            )

    def _worker(self, **kwargs: Unpack[procrastinate.app.WorkerOptions]) -> Worker:
        options: procrastinate.app.WorkerOptions = {**self.worker_defaults, **kwargs}
        return Worker(app=self, **options)

    async def run_worker_async(self, **kwargs: Unpack[procrastinate.app.WorkerOptions]) -> None:
        """Procrastinate's worker, after the preflight checks; raises WorkerStopped when
        a failure (not a signal) stopped it. `procqueue worker` and `procrastinate
        --app=procqueue.app.app worker` both come here, so both exit non-zero.

        A worker that owns the process's signals (Procrastinate's default, and both
        commands') is the process: when it stops, however it stops, it closes the
        clients its jobs opened (`Services.aclose`), or aiohttp reports them unclosed
        at exit. A worker run inside a program (install_signal_handlers=False: the
        tests, the demo) leaves them to that program."""
        try:
            await self._run_worker(**kwargs)
        finally:
            if {**self.worker_defaults, **kwargs}.get("install_signal_handlers", True):
                await self.services.aclose()

    async def _run_worker(self, **kwargs: Unpack[procrastinate.app.WorkerOptions]) -> None:
        await self.preflight()
        sentry.init_sentry(self.services.settings)
        self.perform_import_paths()  # type: ignore[no-untyped-call]
        worker = self._worker(**kwargs)
        await worker.run()  # type: ignore[no-untyped-call]
        if worker.side_task_failure is not None:
            name, error = worker.side_task_failure
            raise WorkerStopped(f"the worker stopped: its {name} task failed: {first_line(error)}")
