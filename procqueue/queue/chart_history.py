"""The history behind the dashboard's Charts page (migration 0023): once a minute
each queue's depth and lag, and per minute, queue and task the attempts that
ended and their durations. Both kept two days; written by the stalled-job
rescue's periodic run (procqueue/queue/maintenance.py) and before each prune."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from psycopg_pool import AsyncConnectionPool

from procqueue.queue.queries import query

#: Minutes rolled up per short transaction (a day's backlog is two of them).
MINUTES_PER_CALL = 720


@dataclass(frozen=True)
class ChartHistoryReport:
    sampled_queues: int
    rolled_up_minutes: int


async def record_chart_history(
    pool: AsyncConnectionPool[Any], deadline: float, minutes_per_call: int = MINUTES_PER_CALL
) -> ChartHistoryReport:
    """Sample the queues (the first sample of a minute counts) and roll up every
    complete minute not rolled up yet, `minutes_per_call` per transaction, until
    none is left or `time.monotonic()` passes `deadline`."""
    async with pool.connection() as conn:
        row = await (await conn.execute(query("sample_queues"))).fetchone()
    sampled: int = row[0] if row else 0
    total = 0
    while True:
        async with pool.connection() as conn:
            cursor = await conn.execute(
                query("roll_up_chart_minutes"), {"max_minutes": minutes_per_call}
            )
            row = await cursor.fetchone()
        done: int = row[0] if row else 0
        total += done
        if done < minutes_per_call or time.monotonic() >= deadline:
            return ChartHistoryReport(sampled, total)
