"""Tiny tasks for the failure tests, with failures under the test's control.
They run through the real app (build_app), middlewares and retry policy."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from procrastinate import JobContext

from procqueue.app import build_app
from procqueue.engine.app import ProcqueueApp
from procqueue.errors import PermanentError, TransientError
from procqueue.features import Settings

SWITCHES_SQL = """
CREATE TABLE IF NOT EXISTS public.test_switches (name text PRIMARY KEY, broken boolean NOT NULL);
"""


def register(app: ProcqueueApp) -> None:
    retry = app.retry

    @app.task(name="test:flaky", queue="tests", pass_context=True, retry=retry)
    async def flaky(context: JobContext, failures: int, message: str = "upstream busy") -> str:
        """Fails transiently `failures` times, then succeeds."""
        if context.job.attempts < failures:
            raise TransientError(f"{message} (attempt {context.job.attempts + 1})")
        return "ok"

    @app.task(name="test:broken", queue="tests", retry=retry)
    async def broken(reason: str) -> None:
        """Fails for good at once."""
        raise PermanentError(reason)

    @app.task(name="test:switch", queue="tests", retry=retry)
    async def switch(name: str) -> str:
        """Fails for good while its switch row says broken."""
        async with app.pool.connection() as conn:
            row = await (
                await conn.execute(
                    "SELECT broken FROM public.test_switches WHERE name = %s", [name]
                )
            ).fetchone()
        if row and row[0]:
            raise PermanentError(f"the partner API rejects {name!r} (switch is broken)")
        return "ok"

    @app.task(name="test:block_first", queue="tests", pass_context=True, retry=retry)
    async def block_first(context: JobContext) -> str:
        """Hangs on its first attempt (its worker gets killed), succeeds after."""
        if context.job.attempts == 0:
            await asyncio.Event().wait()
        return "rescued"


@contextlib.asynccontextmanager
async def opened_app(settings: Settings) -> AsyncIterator[ProcqueueApp]:
    """The real app with these tasks registered, open for the block."""
    application = build_app(settings)
    register(application)
    async with application.open_async():
        yield application
