"""Succeeded work leaves the hot tables (issue 23, migration 0026): a drain or
maintenance job that succeeds on its first attempt becomes one row of
procqueue.finished_attempts and leaves procrastinate_jobs and its events at once;
every reader of finished attempts counts it from there."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from procqueue.dashboard.security import access_for
from procqueue.engine.app import ProcqueueApp
from procqueue.entities import LISTING
from procqueue.queue.maintenance import MAINTENANCE_QUEUE, prune
from procqueue.search.jobs import drain_job
from tests.conftest import make_settings
from tests.support.dashboard import dashboard_client
from tests.support.worker import app_with, clear_queue, drain, insert_listings, waiting_changes

DRAIN = drain_job(LISTING).task_name


@pytest.fixture(scope="module")
async def app(database: str, es_url: str) -> AsyncIterator[ProcqueueApp]:
    settings = make_settings(database, es_url, prune_succeeded_after=timedelta(days=7))
    async with app_with(settings) as application:
        yield application


async def one(db: psycopg.AsyncConnection[Any], statement: str, *params: Any) -> Any:
    row = await (await db.execute(statement, params)).fetchone()
    assert row is not None
    return row[0]


async def run_once(
    db: psycopg.AsyncConnection[Any], task: str, *, first: str = "", queue: str = "sync"
) -> int:
    """A job of `task` through Procrastinate's and procqueue's own functions: deferred,
    started, (`first`: once retried or postponed,) succeeded; its id."""
    job_id: int = await one(db, "SELECT procqueue.add_job(%s, '{}', %s)", task, queue)
    start = "UPDATE procrastinate.procrastinate_jobs SET status = 'doing' WHERE id = %s"
    await db.execute(start, [job_id])
    if first == "retried":
        await db.execute(
            "SELECT procrastinate.procrastinate_retry_job_v1(%s, now(), 0, %s, NULL)",
            [job_id, queue],
        )
        await db.execute(start, [job_id])
    elif first == "postponed":
        await db.execute("SELECT procqueue.postpone_job(%s, now(), 'sink down')", [job_id])
        await db.execute(start, [job_id])
    await db.execute(
        "SELECT procrastinate.procrastinate_finish_job_v1(%s, 'succeeded', false)", [job_id]
    )
    return job_id


async def where_it_is(db: psycopg.AsyncConnection[Any], job_id: int) -> tuple[bool, int, bool]:
    """(its job row is there, how many events it has, it is in the log)."""
    return (
        await one(db, "SELECT EXISTS (SELECT FROM procrastinate.procrastinate_jobs WHERE id = %s)",
                  job_id),
        await one(db, "SELECT count(*) FROM procrastinate.procrastinate_events WHERE job_id = %s",
                  job_id),
        await one(db, "SELECT EXISTS (SELECT FROM procqueue.finished_attempts WHERE job_id = %s)",
                  job_id),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("task", "queue", "first", "leaves"),
    [
        (DRAIN, "sync", "", True),
        ("procqueue:prune", MAINTENANCE_QUEUE, "", True),
        ("search:reconcile", MAINTENANCE_QUEUE, "", True),
        (DRAIN, "sync", "retried", False),  # its failed attempt stays readable
        (DRAIN, "sync", "postponed", False),  # so does why it waited
        ("notification:email", "notifications", "", False),  # a job users look up
    ],
)
async def test_a_first_attempt_success_of_a_drain_or_maintenance_job_leaves_for_the_log(
    db: psycopg.AsyncConnection[Any], task: str, queue: str, first: str, leaves: bool
) -> None:
    job_id = await run_once(db, task, first=first, queue=queue)
    there, events, logged = await where_it_is(db, job_id)
    assert (there, events > 0, logged) == (not leaves, not leaves, leaves)


async def test_a_drain_job_cancelled_while_waiting_keeps_its_row(
    db: psycopg.AsyncConnection[Any],
) -> None:
    job_id: int = await one(db, "SELECT procqueue.add_job(%s, '{}', 'sync')", DRAIN)
    await db.execute(
        "SELECT procrastinate.procrastinate_finish_job_v1(%s, 'succeeded', false)", [job_id]
    )
    assert await where_it_is(db, job_id) == (True, 2, False)  # deferred, cancelled


async def test_the_log_trigger_fires_after_procrastinates_status_event_trigger(
    db: psycopg.AsyncConnection[Any],
) -> None:
    """Triggers of one event fire in name order; the `succeeded` event must exist
    before the job is deleted (its foreign key), so the name we rely on is checked."""
    names = [
        row[0]
        for row in await (
            await db.execute(
                "SELECT tgname FROM pg_trigger"
                " WHERE tgrelid = 'procrastinate.procrastinate_jobs'::regclass"
                " AND NOT tgisinternal ORDER BY tgname"
            )
        ).fetchall()
    ]
    events, ours = "procrastinate_trigger_status_events_update_v1", "remove_logged_succeeded_job"
    assert names.index(events) < names.index(ours)


async def test_drained_changes_leave_only_the_log_and_count_as_succeeded(
    app: ProcqueueApp, database: str, db: psycopg.AsyncConnection[Any]
) -> None:
    await clear_queue(database)
    await db.execute("TRUNCATE procqueue.finished_attempts")
    await insert_listings(db, 5, "logged")
    await drain(app)
    assert await waiting_changes(db, LISTING) == {}
    assert await one(db, "SELECT count(*) FROM procrastinate.procrastinate_jobs") == 0
    assert await one(db, "SELECT count(*) FROM procrastinate.procrastinate_events") == 0
    task, queue, seconds = (
        await (
            await db.execute(
                "SELECT task_name, queue_name, seconds FROM procqueue.finished_attempts"
            )
        ).fetchall()
    )[0]
    assert (task, queue) == (DRAIN, LISTING.queue) and seconds > 0
    stats = await one(
        db,
        "SELECT succeeded FROM procqueue.task_stats(interval '1 hour') WHERE task_name = %s",
        DRAIN,
    )
    assert stats == 1
    finished = await one(
        db,
        "SELECT finished_per_minute_5m FROM procqueue.queue_stats() WHERE queue_name = %s",
        LISTING.queue,
    )
    assert finished == 1 / 5
    chart = await one(
        db,
        "SELECT count(*) FROM procqueue.chart_attempts(now() - interval '1 hour', 'infinity')"
        " WHERE task_name = %s AND type = 'succeeded' AND queue_name = %s",
        DRAIN,
        LISTING.queue,
    )
    assert chart == 1


async def test_hours_of_logged_attempts_roll_up_with_no_event_left(
    db: psycopg.AsyncConnection[Any],
) -> None:
    await db.execute("TRUNCATE procqueue.task_stats_hours CASCADE")
    await db.execute("TRUNCATE procqueue.chart_periods CASCADE")
    await db.execute("DELETE FROM procrastinate.procrastinate_jobs")
    await db.execute("TRUNCATE procqueue.finished_attempts")
    await db.execute(
        "INSERT INTO procqueue.finished_attempts"
        " (job_id, finished_at, seconds, queue_name, task_name) VALUES"
        " (1, date_trunc('hour', now()) - interval '150 minutes', 0.2, 'q', 'procqueue:prune'),"
        " (2, date_trunc('hour', now()) - interval '140 minutes', 0.4, 'q', 'procqueue:prune')"
    )
    assert await one(db, "SELECT procqueue.roll_up_task_stats()") >= 1
    rolled = await one(
        db,
        "SELECT sum(succeeded) FROM procqueue.task_stats_hourly"
        " WHERE task_name = 'procqueue:prune'",
    )
    assert rolled == 2
    assert await one(db, "SELECT procqueue.roll_up_chart_minutes()") >= 1
    charted = await one(
        db,
        "SELECT sum(succeeded) FROM procqueue.chart_stats"
        " WHERE width = interval '1 minute' AND level = 0 AND task_name = 'procqueue:prune'",
    )
    assert charted == 2


async def test_prune_deletes_logged_attempts_older_than_the_succeeded_age(
    app: ProcqueueApp, db: psycopg.AsyncConnection[Any]
) -> None:
    await db.execute("TRUNCATE procqueue.finished_attempts")
    await db.execute(
        "INSERT INTO procqueue.finished_attempts"
        " (job_id, finished_at, seconds, queue_name, task_name) VALUES"
        " (11, now() - interval '8 days', 1, 'q', 't'),"
        " (12, now() - interval '9 days', 1, 'q', 't'),"
        " (13, now() - interval '6 days', 1, 'q', 't')"
    )
    report = await prune(app)
    assert report.logged_attempts == 2
    assert await one(db, "SELECT array_agg(job_id) FROM procqueue.finished_attempts") == [13]


async def test_the_job_page_of_a_job_that_left_says_it_succeeded(
    database: str, es_url: str, db: psycopg.AsyncConnection[Any]
) -> None:
    job_id = await run_once(db, DRAIN)
    settings = make_settings(database, es_url)
    async with dashboard_client(settings, access_for(settings, "127.0.0.1", True)) as client:
        page = await client.get(f"/jobs/{job_id}")
        gone = await client.get("/jobs/999999999")
    assert page.status_code == 200 and "succeeded on its first attempt" in page.text
    assert DRAIN in page.text
    assert gone.status_code == 404
