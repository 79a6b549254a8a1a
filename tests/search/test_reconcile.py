"""Drift heals by itself: the periodic reconciliation finds what `verify` finds (a
lost write, a document edited behind the queue's back, a cancelled sync job, an
extra document) a batch at a time, and enqueues the repairs."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

from procqueue.app import build_app
from procqueue.engine.app import ProcqueueApp
from procqueue.entities import LISTING
from procqueue.errors import ConfigError
from procqueue.features import Settings
from procqueue.search.client import search_index
from procqueue.search.jobs import RECONCILE
from procqueue.search.verify import Drift, check_documents
from tests.conftest import make_settings
from tests.support.worker import (
    SELLER_ID,
    drain,
    indexed_documents,
    table_documents,
    waiting_changes,
)

#: A schedule that never falls due while a test runs (midnight of February 29th): the
#: tests run the reconciliation themselves, a run of the clock's would move the cursor.
NEVER_DURING_A_TEST = "0 0 29 2 *"


@pytest.fixture
async def reconciling_app(database: str, es_url: str) -> AsyncIterator[ProcqueueApp]:
    app = build_app(
        make_settings(
            database, es_url, maintenance_tasks=True, reconcile_batch=40,
            reconcile_cron=NEVER_DURING_A_TEST,
        )
    )  # fmt: skip
    async with app.open_async():
        yield app
    await app.services.aclose()


async def reconcile_once(app: ProcqueueApp) -> None:
    await app.configure_task(RECONCILE.task_name).defer_async(timestamp=0)
    await drain(app, queues=[RECONCILE.queue])


async def cursor(database: str) -> tuple[str | None, Any]:
    async with await psycopg.AsyncConnection.connect(database) as conn:
        row = await (
            await conn.execute(
                "SELECT after_key, last_pass_ended_at FROM procqueue.reconcile_cursors "
                "WHERE entity = 'listing'"
            )
        ).fetchone()
    assert row is not None
    return row[0], row[1]


def test_reconciliation_is_periodic_by_default() -> None:
    settings = Settings.model_fields
    assert settings["reconcile_cron"].default == "*/5 * * * *"
    assert settings["reconcile_batch"].default == 5000


async def test_every_kind_of_drift_is_repaired_by_the_periodic_pass(
    reconciling_app: ProcqueueApp, database: str
) -> None:
    app = reconciling_app
    [periodic] = [task for task in app.periodic_registry.periodic_tasks.values()
                  if task.task.name == RECONCILE.task_name]  # fmt: skip
    assert periodic.cron == NEVER_DURING_A_TEST  # registered on PROCQUEUE_RECONCILE_CRON
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as db:
        await db.execute("INSERT INTO auth.users (id) VALUES (%s)", [SELLER_ID])
        await db.execute(
            "INSERT INTO listings (user_id, title) "
            "SELECT %s, 'row ' || g FROM generate_series(1, 100) AS g",
            [SELLER_ID],
        )
        await drain(app)
        ids = sorted(await table_documents(database, LISTING))
        search = search_index(app.services)
        alias = search.alias(LISTING)
        lost, edited, cancelled = ids[3], ids[50], ids[97]
        await search.client.delete(index=alias, id=lost, refresh=True)
        await search.client.update(index=alias, id=edited, doc={"title": "edited behind"})
        # A row deleted while its delete was lost: a document without a row.
        await search.client.index(index=alias, id=str(uuid.uuid4()), document={"title": "extra"})
        # A change an admin deleted before its drain job took it.
        await db.execute("UPDATE listings SET title = 'changed' WHERE id = %s", [cancelled])
        await db.execute("DELETE FROM procqueue.sync_changes WHERE entity_id = %s", [cancelled])
        # Only behind, not drifted: its change waits; the reconciliation leaves it be.
        behind = ids[10]
        await db.execute("UPDATE listings SET title = 'behind' WHERE id = %s", [behind])
        assert behind in await waiting_changes(db, LISTING)
        assert await indexed_documents(app, LISTING) != await table_documents(database, LISTING)

        await reconcile_once(app)  # rows 1-40: `lost` and `behind` are among them
        assert (await cursor(database))[0] == ids[39]
        jobs = await (
            await db.execute(
                "SELECT lock, count(*) FROM procrastinate.procrastinate_jobs "
                "WHERE status = 'todo' AND lock = ANY(%s) GROUP BY lock ORDER BY lock",
                [[f"listing:{lost}", f"listing:{behind}"]],
            )
        ).fetchall()
        assert jobs == [(f"listing:{lost}", 1)]
        await drain(app)
        assert lost in await indexed_documents(app, LISTING)
        for _ in range(2):  # rows 41-80, then 81-100 and the index's ids: the pass ends
            await reconcile_once(app)
        assert (await cursor(database))[0] is None and (await cursor(database))[1] is not None
        await drain(app)
    assert await indexed_documents(app, LISTING) == await table_documents(database, LISTING)


def test_a_bad_reconcile_cron_is_one_clear_line(database: str, es_url: str) -> None:
    settings = make_settings(database, es_url, maintenance_tasks=True, reconcile_cron="often")
    with pytest.raises(ConfigError, match="PROCQUEUE_RECONCILE_CRON is not a cron expression"):
        build_app(settings)


async def test_a_document_id_the_key_cannot_hold_is_reported_extra_not_a_crash(
    reconciling_app: ProcqueueApp, database: str
) -> None:
    search = search_index(reconciling_app.services)
    await search.ensure_index(LISTING)
    alias = search.alias(LISTING)
    await search.client.index(index=alias, id="not-a-uuid", document={"title": "x"}, refresh=True)
    try:
        drift = Drift(LISTING.name)
        async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
            await check_documents(conn, search, LISTING, drift, batch_size=10)
        assert "not-a-uuid" in drift.extra
    finally:
        await search.client.delete(index=alias, id="not-a-uuid", refresh=True)
