"""Backpressure item by item (issue 22): Elasticsearch under pressure answers a
`_bulk` with 200 and refuses items with 429 `es_rejected_execution_exception` (or
503). That is the cluster asking to slow down, not a fault of the rows: the jobs
are postponed with no attempt spent and no error row, the worker slows its writes
to that index, health says so, and once the pressure ends every document
converges."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

from procqueue.entities import LISTING
from procqueue.search.client import SearchIndex, Write, make_client
from procqueue.search.settings import SearchConfig, SearchSettings
from tests.conftest import make_settings
from tests.support.bulk_rejecting_proxy import BulkRejectingProxy, bulk_rejecting_proxy
from tests.support.history import run_cli
from tests.support.worker import (
    SELLER_ID,
    app_with,
    clear_queue,
    eventually,
    indexed_documents,
    insert_listings,
    job_counts,
    running_worker,
    sink_circuit,
    table_documents,
)

#: Every app of this module writes the same indexes (the rows of each test add up).
INDEX_PREFIX = f"t{uuid.uuid4().hex[:8]}_"


@pytest.fixture
async def rejecting(es_url: str) -> AsyncIterator[BulkRejectingProxy]:
    async with bulk_rejecting_proxy(es_url) as proxy:
        yield proxy


async def queue_is_done(database: str) -> bool:
    counts = await job_counts(database)
    return not counts.get("todo") and not counts.get("doing")


async def listing_job_facts(db: psycopg.AsyncConnection[Any]) -> dict[str, int]:
    """Of this test's listing jobs (the queue was cleared first): rows, the most
    attempts any spent, postponements, error rows, and bulk jobs carrying an attempt."""
    cursor = await db.execute(
        "SELECT count(*), coalesce(max(j.attempts), 0),"
        " coalesce(sum((SELECT sum(p.times) FROM procqueue.job_postponements AS p"
        "               WHERE p.job_id = j.id)), 0),"
        " (SELECT count(*) FROM procqueue.job_errors AS e"
        "   JOIN procrastinate.procrastinate_jobs AS k ON k.id = e.job_id"
        "   WHERE k.task_name LIKE 'listing:%%'),"
        " count(*) FILTER (WHERE j.args ? 'attempt')"
        " FROM procrastinate.procrastinate_jobs AS j WHERE j.task_name LIKE 'listing:%%'"
    )
    row = await cursor.fetchone()
    assert row is not None
    keys = ("jobs", "attempts", "postponements", "errors", "bulk_retries")
    return dict(zip(keys, map(int, row), strict=True))


async def item_error_rows(db: psycopg.AsyncConnection[Any], since: int) -> int:
    row = await (
        await db.execute("SELECT count(*) FROM procqueue.sync_item_errors WHERE id > %s", [since])
    ).fetchone()
    return int(row[0]) if row else 0


async def last_item_error(db: psycopg.AsyncConnection[Any]) -> int:
    row = await (
        await db.execute("SELECT coalesce(max(id), 0) FROM procqueue.sync_item_errors")
    ).fetchone()
    return int(row[0]) if row else 0


@pytest.mark.parametrize(
    ("status", "error_type"),
    [(429, "es_rejected_execution_exception"), (503, "unavailable_shards_exception")],
)
async def test_items_refused_under_pressure_are_postponed_spending_no_attempt_and_converge(
    database: str,
    db: psycopg.AsyncConnection[Any],
    rejecting: BulkRejectingProxy,
    status: int,
    error_type: str,
) -> None:
    """No retry allowed (max_retries 0): a refusal that spent an attempt would fail
    its job for good. Row jobs (one by one and micro-batched) and a bulk job all meet
    `_bulk` answers refusing every item until each job waited twice: none fails, no
    error row, no attempt spent, the circuit and `procqueue health` name the
    backpressure; then the pressure ends and the index equals the table."""
    settings = make_settings(
        database, rejecting.url, index_prefix=INDEX_PREFIX, max_retries=0, retry_backoff=0.05,
        circuit_max_wait=0.2,
    )  # fmt: skip
    async with app_with(settings) as app:
        await clear_queue(database)
        items_before = await last_item_error(db)
        rejecting.reject(status, error_type)
        title = f"written under pressure {status}"
        ids = await insert_listings(db, 12, title)
        await db.execute(  # one statement over the bulk threshold: a bulk job
            "INSERT INTO listings (user_id, title) SELECT %s, %s FROM generate_series(1, 60)",
            [SELLER_ID, title],
        )
        async with running_worker(app):
            await rejecting.until_rejected(3)

            async def every_job_waited_twice() -> bool:
                facts = await listing_job_facts(db)
                # Checked at every look: nothing spends an attempt or writes an error.
                assert facts["attempts"] == 0 and facts["errors"] == 0, facts
                return facts["postponements"] >= 2 * facts["jobs"]

            await eventually(every_job_waited_twice, timeout=60)
            state = await sink_circuit(database, "elasticsearch")
            assert state is not None and state[0], state
            prefix = settings.section(SearchSettings).index_prefix
            assert f"rejects writes to {prefix}listings ({status})" in state[1], state
            code, out, err = await run_cli(database, "health")
            assert code == 2 and "rejects writes to" in out and error_type in out, out + err
            rejecting.stop_rejecting()
            await eventually(lambda: queue_is_done(database), timeout=60)
        facts = await listing_job_facts(db)
        assert "failed" not in await job_counts(database)
        assert facts["errors"] == 0 and facts["bulk_retries"] == 0, facts
        assert facts["attempts"] == 1, facts  # the one run that wrote
        assert await item_error_rows(db, items_before) == 0
        # This test's rows (the module's other tests write theirs to the same indexes).
        written = {
            key: document
            for key, document in (await table_documents(database, LISTING)).items()
            if document["title"] == title
        }
        indexed = await indexed_documents(app, LISTING)
        assert len(written) == 72 and set(ids) <= set(written)
        assert {key: indexed.get(key) for key in written} == written
        closed = await sink_circuit(database, "elasticsearch")
        assert closed is not None and not closed[0], closed


async def test_writes_to_an_index_under_pressure_wait_and_go_at_full_speed_once_it_passes(
    rejecting: BulkRejectingProxy, es_url: str
) -> None:
    """The client's own slowing down: after a response refusing items of an index,
    the next `_bulk` to it waits a pause (doubling while the refusals go on, bounded);
    one answer without refusals ends it."""
    prefix = f"t{uuid.uuid4().hex[:8]}_"
    search = SearchIndex(make_client(SearchConfig(url=rejecting.url)), prefix)
    try:
        await search.ensure_index(LISTING)
        alias = search.alias(LISTING)
        write = [Write(alias, str(uuid.uuid4()), '{"title": "pressed"}')]
        assert search.pause_left([alias]) == 0
        rejecting.reject()
        failures = await search.write_versioned(write, 1)
        assert [failure.status for failure in failures] == [429]
        assert all(failure.backpressure for failure in failures)
        first_pause = search.pause_left([alias])
        assert first_pause > 0
        assert search.pause_left([f"{prefix}other"]) == 0  # only that index slows down
        started = time.monotonic()
        await search.write_versioned(write, 2)
        assert time.monotonic() - started >= first_pause * 0.9
        assert search.pause_left([alias]) > first_pause  # still refused: a longer pause
        rejecting.stop_rejecting()
        assert await search.write_versioned(write, 3) == []
        assert search.pause_left([alias]) == 0
    finally:
        await search.aclose()


async def test_one_slow_row_fails_alone_and_opens_no_circuit(
    database: str, db: psycopg.AsyncConnection[Any], rejecting: BulkRejectingProxy
) -> None:
    """Five rows and one the cluster takes longer than the timeout to index, in one
    micro-batch: the cluster answers a ping, so the request is sent again one write at
    a time; the five are indexed, the slow row's job fails by itself (no retry allowed
    here) with the reason, and the Elasticsearch circuit never opens."""
    await clear_queue(database)
    await db.execute("DELETE FROM procqueue.sink_circuits WHERE sink = 'elasticsearch'")
    ordinary = await insert_listings(db, 5, "ordinary")
    [slow] = await insert_listings(db, 1, "too slow to index")
    rejecting.slow_down(b"too slow to index", 3.0)
    settings = make_settings(
        database, rejecting.url, index_prefix=INDEX_PREFIX, elasticsearch_timeout=1,
        max_retries=0, circuit_max_wait=0.2,
    )  # fmt: skip
    async with app_with(settings) as app:
        async with running_worker(app):
            await eventually(lambda: queue_is_done(database), timeout=60)
        documents = await indexed_documents(app, LISTING)
    assert all(documents[listing_id]["title"] == "ordinary" for listing_id in ordinary)
    assert await sink_circuit(database, "elasticsearch") is None
    cursor = await db.execute(
        "SELECT j.status::text, e.error_type, e.message FROM procrastinate.procrastinate_jobs"
        " AS j JOIN procqueue.job_errors AS e ON e.job_id = j.id WHERE j.lock = %s",
        [f"listing:{slow}"],
    )
    [(status, error_type, message)] = await cursor.fetchall()
    assert status == "failed" and error_type == "procqueue.errors.TransientError"
    assert slow in message and "(504)" in message and "too costly to index" in message
