"""TRUNCATE is synced: Supabase grants it to `authenticated` by default, and it fires
no row or DELETE trigger. A statement trigger enqueues `<entity>:truncate`, which
deletes every document whose row is gone; the images of the truncated rows are
cleaned up as if the rows had been deleted."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

from procqueue.engine.app import ProcqueueApp
from procqueue.entities import INVENTORY, LISTING
from procqueue.search.jobs import truncate_job
from tests.conftest import make_settings
from tests.support.cloudinary_server import CloudinaryServer
from tests.support.supabase import act_as_api_user
from tests.support.worker import (
    SELLER_ID,
    app_with,
    drain,
    indexed_documents,
    job_counts,
    table_documents,
)


@pytest.fixture(scope="module")
async def app(dsn: str, es_url: str, cloud: CloudinaryServer) -> AsyncIterator[ProcqueueApp]:
    settings = make_settings(
        dsn, es_url, cloudinary_url=cloud.credentials_url(), cloudinary_upload_prefix=cloud.url
    )
    async with app_with(settings) as application:
        yield application


def image(name: str) -> tuple[str, str]:
    """(public id, delivery URL) of an image in a folder cleanup may delete from."""
    public_id = f"listings/t{uuid.uuid4().hex[:8]}/{name}"
    return public_id, f"https://res.cloudinary.com/demo/image/upload/v1712345678/{public_id}.jpg"


async def insert_listings(db: psycopg.AsyncConnection[Any], count: int, **columns: Any) -> None:
    await db.execute(
        "INSERT INTO listings (user_id, title, main_image_url, inventory_item_id) "
        "SELECT %s, 'ilan ' || n, %s, %s FROM generate_series(1, %s) AS n",
        [SELLER_ID, columns.get("main_image_url"), columns.get("inventory_item_id"), count],
    )


async def insert_item(db: psycopg.AsyncConnection[Any], main_image_url: str | None = None) -> str:
    cursor = await db.execute(
        "INSERT INTO inventory_items (user_id, name, main_image_url) "
        "VALUES (%s, 'eşya', %s) RETURNING id::text",
        [SELLER_ID, main_image_url],
    )
    row = await cursor.fetchone()
    assert row is not None
    return str(row[0])


@contextlib.asynccontextmanager
async def as_authenticated(dsn: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await act_as_api_user(conn, "authenticated", SELLER_ID)
        yield conn


async def everything(app: ProcqueueApp, dsn: str) -> None:
    """Drain until no job is due: a truncate job enqueues the sync jobs that delete."""
    for _ in range(5):
        await drain(app, queues=["sync", "images"])
        if not (await job_counts(dsn)).get("todo", 0):
            return
    raise AssertionError("jobs are still waiting after five drains")


async def test_truncate_cascade_by_authenticated_empties_both_indexes(
    app: ProcqueueApp, dsn: str, db: psycopg.AsyncConnection[Any]
) -> None:
    item = await insert_item(db)
    await insert_listings(db, 3, inventory_item_id=item)
    await everything(app, dsn)
    assert len(await indexed_documents(app, LISTING)) >= 3

    async with as_authenticated(dsn) as api:
        await api.execute("TRUNCATE inventory_items CASCADE")
    await everything(app, dsn)

    assert await indexed_documents(app, LISTING) == {}
    assert await indexed_documents(app, INVENTORY) == {}


async def test_rows_written_after_the_truncate_stay_indexed(
    app: ProcqueueApp, dsn: str, db: psycopg.AsyncConnection[Any]
) -> None:
    await insert_listings(db, 4)
    await everything(app, dsn)
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        async with conn.transaction():
            await conn.execute("TRUNCATE listings")
            await insert_listings(conn, 2)  # in the truncating transaction itself
    await insert_listings(db, 1)  # and after it, before its job ran

    await everything(app, dsn)

    assert await indexed_documents(app, LISTING) == await table_documents(dsn, LISTING)
    assert len(await table_documents(dsn, LISTING)) == 3


async def test_a_rolled_back_truncate_enqueues_nothing(
    app: ProcqueueApp, dsn: str, db: psycopg.AsyncConnection[Any]
) -> None:
    spec = truncate_job(LISTING)
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        await conn.execute("TRUNCATE listings")
        await conn.rollback()
    cursor = await db.execute(
        "SELECT count(*) FROM procrastinate.procrastinate_jobs "
        "WHERE task_name = %s AND status = 'todo'",
        [spec.task_name],
    )
    assert await cursor.fetchone() == (0,)


async def test_truncating_deletes_the_rows_images_but_not_one_another_table_uses(
    app: ProcqueueApp, dsn: str, db: psycopg.AsyncConnection[Any], cloud: CloudinaryServer
) -> None:
    (gone_id, gone), (shared_id, shared) = image("gone"), image("shared")
    cloud.store(gone_id, shared_id)
    await insert_item(db, shared)
    await insert_listings(db, 2, main_image_url=gone)
    await insert_listings(db, 1, main_image_url=shared)

    async with as_authenticated(dsn) as api:
        await api.execute("TRUNCATE listings")
    await everything(app, dsn)

    assert not cloud.stored(gone_id)
    assert cloud.stored(shared_id), "an image an inventory item still uses was deleted"
