"""Pruning deletes old succeeded jobs (with events and error rows) and old
failed ones, in batches, and keeps recent and failed ones."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import psycopg
import pytest

from procqueue.app import build_app
from procqueue.engine.app import ProcqueueApp
from procqueue.queue.maintenance import prune
from tests.conftest import make_settings
from tests.support.history import error_row, finished_job

DAY = 86400.0


@pytest.fixture(scope="module")
async def app(database: str, es_url: str) -> AsyncIterator[ProcqueueApp]:
    settings = make_settings(
        database,
        es_url,
        prune_succeeded_after=timedelta(days=7),
        prune_failed_after=timedelta(days=30),
        prune_batch_size=2,  # several batches for a handful of jobs
    )
    application = build_app(settings)
    async with application.open_async():
        yield application


async def remaining(conn: psycopg.AsyncConnection, table: str, ids: list[int]) -> set[int]:
    column = "id" if table == "procrastinate.procrastinate_jobs" else "job_id"
    rows = await (
        await conn.execute(
            f"SELECT DISTINCT {column} FROM {table} WHERE {column} = ANY(%s)",
            [ids],
        )
    ).fetchall()
    return {row[0] for row in rows}


async def test_prune_removes_old_succeeded_keeps_recent_and_failed(
    app: ProcqueueApp, database: str
) -> None:
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:

        async def job(status: str, days_ago: float) -> int:
            job_id = await finished_job(
                conn, task="t", queue="q", status=status, ended_ago=days_ago * DAY, seconds=1
            )
            await error_row(conn, job_id, days_ago * DAY)
            return job_id

        old_succeeded = [await job("succeeded", 8) for _ in range(5)]
        recent_succeeded = [await job("succeeded", 6), await job("succeeded", 0.01)]
        failed_kept = [await job("failed", 8), await job("failed", 29)]
        old_failed = [await job("failed", 31), await job("cancelled", 45)]
        # failed 40 days ago, retried by hand yesterday and failed again: recent
        retried_by_hand = await job("failed", 40)
        await conn.execute(
            "INSERT INTO procrastinate.procrastinate_events (job_id, type, at) VALUES"
            " (%s, 'retried', now() - interval '1 day'), (%s, 'failed', now() - interval '1 day')",
            [retried_by_hand, retried_by_hand],
        )
        failed_kept.append(retried_by_hand)
        waiting = await (await conn.execute("SELECT procqueue.add_job('t', '{}', 'q')")).fetchone()
        assert waiting is not None
        # an error row whose job Procrastinate deleted long ago
        await error_row(conn, 10**9, 40 * DAY)

        report = await prune(app)
        assert (report.succeeded, report.unsuccessful, report.orphan_errors) == (5, 2, 1)
        assert report.complete

        everything = old_succeeded + recent_succeeded + failed_kept + old_failed + [waiting[0]]
        kept = set(recent_succeeded + failed_kept + [waiting[0]])
        assert await remaining(conn, "procrastinate.procrastinate_jobs", everything) == kept
        assert await remaining(conn, "procrastinate.procrastinate_events", everything) == kept
        assert await remaining(conn, "procqueue.job_errors", [*everything, 10**9]) == kept - {
            waiting[0]
        }

        # nothing left to do: a second run deletes nothing
        again = await prune(app)
        assert (again.succeeded, again.unsuccessful, again.orphan_errors) == (0, 0, 0)
