"""The Queues and Workers pages over HTTP: signed out they show nothing; each queue
with its counts, state, workers and a pause or resume button; pausing and resuming
through POST (CSRF, audited as `pause_queue`/`resume_queue` with the admin's name);
the overview shows a paused queue at the top; the Workers page shows who each worker
is; a job's page names the worker (host, pid) that ran it."""

from __future__ import annotations

import html
import os
import re
import socket
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from procqueue.dashboard.security import access_for
from procqueue.engine.app import ProcqueueApp
from procqueue.features import Settings
from tests.conftest import make_settings
from tests.support import tasks
from tests.support.dashboard import (
    audit_rows,
    csrf_from,
    dashboard_client,
    job_status,
    signed_in_admin,
)
from tests.support.worker import eventually, running_worker

SECRET = "queues-secret-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def settings(database: str, es_url: str) -> Settings:
    return make_settings(database, es_url, dashboard_secret=SECRET, heartbeat_interval=0.1)


@pytest.fixture(scope="module")
async def app(settings: Settings) -> AsyncIterator[ProcqueueApp]:
    async with tasks.opened_app(settings) as application:
        yield application


@pytest.fixture
async def admin(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with signed_in_admin(settings, SECRET) as client:
        yield client


async def post(client: httpx.AsyncClient, url: str, **fields: str) -> httpx.Response:
    token = csrf_from((await client.get("/queues")).text)
    return await client.post(url, data={"csrf_token": token, "back": "/queues", **fields})


def row_of(page: str, queue: str) -> str:
    start = page.index(f'<tr data-queue="{queue}">')
    return page[start : page.index("</tr>", start)]


def cells(row: str) -> list[str]:
    """The text of a table row's cells, tags removed."""
    found = re.findall(r"<td[^>]*>(.*?)</td>", row, flags=re.DOTALL)
    return [" ".join(html.unescape(re.sub(r"<[^>]+>", "", cell)).split()) for cell in found]


def worker_rows(page: str) -> list[list[str]]:
    return [cells(row) for row in re.findall(r"<tr data-worker=.*?</tr>", page, flags=re.DOTALL)]


async def test_signed_out_the_pages_and_actions_show_and_do_nothing(settings: Settings) -> None:
    async with dashboard_client(settings, access_for(settings, "0.0.0.0", False)) as client:
        for url in ("/queues", "/workers"):
            response = await client.get(url)
            assert response.status_code == 303
            assert response.headers["location"].startswith("/login?next=")
        refused = await client.post("/queues/pause", data={"queue": "tests"})
        assert refused.status_code == 401


async def test_pause_and_resume_from_the_queues_page(
    app: ProcqueueApp, admin: httpx.AsyncClient, database: str
) -> None:
    queue = f"web-{uuid.uuid4().hex[:6]}"
    task = app.configure_task("test:flaky", queue=queue)
    for _ in range(2):
        await task.defer_async(failures=0)

    page = (await admin.get("/queues")).text
    row = row_of(page, queue)
    assert 'data-testid="state-' + queue + '">active<' in row
    assert f'<a href="/jobs?queue={queue}&amp;state=todo">2</a>' in row
    assert f'data-testid="pause-{queue}"' in row
    for feature_queue in ("sync", "notifications", "maintenance"):  # before any job
        assert f'<tr data-queue="{feature_queue}">' in page

    no_token = await admin.post("/queues/pause", data={"queue": queue})
    assert no_token.status_code == 403

    paused = await post(admin, "/queues/pause", queue=queue, reason="reindexing")
    assert paused.status_code == 303 and paused.headers["location"] == "/queues"
    page = (await admin.get("/queues")).text
    assert f"queue &#39;{queue}&#39; paused: workers take none of its jobs" in page  # the flash
    row = row_of(page, queue)
    assert ">paused<" in row and "by alice: reindexing" in row
    assert f'data-testid="resume-{queue}"' in row
    assert 'data-testid="paused-banner"' in page

    overview = (await admin.get("/overview/panel")).text
    banner = overview[overview.index('data-testid="paused-banner"') :]
    assert f">{queue}</a>" in banner[: banner.index("</div>")]
    assert "2 waiting" in banner[: banner.index("</div>")]

    again = await post(admin, "/queues/pause", queue=queue)
    assert again.status_code == 303
    assert "is already paused" in html.unescape((await admin.get("/queues")).text)

    unknown = await post(admin, "/queues/pause", queue="no-such-queue\x00")
    assert unknown.status_code == 303
    assert "'no-such-queue\\x00' is unknown" in html.unescape((await admin.get("/queues")).text)

    resumed = await post(admin, "/queues/resume", queue=queue)
    assert resumed.status_code == 303
    page = (await admin.get("/queues")).text
    assert f"queue &#39;{queue}&#39; resumed (paused since " in page
    assert ">active<" in row_of(page, queue)
    assert 'data-testid="paused-banner"' not in page

    audited = [
        (row["action"], row["actor"], row["target"], row["remote_addr"])
        for row in await audit_rows(database)
        if row["action"].endswith("_queue")
    ]
    assert audited == [
        ("pause_queue", "alice", {"queue": queue, "reason": "reindexing"}, "127.0.0.1"),
        ("pause_queue", "alice", {"queue": queue}, "127.0.0.1"),
        ("pause_queue", "alice", {"queue": "no-such-queue\\x00"}, "127.0.0.1"),
        ("resume_queue", "alice", {"queue": queue}, "127.0.0.1"),
    ]


async def test_the_workers_page_and_the_job_page_say_who_runs_what(
    app: ProcqueueApp, admin: httpx.AsyncClient, database: str
) -> None:
    empty = (await admin.get("/workers")).text
    assert "No worker registered" in empty and worker_rows(empty) == []
    async with running_worker(app, name="web-worker", concurrency=4, queues=["tests"]):
        job_id: int = await app.configure_task("test:flaky").defer_async(failures=0)

        async def counted() -> bool:
            rows = worker_rows((await admin.get("/workers")).text)
            return len(rows) == 1 and len(rows[0]) == 11 and rows[0][7] == "1"  # jobs done

        await eventually(counted)
        [row] = worker_rows((await admin.get("/workers")).text)
        assert row[0].endswith(" web-worker")
        assert row[1:6] == [socket.gethostname(), str(os.getpid()), "tests", "4", "LISTEN/NOTIFY"]
        assert row[6].endswith("ago)") and row[8] == "0" and row[10] == "alive"
        assert await job_status(database, job_id) == "succeeded"

        job_page = (await admin.get(f"/jobs/{job_id}")).text
        shown = job_page[job_page.index('data-testid="job-worker"') :]
        assert shown.startswith(
            f'data-testid="job-worker"><a href="/workers">{socket.gethostname()}, '
            f"pid {os.getpid()}</a>"
        )
        queue_row = cells(row_of((await admin.get("/queues")).text, "tests"))
        assert queue_row[6:8] == ["1", "4"]  # one worker takes it, with 4 slots
    assert "No worker registered" in (await admin.get("/workers")).text
