"""Cleanup end to end with a percent-encoded `..` in an image URL (issue 22): the
real trigger, worker and `cloudinary` SDK against the loopback Admin API server.
The asset the decoded public id climbs to is never named in a delete call."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

from procqueue.engine.app import ProcqueueApp
from tests.images.test_image_cleanup import (
    IMAGES,
    cleanup_jobs,
    fresh,
    image_settings,
    insert_listing,
    last_job_id,
    url,
)
from tests.support.cloudinary_server import CloudinaryServer
from tests.support.worker import app_with, drain


@pytest.fixture(scope="module")
async def app(dsn: str, es_url: str, cloud: CloudinaryServer) -> AsyncIterator[ProcqueueApp]:
    async with app_with(image_settings(dsn, es_url, cloud)) as application:
        yield application


async def test_a_deleted_listing_whose_url_climbs_out_of_its_folder_deletes_only_its_own(
    app: ProcqueueApp, db: psycopg.AsyncConnection[Any], cloud: CloudinaryServer
) -> None:
    avatar = f"avatars/ceo_{uuid.uuid4().hex[:6]}"
    climbing = f"listings/../{avatar}"  # what the URL decodes to: it starts with listings/
    [own] = fresh("own")
    cloud.store(avatar, climbing, own)
    sneaky = url(f"listings%2F..%2F{avatar}")
    since = await last_job_id(db)
    listing = await insert_listing(db, sneaky, [url(own)])
    await db.execute("DELETE FROM listings WHERE id = %s", [listing])
    await drain(app, **IMAGES)

    assert [job["status"] for job in await cleanup_jobs(db, since)] == ["succeeded"]
    assert cloud.calls_for([climbing, avatar]) == [], "a delete call named the climbing id"
    assert cloud.stored(avatar) and cloud.stored(climbing)
    assert not cloud.stored(own)  # the same job still deleted the listing's own image
