"""Many-row statements become `<entity>:bulk` jobs (docs/bulk.md): counts, the
documents after they run, batched image cleanup, races with per-row jobs under
concurrent writers, and per-item errors of a `_bulk` response."""

from __future__ import annotations

import asyncio
import math
import random
import uuid
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

from procqueue.app import build_app
from procqueue.engine.app import ProcqueueApp
from procqueue.entities import DEFAULT_ENTITIES, LISTING
from procqueue.search.client import search_index
from tests.conftest import make_settings
from tests.support.cloudinary_server import CloudinaryServer
from tests.support.worker import (
    SELLER_ID,
    drain,
    indexed_documents,
    running_worker,
    strict_target_without_location,
    table_documents,
    waiting_changes,
)

ALL_QUEUES = {"concurrency": 10}


@pytest.fixture(scope="module")
async def app(dsn: str, es_url: str, cloud: CloudinaryServer) -> AsyncIterator[ProcqueueApp]:
    settings = make_settings(
        dsn, es_url, cloudinary_url=cloud.credentials_url(), cloudinary_upload_prefix=cloud.url
    )
    application = build_app(settings)
    async with application.open_async():
        yield application
    await application.services.aclose()


async def last_job_id(db: psycopg.AsyncConnection[Any]) -> int:
    row = await (
        await db.execute("SELECT coalesce(max(id), 0) FROM procrastinate.procrastinate_jobs")
    ).fetchone()
    return int(row[0]) if row else 0


async def jobs_since(db: psycopg.AsyncConnection[Any], since: int) -> dict[str, int]:
    rows = await (
        await db.execute(
            "SELECT task_name, count(*) FROM procrastinate.procrastinate_jobs WHERE id > %s "
            "GROUP BY task_name",
            [since],
        )
    ).fetchall()
    return {task: count for task, count in rows}


async def insert_listings(
    db: psycopg.AsyncConnection[Any], count: int, tag: str, image_base: str | None = None
) -> None:
    image = "NULL" if image_base is None else f"'{image_base}' || g || '.jpg'"
    await db.execute(
        "INSERT INTO listings (user_id, title, category, main_image_url) "
        f"SELECT %s, 'bulk ' || g, %s, {image} FROM generate_series(1, %s) AS g",
        [SELLER_ID, tag, count],
    )


async def index_equals_table(app: ProcqueueApp, dsn: str) -> None:
    for entity in DEFAULT_ENTITIES:
        assert await indexed_documents(app, entity) == await table_documents(dsn, entity)


async def test_an_update_of_5000_listings_makes_10_bulk_jobs_and_every_document_is_current(
    app: ProcqueueApp, dsn: str, db: psycopg.AsyncConnection[Any]
) -> None:
    since = await last_job_id(db)
    await insert_listings(db, 5000, "bulk5000")
    assert await jobs_since(db, since) == {"listing:bulk": 10}
    await drain(app, **ALL_QUEUES)

    since = await last_job_id(db)
    await db.execute("UPDATE listings SET status = 'inactive' WHERE category = 'bulk5000'")
    assert await jobs_since(db, since) == {"listing:bulk": math.ceil(5000 / 500)}
    await drain(app, **ALL_QUEUES)
    documents = await indexed_documents(app, LISTING)
    assert sum(doc["status"] == "inactive" for doc in documents.values()) == 5000
    await index_equals_table(app, dsn)


async def test_small_statements_record_changes_and_ignored_columns_enqueue_nothing(
    app: ProcqueueApp, db: psycopg.AsyncConnection[Any]
) -> None:
    await drain(app, **ALL_QUEUES)
    since = await last_job_id(db)
    await insert_listings(db, 50, "small")  # one statement at the threshold: changes
    assert await jobs_since(db, since) == {"listing:drain": 1}
    assert len(await waiting_changes(db, LISTING)) == 50
    await drain(app, **ALL_QUEUES)
    since = await last_job_id(db)
    await db.execute("UPDATE listings SET view_count = view_count + 1, updated_at = now()")
    assert await jobs_since(db, since) == {}
    assert await waiting_changes(db, LISTING) == {}


async def test_a_bulk_delete_removes_the_documents_and_cleans_images_in_batches(
    app: ProcqueueApp, dsn: str, db: psycopg.AsyncConnection[Any], cloud: CloudinaryServer
) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    public_ids = [f"listings/{prefix}/p{n}" for n in range(1, 251)]
    cloud.store(*public_ids)
    base = f"https://res.cloudinary.com/demo/image/upload/v1/listings/{prefix}/p"
    await insert_listings(db, 250, prefix, image_base=base)
    await drain(app, **ALL_QUEUES)

    since = await last_job_id(db)
    await db.execute("DELETE FROM listings WHERE category = %s", [prefix])
    # One bulk job for the 250 ids, and the 250 URLs in batches of 100.
    assert await jobs_since(db, since) == {"listing:bulk": 1, "images:cleanup": 3}
    await drain(app, **ALL_QUEUES)
    assert not any(cloud.stored(public_id) for public_id in public_ids)
    documents = await indexed_documents(app, LISTING)
    assert not any(doc["category"] == prefix for doc in documents.values())
    await index_equals_table(app, dsn)


