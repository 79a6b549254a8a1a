"""Every committed change reaches the index, also under failure: an Elasticsearch
outage, killed database connections and a hung request delay a sync, never drop it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import Any

import psycopg
import pytest

from procqueue.engine.app import ProcqueueApp
from procqueue.entities import LISTING
from procqueue.queue.health import evaluate, read_snapshot
from procqueue.queue.metrics import render_metrics
from procqueue.search.client import search_index
from tests.conftest import make_settings
from tests.support.history import run_cli
from tests.support.proxy import TcpProxy
from tests.support.worker import (
    SELLER_ID,
    clear_queue,
    drain,
    eventually,
    indexed_documents,
    insert_listings,
    job_counts,
    row_jobs_instead,
    running_worker,
    sink_circuit,
    table_documents,
)
from tests.support.worker import app_with as app_on

# Every app of this module writes the same indexes, whichever server URL it uses.
INDEX_PREFIX = f"t{uuid.uuid4().hex[:8]}_"


def app_with(
    database: str, es_url: str, **overrides: Any
) -> contextlib.AbstractAsyncContextManager[ProcqueueApp]:
    return app_on(make_settings(database, es_url, index_prefix=INDEX_PREFIX, **overrides))


async def queue_is_done(database: str) -> bool:
    counts = await job_counts(database)
    return not counts.get("todo") and not counts.get("doing")


async def index_matches_table(app: ProcqueueApp, database: str) -> bool:
    return await indexed_documents(app, LISTING) == await table_documents(database, LISTING)


async def error_rows(database: str, where: str = "true") -> list[tuple[Any, ...]]:
    async with await psycopg.AsyncConnection.connect(database) as conn:
        cursor = await conn.execute(
            "SELECT job_id, error_type, message, transient, final FROM procqueue.job_errors "
            f"WHERE {where} ORDER BY id"
        )
        return await cursor.fetchall()


async def errors_of(
    database: str, listing_ids: list[str], where: str = "true"
) -> list[tuple[Any, ...]]:
    """error_rows of the jobs of these listings (others are earlier tests')."""
    locks = ", ".join(f"'listing:{listing_id}'" for listing_id in listing_ids)
    jobs = f"SELECT id FROM procrastinate.procrastinate_jobs WHERE lock IN ({locks})"
    return await error_rows(database, f"job_id IN ({jobs}) AND {where}")


async def timed_out(database: str) -> bool:
    return bool(await error_rows(database, "error_type LIKE '%JobTimeout'"))


async def indexed_title(app: ProcqueueApp, listing_id: str) -> str:
    search = search_index(app.services)
    found = await search.client.get(index=search.alias(LISTING), id=listing_id)
    return str(found["_source"]["title"])


async def metrics(app: ProcqueueApp, database: str) -> bytes:
    config = app.services.settings.health
    async with await psycopg.AsyncConnection.connect(database) as conn:
        snapshot = await read_snapshot(conn, config)
    return render_metrics(snapshot, evaluate(snapshot, config))


async def postponed_jobs(database: str) -> int:
    """How many times listing jobs were postponed (each keeps its row: 0018)."""
    async with await psycopg.AsyncConnection.connect(database) as conn:
        cursor = await conn.execute(
            "SELECT coalesce(sum(p.times), 0) FROM procqueue.job_postponements AS p "
            "JOIN procrastinate.procrastinate_jobs AS j ON j.id = p.job_id "
            "WHERE j.task_name LIKE 'listing:%'"
        )
        row = await cursor.fetchone()
    return int(row[0]) if row else 0


async def test_elasticsearch_outage_longer_than_every_retry_costs_no_retry_and_converges(
    database: str, db: psycopg.AsyncConnection[Any], proxy: TcpProxy
) -> None:
    """Default retries (3); the outage lasts until every job waited more times than
    it may retry: the jobs are postponed by the open circuit, none fails, nothing
    is recorded as an error, and every change lands once Elasticsearch is back."""
    async with app_with(database, proxy.url, circuit_max_wait=0.2) as app:
        assert app.services.settings.max_retries == 3
        await proxy.go_down()
        errors_before = len(await error_rows(database))
        postponed_before = await postponed_jobs(database)
        await insert_listings(db, 20, "written during the outage")
        async with running_worker(app):

            async def waited_past_every_retry() -> bool:
                return await postponed_jobs(database) >= postponed_before + 20 * 5

            await eventually(waited_past_every_retry, timeout=60)
            state = await sink_circuit(database, "elasticsearch")
            assert state is not None and state[0] and "Elasticsearch unreachable" in state[1]
            # Health says so: `procqueue health` exits 2 (unhealthy) naming the outage,
            # and /metrics has a gauge for it.
            code, out, _ = await run_cli(database, "health")
            assert code == 2 and "elasticsearch is unavailable since" in out, out
            assert b'procqueue_sink_unavailable{sink="elasticsearch"} 1.0' in await metrics(
                app, database
            )
            await proxy.come_back()
            await eventually(lambda: queue_is_done(database), timeout=60)
        assert "failed" not in await job_counts(database)
        assert len(await error_rows(database)) == errors_before
        assert await index_matches_table(app, database)
        assert await sink_circuit(database, "elasticsearch") == (False, state[1])
        assert b"procqueue_sink_unavailable{" not in await metrics(app, database)


async def test_unreachable_elasticsearch_spends_no_retry_even_with_none_allowed(
    database: str, db: psycopg.AsyncConnection[Any], proxy: TcpProxy
) -> None:
    async with app_with(database, proxy.url, max_retries=0, circuit_max_wait=0.2) as app:
        await proxy.go_down()
        [listing_id] = await insert_listings(db, 1, "reaches the index after the outage")
        postponed_before = await postponed_jobs(database)
        async with running_worker(app):

            async def postponed_twice() -> bool:
                return await postponed_jobs(database) >= postponed_before + 2

            await eventually(postponed_twice)
            await proxy.come_back()
            await eventually(lambda: queue_is_done(database))
        assert "failed" not in await job_counts(database)
        assert listing_id in await indexed_documents(app, LISTING)


async def test_worker_recovers_when_its_database_connections_are_killed(
    database: str, db: psycopg.AsyncConnection[Any], es_url: str
) -> None:
    # A long polling interval: only LISTEN/NOTIFY can make jobs run promptly.
    async with app_with(database, es_url, polling_interval=600) as app:
        async with running_worker(app):
            await insert_listings(db, 10, "before the kill")
            await eventually(lambda: index_matches_table(app, database))

            writer = asyncio.create_task(insert_listings(db, 60, "around the kill"))
            killed = await (
                await db.execute(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND application_name = 'procqueue-worker'"
                )
            ).fetchone()
            assert killed is not None and killed[0] >= 2  # the pool and the LISTEN connection
            await writer
            # The worker is idle now; with a 600 s polling interval only a
            # re-established LISTEN can make it pick these up in time.
            await eventually(lambda: queue_is_done(database), timeout=60)
            await insert_listings(db, 10, "after the kill")
            await eventually(lambda: queue_is_done(database), timeout=60)
            await eventually(lambda: index_matches_table(app, database))

    assert "failed" not in await job_counts(database)


async def test_job_running_past_the_timeout_is_cancelled_and_retried(
    database: str, db: psycopg.AsyncConnection[Any], proxy: TcpProxy
) -> None:
    async with app_with(
        database, proxy.url, job_timeout=0.5, elasticsearch_timeout=60, retry_backoff=0.2
    ) as app:
        await search_index(app.services).ensure_index(LISTING)
        proxy.stall()  # Elasticsearch accepts the request and never answers
        [listing_id] = await insert_listings(db, 1, "slow")
        async with running_worker(app):
            await eventually(lambda: timed_out(database))
            [row, *_] = await error_rows(database, "error_type LIKE '%JobTimeout'")
            assert row[3] is True  # transient: it will be retried
            assert "longer than 0.5 s" in row[2]
            await proxy.come_back()
            await eventually(lambda: queue_is_done(database))
        title = await indexed_title(app, listing_id)
    assert "failed" not in await job_counts(database)
    assert title == "slow"


async def test_retry_while_a_newer_job_of_the_row_waits_does_not_get_stuck(
    database: str, db: psycopg.AsyncConnection[Any], proxy: TcpProxy
) -> None:
    """A write during a sync enqueues a second job with the same queueing lock; when
    the running job then fails and is retried, both must still run to the end."""
    async with app_with(database, proxy.url, job_timeout=0.5, retry_backoff=0) as app:
        await search_index(app.services).ensure_index(LISTING)
        [listing_id] = await insert_listings(db, 1, "first")
        proxy.stall()  # the running job hangs on Elasticsearch, then times out
        async with running_worker(app):

            async def running() -> bool:
                return (await job_counts(database)).get("doing", 0) == 1

            await eventually(running)
            await db.execute("UPDATE listings SET title = 'second' WHERE id = %s", [listing_id])
            await eventually(lambda: timed_out(database))
            await proxy.come_back()
            await eventually(lambda: queue_is_done(database))
        title = await indexed_title(app, listing_id)
    assert title == "second"
    assert "failed" not in await job_counts(database)


async def test_job_waiting_on_a_long_open_writer_is_postponed_not_failed(
    database: str, db: psycopg.AsyncConnection[Any], es_url: str
) -> None:
    """A transaction left open (an admin's SQL session, REPEATABLE READ: such writers
    make row jobs, docs/bulk.md) holding the key bucket of a row must not use up the
    row's sync retries: the row job is postponed. (A READ COMMITTED writer left open
    holds no row's key: tests/search/test_drain.py.)"""
    [listing_id] = await insert_listings(db, 1, "before")
    # Another row whose sync key falls in the same bucket as this one's.
    row = await (
        await db.execute(
            "SELECT candidate FROM (SELECT gen_random_uuid()::text AS candidate "
            "FROM generate_series(1, 20000)) AS c WHERE procqueue.sync_lock_key('listing', "
            "candidate) = procqueue.sync_lock_key('listing', %s) LIMIT 1",
            [listing_id],
        )
    ).fetchone()
    assert row is not None
    async with app_with(database, es_url, job_timeout=0.6, max_retries=0) as app:
        await drain(app)
        async with await psycopg.AsyncConnection.connect(database) as open_writer:
            await open_writer.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            await open_writer.execute(
                "INSERT INTO listings (id, user_id, title) VALUES (%s, %s, 'open')",
                [row[0], SELLER_ID],
            )  # not committed: its trigger holds the bucket's key shared
            async with db.transaction():
                await db.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                await db.execute("UPDATE listings SET title = 'after' WHERE id = %s", [listing_id])
            async with running_worker(app):

                async def postponed() -> bool:
                    found = await (
                        await db.execute(
                            "SELECT count(*) FROM procrastinate.procrastinate_jobs "
                            "WHERE lock = %s AND status = 'todo' AND scheduled_at IS NOT NULL",
                            [f"listing:{listing_id}"],
                        )
                    ).fetchone()
                    return bool(found and found[0])

                await eventually(postponed)
                await open_writer.commit()
                await eventually(lambda: queue_is_done(database))
        title = await indexed_title(app, listing_id)
    assert title == "after"
    assert "failed" not in await job_counts(database)


async def test_a_worker_keeps_at_most_its_bulk_concurrency_of_writes_in_flight(
    database: str, db: psycopg.AsyncConnection[Any], proxy: TcpProxy
) -> None:
    """On a server that answers slowly, jobs wait for a `_bulk` slot in the worker,
    not in the server's queue (where they would run into the client's timeout while
    the server still did their work): the rest are sent as slots free up, once each."""
    async with app_with(
        database, proxy.url, concurrency=6, sync_batch_size=1, elasticsearch_bulk_concurrency=2
    ) as app:
        await search_index(app.services).ensure_index(LISTING)
        await clear_queue(database)
        proxy.stall()
        ids = await insert_listings(db, 6, "slow server")
        await row_jobs_instead(database, ids)  # six jobs at once, each its own `_bulk`
        async with running_worker(app):
            await proxy.until_count("/_bulk", 2)
            # That no third request comes is an absence: no event to await. Six
            # jobs start at once, so without the limit the rest come within this.
            await asyncio.sleep(0.5)
            assert proxy.count("/_bulk") == 2
            await proxy.come_back()
            await eventually(lambda: queue_is_done(database))
        titles = [await indexed_title(app, listing_id) for listing_id in ids]
    assert titles == ["slow server"] * 6
    assert proxy.count("/_bulk") == 6
    assert await errors_of(database, ids) == []


async def test_a_write_waiting_too_long_for_a_bulk_slot_opens_the_circuit_spending_no_retry(
    database: str,
    db: psycopg.AsyncConnection[Any],
    proxy: TcpProxy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Waiting for a slot is bounded by PROCQUEUE_ELASTICSEARCH_TIMEOUT, as a request
    is: a server that holds every slot that long is down, and the jobs behind them
    are postponed, not left to run into the job timeout (which spends a retry; with
    none allowed, the sixth job behind one slot would fail)."""
    async with app_with(
        database, proxy.url, concurrency=6, sync_batch_size=1, elasticsearch_bulk_concurrency=1,
        elasticsearch_timeout=0.4, job_timeout=2.0, max_retries=0,
    ) as app:  # fmt: skip
        await search_index(app.services).ensure_index(LISTING)
        await clear_queue(database)
        caplog.set_level(logging.INFO, "procqueue")
        proxy.stall()
        ids = await insert_listings(db, 6, "held slots")
        await row_jobs_instead(database, ids)
        async with running_worker(app):

            async def waited_too_long() -> bool:  # its postponement is logged, not recorded
                return any("postponed in" in r.getMessage() and "is too slow" in r.getMessage()
                           for r in caplog.records)  # fmt: skip

            await eventually(waited_too_long)
            await proxy.come_back()
            await eventually(lambda: queue_is_done(database))
        titles = [await indexed_title(app, listing_id) for listing_id in ids]
    assert titles == ["held slots"] * 6
    assert "failed" not in await job_counts(database)
    assert await errors_of(database, ids, "error_type LIKE '%JobTimeout'") == []
