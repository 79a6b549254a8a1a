"""A postponed job is the same job, waiting: during a sink's outage the jobs table
gains no row, no job reads `succeeded` before its side effect happened, no attempt
is spent, and the reason reads where the dashboard shows jobs (migration 0018)."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg

from procqueue.dashboard.store import JobFilter, job_detail, job_page
from procqueue.entities import LISTING
from procqueue.queue.health import read_snapshot
from tests.conftest import make_settings
from tests.support.proxy import unreachable_url
from tests.support.worker import (
    app_with,
    clear_queue,
    eventually,
    indexed_documents,
    insert_listings,
    row_jobs_instead,
    running_worker,
    table_documents,
)

WAITING = 500
#: The module's tests write one set of indexes: each compares them with the table.
INDEX_PREFIX = f"t{uuid.uuid4().hex[:8]}_"


async def listing_jobs(db: psycopg.AsyncConnection[Any]) -> dict[str, Any]:
    """The listing jobs' count, statuses, most attempts and postponements."""
    cursor = await db.execute(
        "SELECT count(*), count(*) FILTER (WHERE j.status = 'succeeded'),"
        " coalesce(max(j.attempts), 0), coalesce(sum(p.times), 0),"
        " count(*) FILTER (WHERE j.status = 'todo' AND p.attempts = j.attempts)"
        " FROM procrastinate.procrastinate_jobs AS j"
        " LEFT JOIN procqueue.job_postponements AS p ON p.job_id = j.id"
        " WHERE j.task_name LIKE 'listing:%'"
    )
    row = await cursor.fetchone()
    assert row is not None
    total, succeeded, attempts, postponements, postponed_now = row
    return {
        "rows": total,
        "succeeded": succeeded,
        "attempts": attempts,
        "postponements": postponements,
        "postponed_now": postponed_now,
    }


async def test_an_outage_postpones_the_same_rows_and_none_reads_succeeded(
    database: str, db: psycopg.AsyncConnection[Any], es_url: str
) -> None:
    """500 waiting row jobs (what a drain hands over, `verify --repair` makes),
    Elasticsearch down until each was postponed three times: the table keeps 500 rows,
    none reads succeeded or spent an attempt, the dashboard says postponed and why;
    back up, the same rows succeed and the index converges. (A drain job postponed:
    tests/search/test_drain.py.)"""
    await clear_queue(database)
    prefix = INDEX_PREFIX
    ids = await insert_listings(db, WAITING, "written during the outage")
    await row_jobs_instead(database, ids)
    with unreachable_url() as down_url:
        down = make_settings(database, down_url, index_prefix=prefix, circuit_max_wait=0.2)
        async with app_with(down) as app, running_worker(app):

            async def every_job_waited_three_probes() -> bool:
                now = await listing_jobs(db)
                # Checked at every look, not only at the end: the table never grows
                # and nothing reads succeeded while the index is unreachable.
                assert now["rows"] == WAITING and now["succeeded"] == 0, now
                assert now["attempts"] == 0, now
                return bool(now["postponements"] >= 3 * WAITING)

            await eventually(every_job_waited_three_probes, timeout=120)
            async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
                snapshot = await read_snapshot(conn, down.health)
            assert any(circuit.sink == "elasticsearch" for circuit in snapshot.open_circuits)
        # Where an operator looks, once no worker can take a job between two reads: the
        # jobs list and the job page say postponed and why.
        async with await psycopg.AsyncConnection.connect(database) as conn:
            page = await job_page(conn, JobFilter(status="postponed"))
            assert page.jobs and all(
                "elasticsearch" in job["postponed_reason"].lower() for job in page.jobs
            ), page.jobs[:3]
            detail = await job_detail(conn, page.jobs[0]["id"])
        assert detail is not None
        assert detail.job["status"] == "todo" and detail.job["postponed_times"] >= 1
    # Elasticsearch is back (a worker that reaches it): the same rows run and succeed.
    up = make_settings(database, es_url, index_prefix=prefix)
    async with app_with(up) as app:
        async with running_worker(app):

            async def drained() -> bool:
                return bool((await listing_jobs(db))["succeeded"] == WAITING)

            await eventually(drained, timeout=120)
        after = await listing_jobs(db)
        assert after["rows"] == WAITING and after["attempts"] == 1  # the one that ran
        assert after["postponed_now"] == 0  # history, not a state, once the job ran
        assert await indexed_documents(app, LISTING) == await table_documents(database, LISTING)


async def test_a_postponement_is_not_counted_as_a_retry_and_keeps_coalescing(
    database: str, db: psycopg.AsyncConnection[Any], es_url: str
) -> None:
    """The postponed job (the entity's drain job) takes its queueing lock back: later
    writes coalesce into it; the events count no retry (health's retries stay true)."""
    await clear_queue(database)
    prefix = INDEX_PREFIX
    with unreachable_url() as down_url:
        down = make_settings(database, down_url, index_prefix=prefix, circuit_max_wait=0.2)
        async with app_with(down) as app, running_worker(app):
            [listing_id] = await insert_listings(db, 1, "first")

            async def postponed_twice() -> bool:
                return bool((await listing_jobs(db))["postponements"] >= 2)

            await eventually(postponed_twice, timeout=60)
    # The worker stopped: the postponed job waits, holding its queueing lock again.
    for title in ("second", "third"):
        await db.execute("UPDATE listings SET title = %s WHERE id = %s", [title, listing_id])
    assert (await listing_jobs(db))["rows"] == 1
    async with app_with(make_settings(database, es_url, index_prefix=prefix)) as app:
        async with running_worker(app):

            async def synced() -> bool:
                return bool((await listing_jobs(db))["succeeded"] == 1)

            await eventually(synced, timeout=60)
        retries = await (
            await db.execute(
                "SELECT count(*) FROM procrastinate.procrastinate_events AS e"
                " JOIN procrastinate.procrastinate_jobs AS j ON j.id = e.job_id"
                " WHERE j.task_name LIKE 'listing:%' AND e.type = 'deferred_for_retry'"
            )
        ).fetchone()
        assert retries == (0,)
        documents = await indexed_documents(app, LISTING)
    assert documents[listing_id]["title"] == "third"