async def racing_writer(dsn: str, seed: int, tag: str, rounds: int) -> None:
    rng = random.Random(seed)
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        ids = [
            str(row[0])
            for row in await (
                await conn.execute("SELECT id FROM listings WHERE category = %s ORDER BY id", [tag])
            ).fetchall()
        ]
        for step in range(rounds):
            choice = rng.random()
            if choice < 0.3:  # a many-row statement: bulk jobs (rows locked in key order)
                await conn.execute(
                    "UPDATE listings SET budget = %s, title = %s WHERE id IN (SELECT id FROM "
                    "listings WHERE category = %s ORDER BY id FOR UPDATE)",
                    [rng.randint(1, 9999), f"bulk {seed}-{step}", tag],
                )
            elif choice < 0.85:  # single rows of the same set: per-row jobs
                await conn.execute(
                    "UPDATE listings SET title = %s, status = %s WHERE id = %s",
                    [f"row {seed}-{step}", rng.choice(["active", "sold"]), rng.choice(ids)],
                )
            elif choice < 0.95:
                await conn.execute("DELETE FROM listings WHERE id = %s", [rng.choice(ids)])
            else:
                await conn.execute(
                    "INSERT INTO listings (user_id, title, category) VALUES (%s, 'new', %s)",
                    [SELLER_ID, tag],
                )
            await asyncio.sleep(0)


async def test_bulk_and_per_row_jobs_racing_on_the_same_rows_converge(
    app: ProcqueueApp, dsn: str, db: psycopg.AsyncConnection[Any]
) -> None:
    tag = f"race{uuid.uuid4().hex[:6]}"
    await insert_listings(db, 120, tag)
    await drain(app, **ALL_QUEUES)
    async with running_worker(app, concurrency=10):
        await asyncio.gather(*(racing_writer(dsn, seed, tag, 60) for seed in range(4)))
    await drain(app, **ALL_QUEUES)
    await index_equals_table(app, dsn)


async def test_one_refused_item_is_recorded_and_the_other_499_are_indexed(
    app: ProcqueueApp, dsn: str, db: psycopg.AsyncConnection[Any]
) -> None:
    """A reindex target whose strict mapping lacks `location` (say, deployed before
    the column existed) refuses exactly the one listing that has a location."""
    search = search_index(app.services)
    async with strict_target_without_location(app, db) as target:
        tag = f"one{uuid.uuid4().hex[:6]}"
        await insert_listings(db, 500, tag)
        await db.execute(
            "UPDATE listings SET location = 'İzmir' WHERE id = "
            "(SELECT id FROM listings WHERE category = %s ORDER BY id LIMIT 1)",
            [tag],
        )
        [bad] = await (
            await db.execute(
                "SELECT id::text FROM listings WHERE category = %s AND location IS NOT NULL",
                [tag],
            )
        ).fetchall()
        await drain(app, **ALL_QUEUES)
        await search.client.indices.refresh(index=target)
        counted = await search.client.count(index=target, query={"term": {"category": tag}})
        assert counted["count"] == 499
        errors = await (
            await db.execute(
                "SELECT entity_id, index_name, status, reason FROM procqueue.sync_item_errors "
                "WHERE entity_id = %s",
                [bad[0]],
            )
        ).fetchall()
        assert errors and {(e[1], e[2]) for e in errors} == {(target, 400)}
        assert "strict" in errors[0][3]
        # The alias (with location mapped) got all 500, the bad one included.
        await index_equals_table(app, dsn)


async def test_a_many_row_update_of_primary_keys_moves_every_document(
    app: ProcqueueApp, dsn: str, db: psycopg.AsyncConnection[Any]
) -> None:
    await db.execute(
        "INSERT INTO listings (user_id, title, category) "
        "SELECT %s, 'rekeyed ' || g, 'rekey' FROM generate_series(1, 60) AS g",
        [SELLER_ID],
    )
    await drain(app, **ALL_QUEUES)
    await db.execute("UPDATE listings SET id = gen_random_uuid() WHERE category = 'rekey'")
    await drain(app, **ALL_QUEUES)
    assert await indexed_documents(app, LISTING) == await table_documents(dsn, LISTING)
