"""What the Charts page reads (procqueue/dashboard/charts.sql, migration 0023):
attempts, error rate and durations per bucket for a queue and/or task, and the
queues' sampled depth and lag. Durations come as 0017's histograms; their
percentiles are computed here as procqueue.task_stats computes them."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from procqueue.dashboard.store import Bucket, Connection, rows
from procqueue.queries import NamedQueries

QUERIES = NamedQueries(__package__, "charts.sql")


@dataclass(frozen=True)
class Range:
    """A chart's time range: its span and the width of one bucket."""

    name: str
    label: str
    span: timedelta
    step: timedelta

    @property
    def with_date(self) -> bool:
        return self.span > timedelta(hours=1)

    @property
    def step_label(self) -> str:
        minutes = int(self.step.total_seconds() // 60)
        return "minute" if minutes == 1 else f"{minutes} min"


#: The coarser rollup (migration 0023): a range whose step is whole half hours reads it.
HALF_HOUR = timedelta(minutes=30)
RANGES = {
    "hour": Range("hour", "last hour", timedelta(hours=1), timedelta(minutes=1)),
    "day": Range("day", "last day", timedelta(days=1), timedelta(minutes=30)),
}


def bucket_seconds(bucket: int) -> float:
    """A duration bucket's value: its geometric middle (0.5 ms for bucket 0)."""
    return 0.0005 if bucket == 0 else 0.001 * 1.04 ** (bucket - 0.5)


def histogram_percentile(
    buckets: Sequence[int], counts: Sequence[int], fraction: float, most: float | None
) -> float | None:
    """The `fraction` percentile of a duration histogram as procqueue.task_stats
    reads one (migration 0017): percentile_cont's interpolation between the two
    nearest ranks, each rank read as its bucket's value, capped at the longest
    duration `most`; within 2 % of the exact value (0.5 ms under 1 ms)."""
    total = sum(counts)
    if not total:
        return None
    position = fraction * (total - 1)

    def at_rank(rank: int) -> float:
        seen = 0
        for bucket, count in zip(buckets, counts, strict=True):
            seen += count
            if seen > rank:
                return bucket_seconds(bucket)
        raise AssertionError("rank beyond the histogram")  # pragma: no cover

    low, high = at_rank(math.floor(position)), at_rank(math.ceil(position))
    value = low + (position - math.floor(position)) * (high - low)
    return value if most is None else min(value, most)


@dataclass(frozen=True)
class AttemptBucket(Bucket):
    """Attempts that ended in one bucket (a postponed attempt is none of them)."""

    aborted: int = 0
    max_seconds: float | None = None
    #: Attempt durations: (duration bucket, attempts) pairs, ascending.
    histogram: tuple[tuple[int, int], ...] = ()

    @property
    def p50_seconds(self) -> float | None:
        return percentile_of([self], 0.5)

    @property
    def p95_seconds(self) -> float | None:
        return percentile_of([self], 0.95)


def percentile_of(buckets: Sequence[AttemptBucket], fraction: float) -> float | None:
    """The `fraction` percentile of the attempt durations of all `buckets` together."""
    merged: dict[int, int] = {}
    for bucket in buckets:
        for duration_bucket, count in bucket.histogram:
            merged[duration_bucket] = merged.get(duration_bucket, 0) + count
    keys = sorted(merged)
    most = max((b.max_seconds for b in buckets if b.max_seconds is not None), default=None)
    return histogram_percentile(keys, [merged[key] for key in keys], fraction, most)


@dataclass(frozen=True)
class DepthBucket:
    """The highest depth and lag sampled in one bucket (None: no sample in it)."""

    start: datetime
    waiting: int | None
    running: int | None
    lag_seconds: float | None
    samples: int


@dataclass(frozen=True)
class Selection:
    """What the Charts page shows: a queue and/or a task ('' = all), over a range."""

    queue: str
    task: str
    range: Range

    def params(self) -> dict[str, Any]:
        return {
            "queue": self.queue, "task": self.task,
            "span": self.range.span, "step": self.range.step,
            "half_hours": not self.range.step % HALF_HOUR, "level": self.level,
        }  # fmt: skip

    @property
    def level(self) -> int:
        """The rollup rows to read (migration 0023): a task's (0), a queue's (1), all (2)."""
        return 0 if self.task else 1 if self.queue else 2


async def attempts(conn: Connection, selection: Selection) -> list[AttemptBucket]:
    found = await rows(conn, QUERIES.query("chart_attempts"), selection.params())
    return [
        AttemptBucket(
            row["bucket"],
            row["succeeded"],
            row["retried"],
            row["failed"],
            aborted=row["aborted"],
            max_seconds=row["max_seconds"],
            histogram=tuple(zip(row["buckets"], row["bucket_counts"], strict=True)),
        )
        for row in found
    ]


async def depth(conn: Connection, selection: Selection) -> list[DepthBucket]:
    found = await rows(conn, QUERIES.query("chart_depth"), selection.params())
    return [DepthBucket(**{"start": row.pop("bucket"), **row}) for row in found]


async def _names(conn: Connection, name: str) -> list[str]:
    return [row["name"] for row in await rows(conn, QUERIES.query(name), {})]


async def names(conn: Connection) -> tuple[list[str], list[str]]:
    """The queue names sampled and the task names rolled up (the last two days)."""
    return await _names(conn, "chart_sampled_queues"), await _names(conn, "chart_task_names")
