"""Row changes reach the index: create, update, delete, rollback, coalescing."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg

from procqueue.engine.app import ProcqueueApp
from procqueue.entities import INVENTORY, LISTING
from procqueue.search.client import search_index
from procqueue.search.jobs import drain_job
from tests.support.worker import SELLER_ID, drain, indexed_documents, job_counts, waiting_changes


async def document(app: ProcqueueApp, entity_alias: str, entity_id: str) -> dict[str, Any] | None:
    search = search_index(app.services)
    client, alias = search.client, search.prefix + entity_alias
    found = await client.options(ignore_status=404).get(index=alias, id=entity_id)
    return found["_source"] if found.get("found") else None


async def test_inventory_create_update_delete_reach_the_index(
    app: ProcqueueApp, db: psycopg.AsyncConnection
) -> None:
    item_id = str(uuid.uuid4())
    await db.execute(
        "INSERT INTO inventory_items (id, user_id, name, category, estimated_value, "
        "additional_image_urls) VALUES (%s, %s, 'Bisiklet', 'sports', 120.50, "
        "'{https://res.cloudinary.com/demo/image/upload/a.jpg}')",
        [item_id, SELLER_ID],
    )
    await drain(app)
    doc = await document(app, INVENTORY.index, item_id)
    assert doc is not None
    assert doc["name"] == "Bisiklet"
    assert doc["category"] == "sports"
    assert doc["estimated_value"] == 120.5
    assert doc["user_id"] == SELLER_ID
    assert doc["additional_image_urls"] == ["https://res.cloudinary.com/demo/image/upload/a.jpg"]

    await db.execute(
        "UPDATE inventory_items SET name = 'Kırmızı bisiklet', estimated_value = 99 WHERE id = %s",
        [item_id],
    )
    await drain(app)
    doc = await document(app, INVENTORY.index, item_id)
    assert doc is not None
    assert (doc["name"], doc["estimated_value"]) == ("Kırmızı bisiklet", 99.0)

    await db.execute("DELETE FROM inventory_items WHERE id = %s", [item_id])
    await drain(app)
    assert await document(app, INVENTORY.index, item_id) is None


async def test_listing_create_update_delete_reach_the_index(
    app: ProcqueueApp, db: psycopg.AsyncConnection
) -> None:
    listing_id = str(uuid.uuid4())
    await db.execute(
        "INSERT INTO listings (id, user_id, title, budget, location) "
        "VALUES (%s, %s, 'Satılık masa', 250, 'İzmir')",
        [listing_id, SELLER_ID],
    )
    await drain(app)
    doc = await document(app, LISTING.index, listing_id)
    assert doc is not None
    assert (doc["title"], doc["budget"], doc["location"], doc["status"]) == (
        "Satılık masa", 250.0, "İzmir", "pending_approval"
    )  # fmt: skip

    await db.execute(
        "UPDATE listings SET status = 'active', title = 'Masa' WHERE id = %s", [listing_id]
    )
    await drain(app)
    doc = await document(app, LISTING.index, listing_id)
    assert doc is not None
    assert (doc["status"], doc["title"]) == ("active", "Masa")

    await db.execute("DELETE FROM listings WHERE id = %s", [listing_id])
    await drain(app)
    assert await document(app, LISTING.index, listing_id) is None


async def test_index_is_created_behind_a_versioned_alias(
    app: ProcqueueApp, db: psycopg.AsyncConnection
) -> None:
    await db.execute(
        "INSERT INTO listings (user_id, title) VALUES (%s, 'first of its index')", [SELLER_ID]
    )
    await drain(app)  # the first sync creates the index
    search = search_index(app.services)
    aliases = await search.client.indices.get_alias(name=search.alias(LISTING))
    assert list(aliases) == [search.versioned_name(LISTING, 1)]
    mapping = await search.client.indices.get_mapping(index=search.alias(LISTING))
    properties = mapping[search.versioned_name(LISTING, 1)]["mappings"]["properties"]
    assert properties["status"]["type"] == "keyword"
    assert properties["budget"]["type"] == "double"


async def test_rolled_back_transaction_enqueues_nothing(
    app: ProcqueueApp, database: str, db: psycopg.AsyncConnection
) -> None:
    before = await job_counts(database)
    changes = await waiting_changes(db, LISTING)
    async with await psycopg.AsyncConnection.connect(database) as conn:
        await conn.execute(
            "INSERT INTO listings (user_id, title) VALUES (%s, 'never committed')", [SELLER_ID]
        )
        await conn.execute("UPDATE listings SET title = title || '!'")
        await conn.rollback()
    assert await job_counts(database) == before
    assert await waiting_changes(db, LISTING) == changes


async def test_committed_change_enqueues_in_the_same_transaction(
    database: str, db: psycopg.AsyncConnection
) -> None:
    async with await psycopg.AsyncConnection.connect(database) as conn:
        row = await (
            await conn.execute(
                "INSERT INTO listings (user_id, title) VALUES (%s, 'x') RETURNING id", [SELLER_ID]
            )
        ).fetchone()
        assert row is not None
        # Visible to the writer's own transaction before commit: same transaction.
        assert str(row[0]) in await waiting_changes(conn, LISTING)
        job = await (
            await conn.execute(
                "SELECT task_name, args FROM procrastinate.procrastinate_jobs "
                "WHERE lock = %s AND status = 'todo'",
                [drain_job(LISTING).task_name],
            )
        ).fetchone()
        assert job == ("listing:drain", {})
        await conn.commit()


async def test_burst_of_updates_coalesces_into_one_job(
    app: ProcqueueApp, database: str, db: psycopg.AsyncConnection
) -> None:
    await drain(app)
    listing_id = str(uuid.uuid4())
    await db.execute(
        "INSERT INTO listings (id, user_id, title) VALUES (%s, %s, 'v0')", [listing_id, SELLER_ID]
    )
    for version in range(1, 101):
        await db.execute(
            "UPDATE listings SET title = %s WHERE id = %s", [f"v{version}", listing_id]
        )
    assert await waiting_changes(db, LISTING) == {listing_id: 1}
    pending = await (
        await db.execute(
            "SELECT task_name, count(*) FROM procrastinate.procrastinate_jobs "
            "WHERE status = 'todo' AND queue_name = %s GROUP BY 1",
            [LISTING.queue],
        )
    ).fetchall()
    assert pending == [("listing:drain", 1)]
    await drain(app)
    doc = await document(app, LISTING.index, listing_id)
    assert doc is not None and doc["title"] == "v100"


async def test_changes_to_ignored_columns_enqueue_nothing(
    app: ProcqueueApp, database: str, db: psycopg.AsyncConnection
) -> None:
    listing_id = str(uuid.uuid4())
    await db.execute(
        "INSERT INTO listings (id, user_id, title) VALUES (%s, %s, 'counted')",
        [listing_id, SELLER_ID],
    )
    await drain(app)
    assert listing_id not in await waiting_changes(db, LISTING)
    await db.execute(
        "UPDATE listings SET view_count = view_count + 1, updated_at = now() WHERE id = %s",
        [listing_id],
    )
    assert listing_id not in await waiting_changes(db, LISTING)
    await db.execute("UPDATE listings SET title = 'renamed' WHERE id = %s", [listing_id])
    assert (await waiting_changes(db, LISTING)).get(listing_id) == 1


async def test_index_holds_exactly_the_table_after_draining(
    app: ProcqueueApp, database: str
) -> None:
    from tests.support.worker import table_documents

    await drain(app)
    for entity in (INVENTORY, LISTING):
        assert await indexed_documents(app, entity) == await table_documents(database, entity)
