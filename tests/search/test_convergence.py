"""After the queue drains, the index equals the table, under
concurrent writers, a worker running ten jobs at once, coalescing, and micro-batches
(the default PROCQUEUE_SYNC_BATCH_SIZE: row jobs of one entity claimed and written
together, procqueue/search/batched.py)."""

from __future__ import annotations

import asyncio
import random
import uuid
from typing import Any

import psycopg

from procqueue.engine.app import ProcqueueApp
from procqueue.entities import INVENTORY, LISTING
from procqueue.search.settings import SearchSettings
from tests.support.worker import (
    SELLER_ID,
    drain,
    indexed_documents,
    running_worker,
    table_documents,
)

WRITERS = 4
OPERATIONS_PER_WRITER = 150


async def random_writer(dsn: str, seed: int, items: list[str], listings: list[str]) -> None:
    rng = random.Random(seed)
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        for step in range(OPERATIONS_PER_WRITER):
            try:
                await random_change(conn, rng, seed, step, items, listings)
            except psycopg.errors.DeadlockDetected:
                # Two writers locked an item and its listing in opposite orders:
                # Postgres rolled one back, which enqueues nothing. Go on.
                continue


async def random_change(
    conn: psycopg.AsyncConnection[Any],
    rng: random.Random,
    seed: int,
    step: int,
    items: list[str],
    listings: list[str],
) -> None:
    action = rng.random()
    if action < 0.25 or not items:
        item_id, listing_id = str(uuid.uuid4()), str(uuid.uuid4())
        # One transaction: no other writer can delete the item in between.
        async with conn.transaction():
            await conn.execute(
                "INSERT INTO inventory_items (id, user_id, name, estimated_value) "
                "VALUES (%s, %s, %s, %s)",
                [item_id, SELLER_ID, f"item {seed}-{step}", rng.randint(1, 999)],
            )
            await conn.execute(
                "INSERT INTO listings (id, user_id, title, inventory_item_id) "
                "VALUES (%s, %s, %s, %s)",
                [listing_id, SELLER_ID, f"listing {seed}-{step}", item_id],
            )
        items.append(item_id)
        listings.append(listing_id)
    elif action < 0.75:
        # Several writers hit the same few rows: a hot set of ten.
        target = rng.choice(listings[:10] if rng.random() < 0.5 else listings)
        async with conn.transaction():
            await conn.execute(
                "UPDATE listings SET title = %s, budget = %s, status = %s WHERE id = %s",
                [
                    f"t {seed}-{step}",
                    rng.randint(1, 5000),
                    rng.choice(["active", "inactive", "sold"]),
                    target,
                ],
            )
            await conn.execute(
                "UPDATE inventory_items SET estimated_value = %s WHERE id = %s",
                [rng.randint(1, 999), rng.choice(items)],
            )
    elif action < 0.9:
        await conn.execute("DELETE FROM listings WHERE id = %s", [rng.choice(listings)])
    else:
        # Deleting an item also updates its listings (ON DELETE SET NULL).
        await conn.execute("DELETE FROM inventory_items WHERE id = %s", [rng.choice(items)])


async def test_index_converges_to_table_under_concurrent_writers(
    app: ProcqueueApp, database: str, db: psycopg.AsyncConnection[Any]
) -> None:
    search_settings = app.services.settings.section(SearchSettings)
    assert search_settings.sync_batch_size > 1, "batching is on by default"
    items: list[str] = []
    listings: list[str] = []
    async with running_worker(app, concurrency=10):
        await asyncio.gather(
            *(random_writer(database, seed, items, listings) for seed in range(WRITERS))
        )
    await drain(app, concurrency=10)

    for entity in (INVENTORY, LISTING):
        expected = await table_documents(database, entity)
        assert expected, f"the writers left no {entity.name} rows"
        assert await indexed_documents(app, entity) == expected
