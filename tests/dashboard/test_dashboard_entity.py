"""The dashboard's row page (`/entities/<entity>/<id>`, issue 24): the story
`procqueue why` tells, reached from the search box, a job's row link and a waiting
change's notice; signed in only; errors as a page with a status, not a traceback."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import psycopg
import pytest

from procqueue.dashboard.security import access_for
from procqueue.engine.app import ProcqueueApp
from procqueue.features import Settings
from tests.conftest import make_settings
from tests.support.dashboard import dashboard_client, sign_in
from tests.support.worker import SELLER_ID, drain, row_jobs_instead

SECRET = "row-secret-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def settings(database: str, es_url: str) -> Settings:
    return make_settings(database, es_url, dashboard_secret=SECRET)


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with dashboard_client(settings, access_for(settings, "0.0.0.0", False)) as http:
        yield http


def verdict(html: str) -> str:
    found = re.search(r'data-testid="verdict" data-kind="([a-z_]+)"', html)
    assert found, html
    return found.group(1)


async def test_the_row_page_tells_the_story_and_is_linked_from_jobs_and_the_search_box(
    app: ProcqueueApp, client: httpx.AsyncClient, db: psycopg.AsyncConnection[Any],
    database: str,
) -> None:  # fmt: skip
    listing_id = str(uuid.uuid4())
    page = f"/entities/listing/{listing_id}"
    signed_out = await client.get(page)
    assert signed_out.status_code == 303 and signed_out.headers["location"].startswith("/login")

    await db.execute(
        "INSERT INTO listings (id, user_id, title) VALUES (%s, %s, 'on the page')",
        [listing_id, SELLER_ID],
    )
    assert (await sign_in(client, "alice", SECRET)).status_code == 303
    # A waiting change's notice in the jobs list links to the row.
    jobs = await client.get("/jobs", params={"entity": listing_id})
    assert f'href="{page}"' in jobs.text
    # The search box leads to the page.
    searched = await client.get("/entities", params={"entity": "listing", "id": listing_id})
    assert searched.status_code == 303 and searched.headers["location"] == page
    queued = await client.get(page)
    assert queued.status_code == 200 and verdict(queued.text) == "queued"
    assert 'data-testid="document">in ' not in queued.text  # no document yet
    assert "none waiting" not in queued.text  # its change waits

    # A row job's row link, in the jobs list and on the job page.
    await row_jobs_instead(database, [listing_id])
    jobs = await client.get("/jobs", params={"entity": listing_id})
    job_id = re.search(r'data-testid="row-link-(\d+)" title="where is this row\?"', jobs.text)
    assert job_id is not None and f'href="{page}"' in jobs.text
    job_page = await client.get(f"/jobs/{job_id.group(1)}")
    assert f'<a href="{page}" data-testid="row-link">' in job_page.text

    await drain(app)
    in_sync = await client.get(page)
    assert verdict(in_sync.text) == "in_sync" and "in sync, nothing to do" in in_sync.text
    assert "procqueue why listing " + listing_id in in_sync.text

    unknown = await client.get(f"/entities/shoe/{listing_id}")
    assert unknown.status_code == 404 and "unknown entity &#39;shoe&#39;" in unknown.text
    malformed = await client.get("/entities/listing/not-a-uuid")
    assert malformed.status_code == 400 and "is not a key of public.listings" in malformed.text
    nowhere = await client.get(f"/entities/listing/{uuid.uuid4()}")
    assert nowhere.status_code == 404 and "not found" in nowhere.text
    assert (await client.get("/entities")).status_code == 200
