"""Telling a database outage from a fault, and waiting one out: the worker's fetch
loop, its side tasks and the saving of outcomes wait with capped, jittered backoff
while the database is away (docs/procrastinate.md says why Procrastinate's own
worker does not)."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
from psycopg_pool import PoolClosed

logger = logging.getLogger(__name__)

#: Waits between attempts to reach a database that went away: doubling from the
#: first to the cap, each +-25 % so that many workers do not knock at once.
RECONNECT_FIRST_WAIT = 0.2
RECONNECT_MAX_WAIT = 5.0


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


def job_not_ours(error: BaseException) -> bool:
    """Procrastinate refused to save an outcome: the job is no longer `doing` (the
    stalled-job rescue gave it to another worker, which may have finished it)."""
    cause = error.__cause__ or error
    return isinstance(cause, psycopg.errors.RaiseException) and "Job was not found" in str(cause)


def worker_gone(error: BaseException) -> bool:
    """Fetching a job failed because this worker's row is gone (taken for dead)."""
    cause = error.__cause__ or error
    return isinstance(cause, psycopg.errors.ForeignKeyViolation) and "worker" in str(cause)


class Backoff:
    """Capped exponential waits with jitter; `tries` counts the waits handed out."""

    def __init__(self) -> None:
        self.tries = 0

    def next_wait(self) -> float:
        wait = min(RECONNECT_MAX_WAIT, RECONNECT_FIRST_WAIT * 2.0 ** min(self.tries, 16))
        self.tries += 1
        return wait * random.uniform(0.75, 1.25)


async def run_through_outages(name: str, run: Callable[[], Awaitable[Any]]) -> None:
    """Run `run` again after a wait each time it fails because the database is away;
    any other failure is raised."""
    backoff = Backoff()
    while True:
        started = time.monotonic()
        try:
            await run()
            return
        except Exception as error:
            if not is_database_outage(error):
                raise
            if time.monotonic() - started > 2 * RECONNECT_MAX_WAIT:
                backoff = Backoff()  # it had worked again since the last failure
            wait = backoff.next_wait()
            logger.log(
                logging.WARNING if backoff.tries == 1 else logging.INFO,
                "worker side task %s lost the database (%s); trying again in %.1f s",
                name,
                first_line(error),
                wait,
            )
            await asyncio.sleep(wait)


def first_line(error: BaseException) -> str:
    """The first line of an error and of its cause (Procrastinate's connector wraps
    every database error in an empty-sounding ConnectorException)."""
    for candidate in (error.__cause__, error):
        text = str(candidate or "").strip()
        if text and text != "Database error.":
            return text.splitlines()[0]
    return type(error).__name__
