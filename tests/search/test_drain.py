"""The write path of issue 23: a narrow change row per write, a drain job per batch
(sql/triggers/entity_sync.sql, procqueue/search/drain.py, docs/bulk.md)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import psycopg
import pytest

from procqueue.engine.app import ProcqueueApp
from procqueue.entities import LISTING
from procqueue.features import Settings
from procqueue.search.client import search_index
from procqueue.search.drain import Drain, ensure_drain, run_drain
from procqueue.search.jobs import drain_job
from procqueue.search.reconcile import reconcile_entity
from tests.conftest import make_settings
from tests.support.proxy import unreachable_url
from tests.support.worker import (
    QUIET,
    SELLER_ID,
    app_with,
    clear_queue,
    drain,
    indexed_documents,
    insert_listings,
    table_documents,
    waiting_changes,
)

DRAIN = drain_job(LISTING).task_name
# Every app of this module writes the same indexes, so that each test can compare
# the whole table with the whole index, whichever ran before.
INDEX_PREFIX = f"t{uuid.uuid4().hex[:8]}_"


@pytest.fixture(scope="module")
def settings(database: str, es_url: str) -> Settings:
    return make_settings(database, es_url, index_prefix=INDEX_PREFIX)


async def drain_jobs(db: psycopg.AsyncConnection[Any], status: str = "todo") -> int:
    row = await (
        await db.execute(
            "SELECT count(*) FROM procrastinate.procrastinate_jobs WHERE lock = %s AND status = %s",
            [DRAIN, status],
        )
    ).fetchone()
    assert row is not None
    return int(row[0])


async def succeeded_drains(db: psycopg.AsyncConnection[Any]) -> int:
    """Drain jobs that succeeded: kept in the jobs table after a failed attempt, or gone
    to the log of first-attempt successes (migration 0026)."""
    row = await (
        await db.execute(
            "SELECT (SELECT count(*) FROM procrastinate.procrastinate_jobs"
            "        WHERE lock = %s AND status = 'succeeded')"
            "     + (SELECT count(*) FROM procqueue.finished_attempts WHERE task_name = %s)",
            [DRAIN, DRAIN],
        )
    ).fetchone()
    assert row is not None
    return int(row[0])


async def all_jobs(db: psycopg.AsyncConnection[Any]) -> int:
    row = await (
        await db.execute("SELECT count(*) FROM procrastinate.procrastinate_jobs")
    ).fetchone()
    assert row is not None
    return int(row[0])


async def title_in_index(app: ProcqueueApp, listing_id: str) -> str | None:
    document = (await indexed_documents(app, LISTING)).get(listing_id)
    return None if document is None else str(document["title"])


def a_drain(app: ProcqueueApp, job_id: int, lease: float = 60.0) -> Drain:
    return Drain(app.pool, LISTING, job_id, batch_size=500, lease=lease, patience=2.0)


async def test_a_write_records_its_change_and_the_drain_job_in_its_own_transaction(
    app: ProcqueueApp, database: str, db: psycopg.AsyncConnection[Any]
) -> None:
    await clear_queue(database)
    async with await psycopg.AsyncConnection.connect(database) as writer:
        row = await (
            await writer.execute(
                "INSERT INTO listings (user_id, title) VALUES (%s, 'x') RETURNING id", [SELLER_ID]
            )
        ).fetchone()
        assert row is not None
        assert await waiting_changes(writer, LISTING) == {str(row[0]): 1}
        assert await drain_jobs(writer) == 1
        assert await drain_jobs(db) == 0  # not before commit
        await writer.rollback()
    assert await waiting_changes(db, LISTING) == {}
    assert await all_jobs(db) == 0


async def test_writes_while_a_drain_waits_add_no_job_and_no_notify(
    app: ProcqueueApp, database: str, db: psycopg.AsyncConnection[Any]
) -> None:
    await clear_queue(database)
    listen = await psycopg.AsyncConnection.connect(database, autocommit=True)
    async with listen:
        await listen.execute('LISTEN "procrastinate_any_queue_v1"')
        first = await insert_listings(db, 1, "first")
        heard = [note async for note in listen.notifies(timeout=2.0, stop_after=1)]
        assert len(heard) == 1  # an idle queue's first change wakes a worker at once
        jobs = await all_jobs(db)
        ids = await insert_listings(db, 20, "more")
        for listing_id in ids[:10]:
            await db.execute("UPDATE listings SET title = 'again' WHERE id = %s", [listing_id])
        assert await all_jobs(db) == jobs == 1
        assert [note async for note in listen.notifies(timeout=0.3)] == []
    assert set(await waiting_changes(db, LISTING)) == {*first, *ids}
    await drain(app)
    assert await waiting_changes(db, LISTING) == {}
    assert await succeeded_drains(db) == 1
    documents = await indexed_documents(app, LISTING)
    assert {documents[i]["title"] for i in ids[:10]} == {"again"}


async def test_a_burst_on_one_row_is_one_change_and_the_last_state_is_indexed(
    app: ProcqueueApp, database: str, db: psycopg.AsyncConnection[Any]
) -> None:
    await clear_queue(database)
    (listing_id,) = await insert_listings(db, 1, "v0")
    for version in range(1, 101):
        await db.execute(
            "UPDATE listings SET title = %s WHERE id = %s", [f"v{version}", listing_id]
        )
    assert await waiting_changes(db, LISTING) == {listing_id: 1}
    assert await drain_jobs(db) == 1
    await drain(app)
    assert await title_in_index(app, listing_id) == "v100"


async def test_a_write_after_the_claim_is_not_swallowed_by_the_drain(
    app: ProcqueueApp, database: str, db: psycopg.AsyncConnection[Any]
) -> None:
    """The coalescing race: a change arriving while its key's change row is claimed
    (committed before the sync, or still open while the drain forgets what it synced)."""
    await clear_queue(database)
    before, during = await insert_listings(db, 2, "old")
    job = a_drain(app, job_id=-1)
    assert set(await job.claim()) == {before, during}
    await db.execute(
        "UPDATE listings SET title = 'committed after the claim' WHERE id = %s", [before]
    )
    async with await psycopg.AsyncConnection.connect(database) as writer:
        claimed = {before: 1, during: 1}
        await writer.execute(
            "UPDATE listings SET title = 'open while forgotten' WHERE id = %s", [during]
        )
        await job.settle(claimed, failed=set())  # the writer holds `during`: skipped
        await writer.commit()
    assert await waiting_changes(db, LISTING) == {before: 2, during: 2}
    await drain(app)
    assert await title_in_index(app, before) == "committed after the claim"
    assert await title_in_index(app, during) == "open while forgotten"
    assert await waiting_changes(db, LISTING) == {}


async def test_a_drain_does_not_end_before_the_writers_that_relied_on_it_commit(
    database: str, es_url: str, db: psycopg.AsyncConnection[Any]
) -> None:
    """A writer saw a drain job waiting, so made none; that job starts before the
    writer commits: it goes on until a third of the job timeout, then hands over to a
    successor instead of ending, and the change is synced once committed."""
    await clear_queue(database)
    short = make_settings(database, es_url, job_timeout=0.9, index_prefix=INDEX_PREFIX)
    async with app_with(short) as app:
        await insert_listings(db, 1, "first")  # makes the drain job the writer relies on
        async with await psycopg.AsyncConnection.connect(database) as writer:
            row = await (
                await writer.execute(
                    "INSERT INTO listings (user_id, title) VALUES (%s, 'late') RETURNING id",
                    [SELLER_ID],
                )
            ).fetchone()
            assert row is not None
            assert await drain_jobs(db) == 1
            await app.run_worker_async(wait=False, listen_notify=False, **QUIET)
            assert await succeeded_drains(db) == 1
            assert await drain_jobs(db) == 1  # its successor waits
            await writer.commit()
        await drain(app)
        assert await title_in_index(app, str(row[0])) == "late"
        assert await drain_jobs(db) == 0 and await waiting_changes(db, LISTING) == {}


async def _until_drained(app: ProcqueueApp, db: psycopg.AsyncConnection[Any]) -> None:
    while await waiting_changes(db, LISTING) or await drain_jobs(db):
        await drain(app)


async def test_claims_of_a_drain_that_died_run_out_and_its_rerun_takes_them_back(
    app: ProcqueueApp, database: str, db: psycopg.AsyncConnection[Any]
) -> None:
    """A claim lasts while its job runs: a drain whose worker died holds its changes
    until its lease runs out (or its rerun takes them back); a claim whose job ended
    (failed, cancelled) frees them at once."""
    await clear_queue(database)
    ids = set(await insert_listings(db, 3, "orphaned"))
    row = await (
        await db.execute(
            "UPDATE procrastinate.procrastinate_jobs SET status = 'doing' WHERE lock = %s"
            " AND status = 'todo' RETURNING id",
            [DRAIN],
        )
    ).fetchone()
    assert row is not None
    dead = a_drain(app, job_id=int(row[0]), lease=3600)
    assert set(await dead.claim()) == ids
    assert await a_drain(app, job_id=-3).claim() == {}  # held: its job is still `doing`
    assert set(await dead.claim()) == ids  # its own rerun (the rescue retries it)
    await db.execute("UPDATE procqueue.sync_changes SET claimed_until = now() - interval '1 s'")
    assert set(await a_drain(app, job_id=-4).claim()) == ids  # the lease ran out
    await db.execute(
        "UPDATE procrastinate.procrastinate_jobs SET status = 'failed' WHERE id = %s", [row[0]]
    )
    assert set(await a_drain(app, job_id=-5).claim()) == ids  # -4 is no running job
    await a_drain(app, job_id=-5).release()
    async with app.pool.connection() as conn:
        assert await ensure_drain(conn, LISTING)  # the reconciliation's step: no drain waits
    await drain(app)
    assert await waiting_changes(db, LISTING) == {}


async def test_a_row_that_fails_goes_to_a_row_job_and_the_others_are_synced(
    app: ProcqueueApp, database: str, db: psycopg.AsyncConnection[Any]
) -> None:
    await clear_queue(database)
    good = await insert_listings(db, 5, "good")
    (huge,) = await insert_listings(db, 1, "huge")
    await db.execute(
        "UPDATE listings SET description = repeat('x', %s) WHERE id = %s",
        [LISTING.max_document_bytes + 10, huge],
    )
    result = await run_drain(app, a_drain(app, job_id=-6))
    assert (result.synced, result.handed_over) == (5, 1)
    assert await waiting_changes(db, LISTING) == {}
    assert {i: await title_in_index(app, i) for i in good} == dict.fromkeys(good, "good")
    row = await (
        await db.execute(
            "SELECT task_name, status::text FROM procrastinate.procrastinate_jobs WHERE lock = %s",
            [f"listing:{huge}"],
        )
    ).fetchone()
    assert row == ("listing:update", "todo")
    await drain(app)
    failed = await (
        await db.execute(
            "SELECT j.status::text, e.message FROM procrastinate.procrastinate_jobs AS j "
            "JOIN procqueue.job_errors AS e ON e.job_id = j.id WHERE j.lock = %s",
            [f"listing:{huge}"],
        )
    ).fetchone()
    assert failed is not None and failed[0] == "failed" and "over the limit" in failed[1], failed
    await db.execute("DELETE FROM listings WHERE id = %s", [huge])
    await drain(app)


@pytest.mark.parametrize("isolation", ["REPEATABLE READ", "SERIALIZABLE"])
async def test_a_writer_outside_read_committed_gets_a_row_job_and_never_fails(
    app: ProcqueueApp, database: str, db: psycopg.AsyncConnection[Any], isolation: str
) -> None:
    await clear_queue(database)
    (listing_id,) = await insert_listings(db, 1, "before")
    await drain(app)
    async with await psycopg.AsyncConnection.connect(database) as writer:
        await writer.execute(f"SET TRANSACTION ISOLATION LEVEL {isolation}")
        await writer.execute("SELECT count(*) FROM listings")  # the snapshot is taken
        await insert_listings(db, 1, "meanwhile")  # a drain job and a change after it
        await writer.execute("UPDATE listings SET title = 'after' WHERE id = %s", [listing_id])
        await writer.commit()
    assert listing_id not in await waiting_changes(db, LISTING)
    await drain(app)
    assert await title_in_index(app, listing_id) == "after"


async def test_the_index_equals_the_table_after_concurrent_writers_and_drains(
    app: ProcqueueApp, database: str, db: psycopg.AsyncConnection[Any]
) -> None:
    await clear_queue(database)
    ids = await insert_listings(db, 40, "v0")

    async def writer(n: int) -> None:
        async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
            for round_number in range(15):
                for listing_id in ids[n::4]:
                    await conn.execute(
                        "UPDATE listings SET title = %s WHERE id = %s",
                        [f"w{n} r{round_number}", listing_id],
                    )

    async def drains() -> None:
        for _ in range(10):
            await drain(app)

    await asyncio.gather(*(writer(n) for n in range(4)), drains())
    await _until_drained(app, db)
    assert await indexed_documents(app, LISTING) == await table_documents(database, LISTING)


async def test_the_reconciliation_makes_a_drain_job_for_changes_left_without_one(
    app: ProcqueueApp, database: str, db: psycopg.AsyncConnection[Any]
) -> None:
    await clear_queue(database)
    (listing_id,) = await insert_listings(db, 1, "left alone")
    await db.execute("DELETE FROM procrastinate.procrastinate_jobs")  # an admin's delete
    async with app.pool.connection() as conn:
        await conn.set_autocommit(True)
        result = await reconcile_entity(
            conn, search_index(app.services), LISTING,
            batch_size=100, threshold=50, chunk_size=500, overrun_after=60.0,
        )  # fmt: skip
        await conn.set_autocommit(False)
    assert result.drain_restarted
    assert listing_id not in result.repaired  # its change covers it
    await drain(app)
    assert await title_in_index(app, listing_id) == "left alone"


async def test_an_outage_postpones_the_drain_job_and_its_changes_wait(
    database: str, db: psycopg.AsyncConnection[Any], es_url: str
) -> None:
    """Elasticsearch down: the drain job is postponed (the same row, no attempt spent,
    the claims given back) and later writes join it; back up, everything is synced."""
    await clear_queue(database)
    ids = await insert_listings(db, 30, "during the outage")
    with unreachable_url() as down_url:
        down = make_settings(database, down_url, index_prefix=INDEX_PREFIX, circuit_max_wait=0.2)
        async with app_with(down) as app:
            await drain(app)
            await insert_listings(db, 5, "later in the outage")
    job = await (
        await db.execute(
            "SELECT j.status::text, j.attempts, p.times FROM procrastinate.procrastinate_jobs"
            " AS j JOIN procqueue.job_postponements AS p ON p.job_id = j.id WHERE j.lock = %s",
            [DRAIN],
        )
    ).fetchall()
    assert len(job) == 1 and job[0][:2] == ("todo", 0) and job[0][2] >= 1, job
    waiting = await (
        await db.execute("SELECT count(*), count(claimed_by) FROM procqueue.sync_changes")
    ).fetchone()
    assert waiting == (35, 0)
    async with app_with(make_settings(database, es_url, index_prefix=INDEX_PREFIX)) as app:
        await db.execute("UPDATE procrastinate.procrastinate_jobs SET scheduled_at = now()")
        await drain(app)
        documents = await indexed_documents(app, LISTING)
    assert {documents[i]["title"] for i in ids} == {"during the outage"}
    assert await waiting_changes(db, LISTING) == {} and await succeeded_drains(db) == 1
