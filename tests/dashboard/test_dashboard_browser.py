"""The dashboard in a real headless Chromium (Debian's package, driven by
Playwright): sign in, see a failed job and its error, press retry, and see it
succeed once its cause is gone. Saves a screenshot of each page into a temporary
directory, or into PROCQUEUE_SCREENSHOTS_DIR when set: refresh the docs' pictures on
purpose with `PROCQUEUE_SCREENSHOTS_DIR=docs/screenshots ./scripts/test -k browser`."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import psycopg
import pytest
from playwright.async_api import Browser, async_playwright, expect

from procqueue.app import build_app
from procqueue.dashboard.security import access_for
from procqueue.engine.app import ProcqueueApp
from procqueue.features import Settings
from procqueue.search.client import search_index
from tests.conftest import make_settings
from tests.support import tasks
from tests.support.browser import CHROMIUM, CHROMIUM_ARGS, chromium, require_chromium, shoot
from tests.support.dashboard import job_status, served
from tests.support.worker import SELLER_ID, drain, eventually, running_worker

SECRET = "browser-secret-" + uuid.uuid4().hex

require_chromium()


@pytest.fixture(scope="module")
async def app(database: str, es_url: str) -> AsyncIterator[ProcqueueApp]:
    application = build_app(make_settings(database, es_url, dashboard_secret=SECRET))
    tasks.register(application)
    async with application.open_async():
        async with application.pool.connection() as conn:
            await conn.execute(tasks.SWITCHES_SQL)
        yield application


async def set_switch(dsn: str, name: str, broken: bool) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(
            "INSERT INTO public.test_switches (name, broken) VALUES (%s, %s) "
            "ON CONFLICT (name) DO UPDATE SET broken = excluded.broken",
            [name, broken],
        )


async def test_sign_in_see_the_failure_retry_and_see_it_succeed(
    app: ProcqueueApp, database: str
) -> None:
    settings = app.services.settings.section(Settings)
    # Some history for the charts, then a job that fails while its switch is broken.
    for n in range(6):
        await app.configure_task("test:flaky").defer_async(failures=n % 3)
    await set_switch(database, "partner", broken=True)
    job_id: int = await app.configure_task("test:switch").defer_async(name="partner")
    await drain(app)
    assert await job_status(database, job_id) == "failed"

    async with (
        served(settings, access_for(settings, "127.0.0.1", False)) as base,
        async_playwright() as playwright,
    ):
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            await page.goto(f"{base}/failures")
            await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
            await expect(page.locator("body")).not_to_contain_text("partner API")
            await page.get_by_label("Your name").fill("alice")
            await page.get_by_label("Admin secret").fill(SECRET)
            await shoot(page, "sign-in")
            await page.get_by_role("button", name="Sign in").click()

            # Back on the failures page: the failed job with its error.
            await expect(page.get_by_role("heading", name="Failures")).to_be_visible()
            await expect(page.locator("body")).to_contain_text(
                "the partner API rejects 'partner' (switch is broken)"
            )
            await expect(page.locator("body")).to_contain_text("PermanentError")
            await shoot(page, "failures")

            await page.goto(f"{base}/jobs/{job_id}")
            await expect(page.locator("h1")).to_contain_text("failed")
            await expect(page.locator("article.error pre")).to_contain_text("Traceback")
            await shoot(page, "job")

            await page.goto(f"{base}/")
            await expect(page.locator("#overview-panel svg").first).to_be_visible()
            await expect(page.locator("#overview-panel")).to_contain_text("tests")
            await shoot(page, "overview")

            await page.goto(f"{base}/jobs?queue=tests")
            await expect(page.locator("table.jobs")).to_contain_text("test:switch")
            await shoot(page, "jobs")

            # The cause goes away; an admin presses retry; a worker runs it.
            await set_switch(database, "partner", broken=False)
            await page.goto(f"{base}/failures")
            async with running_worker(app):
                await page.get_by_test_id(f"retry-{job_id}").click()
                await expect(page.locator(".flash")).to_contain_text("retried 1 job(s)")

                async def succeeded() -> bool:
                    return await job_status(database, job_id) == "succeeded"

                await eventually(succeeded)
            await page.goto(f"{base}/jobs/{job_id}")
            await expect(page.locator("h1 .status")).to_have_text("succeeded")
            await expect(page.locator("ol.timeline")).to_contain_text("succeeded")

            await page.goto(f"{base}/audit")
            await expect(page.locator("table")).to_contain_text("alice")
            await expect(page.locator("table")).to_contain_text("retry")
            await shoot(page, "audit")
        finally:
            await browser.close()


#: Each table and, when it is wider than the window, its scroll box: (table's
#: right edge, box's right edge, box's scrollWidth, box's clientWidth, overflow-x).
TABLE_BOXES = """() => [...document.querySelectorAll('main table')].map(table => {
    const box = table.closest('.scroll') || table.parentElement;
    return [table.getBoundingClientRect().right, box.getBoundingClientRect().right,
            box.scrollWidth, box.clientWidth, getComputedStyle(box).overflowX];
})"""


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as launched:
        yield launched


@pytest.mark.parametrize("width", [800, 480])
async def test_wide_tables_scroll_in_their_box_instead_of_being_cut_off(
    app: ProcqueueApp, browser: Browser, database: str, es_url: str, width: int
) -> None:
    job_id = await app.configure_task("test:broken").defer_async(reason="long " + "x" * 300)
    await drain(app)
    local = make_settings(database, es_url)  # --local-only: no sign-in to go through
    async with served(local, access_for(local, "127.0.0.1", True)) as base:
        page = await browser.new_page(viewport={"width": width, "height": 900})
        for path in ("/", "/jobs", f"/jobs/{job_id}", "/failures", "/audit"):
            await page.goto(f"{base}{path}")
            await expect(page.locator("main h1")).to_be_visible()
            page_width = await page.evaluate(
                "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
            )
            assert page_width[0] <= page_width[1], (path, page_width)  # nothing sticks out
            for right, box_right, scroll, client, overflow in await page.evaluate(TABLE_BOXES):
                assert right <= box_right + 1 or (overflow == "auto" and scroll > client), (
                    path, right, box_right, overflow,
                )  # fmt: skip
        # The queue table's last column is reachable: scroll its box to the end.
        await page.goto(f"{base}/")
        lag = page.locator("#overview-panel table").first.locator("th").last
        await expect(lag).to_have_text("lag")
        await lag.scroll_into_view_if_needed()
        box = await lag.bounding_box()
        assert box is not None and 0 <= box["x"] and box["x"] + box["width"] <= width, box
        await page.close()


async def test_the_search_box_reaches_a_rows_page(
    app: ProcqueueApp, browser: Browser, database: str, es_url: str
) -> None:
    """From the nav's Rows page, an entity and an id lead to that row's story."""
    listing_id = str(uuid.uuid4())
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        await conn.execute(
            "INSERT INTO auth.users (id) VALUES (%s) ON CONFLICT DO NOTHING", [SELLER_ID]
        )
        await conn.execute(
            "INSERT INTO listings (id, user_id, title) VALUES (%s, %s, 'searched for')",
            [listing_id, SELLER_ID],
        )
    await drain(app)
    prefix = search_index(app.services).prefix  # the index the app's worker wrote
    local = make_settings(database, es_url, index_prefix=prefix)
    async with served(local, access_for(local, "127.0.0.1", True)) as base:
        page = await browser.new_page()
        await page.goto(f"{base}/")
        await page.get_by_role("link", name="Rows").click()
        await page.get_by_label("Entity").select_option("listing")
        await page.get_by_label("Id").fill(listing_id)
        await page.get_by_role("button", name="Explain").click()
        await expect(page).to_have_url(f"{base}/entities/listing/{listing_id}")
        await expect(page.get_by_test_id("verdict")).to_contain_text("in sync, nothing to do")
        await shoot(page, "row")
        await page.close()
