"""The overview's health snapshot, kept fresh in the background.

The snapshot's cost grows with the jobs finished per hour (procqueue.queue.health),
so the overview does not read it per request: `OverviewSnapshots.run` reads it every
`refresh` seconds (a tenth ahead of time), but only while the overview was requested
in the last `idle_after` seconds (an idle dashboard puts no load on Postgres). The first request
after idle, or any request finding the reading older than `refresh`, reads at once
(sharing one read with the refresher), so the page is never older than `refresh` and
never empty. A background read that fails keeps the last snapshot and says so
(`Reading.failure`); the refresher logs once per failure streak and never dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from procqueue.queue.health import Snapshot, Verdict, evaluate
from procqueue.queue.server import UNANSWERED, HealthSource

IDLE_AFTER_SECONDS = 60.0
#: The refresher reads this share of `refresh` before a reading is due (its read takes
#: ~0.1 s at 1,000,000 jobs; pages finding a reading due wait for a read).
AHEAD = 0.1

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reading:
    """The newest snapshot (None: the database never answered) and when it was read."""

    snapshot: Snapshot | None
    verdict: Verdict | None
    read_at: datetime
    #: When the newest read failed, and why (one line): None after a good read.
    failed_at: datetime | None = None
    failure: str | None = None


class OverviewSnapshots:
    def __init__(
        self,
        health: HealthSource,
        refresh: float,
        idle_after: float = IDLE_AFTER_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.health = health
        self.refresh = refresh
        self.idle_after = idle_after
        self.clock = clock
        self.latest: Reading | None = None
        self.reads = 0  # snapshot reads started, good or failed
        self._attempted: float | None = None  # clock() at the newest read's start
        self._wanted_at: float | None = None  # clock() at the newest overview request
        self._wanted = asyncio.Event()
        self._done = asyncio.Event()  # set, and replaced, after every read
        self._reading: asyncio.Task[Reading] | None = None
        self._logged = False  # the current failure streak was logged
        self._outdated = False  # an action changed what the newest reading shows
        self.task: asyncio.Task[None] | None = None

    # For pages -------------------------------------------------------------

    async def current(self) -> Reading:
        """The newest reading, read now if there is none or it is older than `refresh`.
        Raises what a first read raises but UNANSWERED (e.g. a database never migrated)."""
        self._wanted_at = self.clock()
        self._wanted.set()
        if self.latest is None or self._outdated or self._due_in() <= 0:
            return await self._shared_read()
        return self.latest

    def outdated(self) -> None:
        """An operator's action (a pause, a retry) changed what the newest reading
        shows: the next page reads anew rather than show the state before it."""
        self._outdated = True

    # The refresher ---------------------------------------------------------

    def watched(self) -> bool:
        """The overview was requested within the last `idle_after` seconds."""
        return self._wanted_at is not None and self.clock() - self._wanted_at < self.idle_after

    async def step(self) -> bool:
        """One turn of the refresher: read, if the overview is watched. Never raises
        (but CancelledError); answers whether it read."""
        if not self.watched():
            return False
        if self._reading is not None:  # a page's read: the page logs how it ended
            await asyncio.wait([self._reading])
            return True
        try:
            await self._shared_read()
        except Exception as error:  # the refresher lives on
            self.log_failure(f"{type(error).__name__}: {error}".splitlines()[0])
        else:
            self.log_failure()
        return True

    def log_failure(self, line: str | None = None) -> None:
        """Log the newest read's failure (or `line`), once per failure streak. Pages call
        it after their own reads: when those fail too, their one line says it all."""
        line = line or (self.latest.failure if self.latest else None)
        if line and not self._logged:
            logger.warning("overview health snapshot read failed (kept the last one): %s", line)
            self._logged = True

    async def run(self) -> None:
        """Refresh every `refresh` seconds while watched; wait for a request when idle."""
        while True:
            if not self.watched():
                self._wanted.clear()
                await self._wanted.wait()
                continue
            # A little ahead of time, so a watching page never finds the reading stale.
            due = self._due_in() - self.refresh * AHEAD
            if due > 0:
                await asyncio.sleep(due)
                continue
            await self.step()

    async def next_refresh(self) -> Reading | None:
        """Wait for the next read to end; the reading then (None: never read)."""
        await self._done.wait()
        return self.latest

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """The refresher as a background task, cancelled (and awaited) on exit."""
        self.task = asyncio.create_task(self.run(), name="overview-snapshots")
        try:
            yield
        finally:
            tasks = [task for task in (self.task, self._reading) if task is not None]
            for task in tasks:  # the refresher, and a page's read under way
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    # Reading ---------------------------------------------------------------

    def _due_in(self) -> float:
        if self._attempted is None:  # the first read is a page's
            return self.refresh
        return self._attempted + self.refresh - self.clock()

    async def _shared_read(self) -> Reading:
        """One read at a time: a request and the refresher both wait for the same."""
        if self._reading is None:
            self._reading = asyncio.create_task(self._read())
            self._reading.add_done_callback(self._read_ended)
        return await asyncio.shield(self._reading)

    def _read_ended(self, task: asyncio.Task[Reading]) -> None:
        self._reading = None
        done, self._done = self._done, asyncio.Event()
        done.set()
        if not task.cancelled():
            task.exception()  # retrieved: whoever awaited it was told

    async def _read(self) -> Reading:
        self._attempted = self.clock()
        self._outdated = False
        self.reads += 1
        read_at = datetime.now(UTC)
        try:
            snapshot = await self.health.snapshot()
        except Exception as error:
            line = f"{type(error).__name__}: {error}".splitlines()[0]
            if self.latest is None and not isinstance(error, UNANSWERED):
                raise  # a first read's own failure (not migrated, say) answers the page
            self.latest = (
                Reading(None, None, read_at, failed_at=read_at, failure=line)
                if self.latest is None
                else replace(self.latest, failed_at=read_at, failure=line)
            )
            return self.latest
        if self._logged:
            logger.info("overview health snapshot read again")
        self._logged = False
        self.latest = Reading(snapshot, evaluate(snapshot, self.health.config), read_at)
        return self.latest
