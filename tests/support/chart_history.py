"""A known queue history for the Charts tests: finished jobs written with their
events at chosen times (tests/support/history.py), so the numbers each chart
bucket must show are known in advance, then rolled up by the real maintenance
code (procqueue/queue/chart_history.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg

from tests.support.history import finished_job

DAY_STEP = timedelta(minutes=30)


@dataclass(frozen=True)
class Finished:
    queue: str
    task: str
    status: str  # succeeded | failed
    hours_ago: float  # the day bucket it ends in: the one holding now - hours_ago, 10 min in
    seconds: float
    retried_before: bool = False  # one earlier attempt, 1 s long, failed and retried

    @property
    def durations(self) -> list[float]:
        return [self.seconds, 1.0] if self.retried_before else [self.seconds]


HISTORY = (
    Finished("alpha", "alpha:sync", "succeeded", 5, 0.010),
    Finished("alpha", "alpha:sync", "succeeded", 5, 0.020),
    Finished("alpha", "alpha:sync", "succeeded", 5, 0.040),
    Finished("alpha", "alpha:sync", "failed", 5, 2.0, retried_before=True),
    Finished("alpha", "alpha:mail", "succeeded", 5, 0.5),
    Finished("beta", "beta:push", "succeeded", 2, 0.1),
    Finished("beta", "beta:push", "succeeded", 2, 0.1),
    Finished("beta", "beta:push", "failed", 2, 0.3),
    Finished("alpha", "alpha:sync", "succeeded", 30, 0.5),  # older than a day
)


async def bucket_start(conn: psycopg.AsyncConnection[Any], hours_ago: float) -> datetime:
    """The start of the day chart's 30-minute bucket holding now - hours_ago."""
    row = await (
        await conn.execute(
            "SELECT date_bin(%s, now() - make_interval(secs => %s), timestamptz '2000-01-01')",
            [DAY_STEP, hours_ago * 3600],
        )
    ).fetchone()
    assert row is not None
    start: datetime = row[0]
    return start


async def write_history(conn: psycopg.AsyncConnection[Any]) -> dict[float, datetime]:
    """Insert HISTORY (each job ends 10 minutes into its bucket); the bucket starts.
    One transaction: one now(), so the durations are exact."""
    async with conn.transaction():
        return await _write_history(conn)


async def _write_history(conn: psycopg.AsyncConnection[Any]) -> dict[float, datetime]:
    starts = {h: await bucket_start(conn, h) for h in {f.hours_ago for f in HISTORY}}
    row = await (await conn.execute("SELECT now()")).fetchone()
    assert row is not None
    for finished in HISTORY:
        ended = starts[finished.hours_ago] + timedelta(minutes=10)
        await finished_job(
            conn,
            task=finished.task,
            queue=finished.queue,
            status=finished.status,
            ended_ago=(row[0] - ended).total_seconds(),
            seconds=finished.seconds,
            retried_before=finished.retried_before,
        )
    return starts


def selected(queue: str = "", task: str = "", within_hours: float = 24) -> list[Finished]:
    return [
        f
        for f in HISTORY
        if (not queue or f.queue == queue)
        and (not task or f.task == task)
        and f.hours_ago < within_hours
    ]


def exact_percentile(values: list[float], fraction: float) -> float:
    """PostgreSQL's percentile_cont: interpolation between the two nearest ranks."""
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    low, high = ordered[math.floor(position)], ordered[math.ceil(position)]
    return low + (position - math.floor(position)) * (high - low)
