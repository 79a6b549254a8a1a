"""The Queues page in a real headless Chromium at desktop width: press Pause on a
queue, see its jobs wait while a worker runs (and the overview say so), press Resume
and see them run. Saves docs' screenshots (queues.png, workers.png) as
tests/dashboard/test_dashboard_browser.py does; the new pages also fit a phone's
width (their tables scroll inside their box)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from playwright.async_api import expect

from procqueue.app import build_app
from procqueue.dashboard.security import access_for
from procqueue.engine.app import ProcqueueApp
from tests.conftest import make_settings
from tests.dashboard.test_dashboard_browser import TABLE_BOXES
from tests.support import tasks
from tests.support.browser import chromium, require_chromium, shoot
from tests.support.dashboard import job_status, served
from tests.support.worker import drain, eventually, running_worker

require_chromium()


@pytest.fixture(scope="module")
async def app(database: str, es_url: str) -> AsyncIterator[ProcqueueApp]:
    application = build_app(make_settings(database, es_url, heartbeat_interval=0.2))
    tasks.register(application)
    async with application.open_async():
        yield application


async def all_status(database: str, job_ids: list[int], wanted: str) -> bool:
    return all([await job_status(database, job_id) == wanted for job_id in job_ids])


async def test_pause_then_resume_a_queue_from_the_queues_page(
    app: ProcqueueApp, database: str, es_url: str
) -> None:
    flaky = app.configure_task("test:flaky")
    await flaky.defer_async(failures=0)  # the queue "tests" exists: it has had a job
    await drain(app)
    local = make_settings(database, es_url)  # --local-only: no sign-in to go through
    async with (
        served(local, access_for(local, "127.0.0.1", True)) as base,
        chromium() as browser,
        running_worker(app, name="docs-worker", concurrency=5),
    ):
        page = await browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("dialog", lambda dialog: dialog.accept())  # "Pause queue tests?"
        await page.goto(f"{base}/")
        await page.get_by_role("link", name="Queues", exact=True).click()
        await expect(page.get_by_role("heading", name="Queues")).to_be_visible()
        row = page.locator('tr[data-queue="tests"]')
        await expect(row.get_by_test_id("state-tests")).to_have_text("active")

        await row.get_by_test_id("pause-tests").click()
        await expect(page.locator(".flash")).to_contain_text("queue 'tests' paused")
        await expect(row.get_by_test_id("state-tests")).to_have_text("paused")
        await expect(page.get_by_test_id("paused-banner")).to_contain_text("tests")

        held = [await flaky.defer_async(failures=0) for _ in range(3)]
        marker = await app.configure_task("test:flaky", queue="other").defer_async(failures=0)

        async def marker_ran() -> bool:
            return await job_status(database, marker) == "succeeded"

        await eventually(marker_ran)  # the worker fetched after them: it skipped them
        assert await all_status(database, held, "todo")
        await page.reload()
        await expect(row.locator("td").nth(2)).to_have_text("3")
        await shoot(page, "queues")

        await page.goto(f"{base}/")  # the overview says it first
        banner = page.get_by_test_id("paused-banner")
        await expect(banner).to_contain_text("1 queue paused")
        await expect(banner).to_contain_text("3 waiting")

        await page.goto(f"{base}/queues")
        await row.get_by_test_id("resume-tests").click()
        await expect(page.locator(".flash")).to_contain_text("queue 'tests' resumed")
        await expect(row.get_by_test_id("state-tests")).to_have_text("active")
        await expect(page.get_by_test_id("paused-banner")).to_have_count(0)

        async def ran() -> bool:
            return await all_status(database, held, "succeeded")

        await eventually(ran)

        await page.goto(f"{base}/workers")
        await expect(page.locator("table.workers")).to_contain_text("docs-worker")
        await expect(page.locator("table.workers")).to_contain_text("LISTEN/NOTIFY")
        await shoot(page, "workers")

        narrow = await browser.new_page(viewport={"width": 480, "height": 900})
        for path in ("/queues", "/workers"):
            await narrow.goto(f"{base}{path}")
            widths = await narrow.evaluate(
                "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
            )
            assert widths[0] <= widths[1], (path, widths)
            for right, box_right, scroll, client, overflow in await narrow.evaluate(TABLE_BOXES):
                assert right <= box_right + 1 or (overflow == "auto" and scroll > client)
