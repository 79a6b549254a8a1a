"""The Charts page in a real headless Chromium at desktop and phone widths:
hovering a bar or a point shows its bucket's time and values at once, and the
page fits the phone's width. Screenshots (charts.png, charts-phone.png) go where
tests/support/browser.py puts them: PROCQUEUE_SCREENSHOTS_DIR=docs/screenshots."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from datetime import datetime

import psycopg
import pytest
from playwright.async_api import Page, expect

from procqueue.app import build_app
from procqueue.dashboard.security import access_for
from procqueue.features import Settings
from procqueue.queue.chart_history import record_chart_history
from tests.conftest import make_settings
from tests.support import tasks
from tests.support.browser import chromium, require_chromium, shoot
from tests.support.chart_history import write_history
from tests.support.dashboard import served
from tests.support.worker import drain

require_chromium()

SECRET = "charts-browser-" + uuid.uuid4().hex
VIEWPORTS = {"charts": (1280, 800), "charts-phone": (390, 844)}


@pytest.fixture(scope="module")
async def settings(database: str, es_url: str) -> AsyncIterator[Settings]:
    """A known history in queue `alpha`, real jobs in queue `tests`, one maintenance pass."""
    settings = make_settings(database, es_url, dashboard_secret=SECRET)
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        await write_history(conn)
    application = build_app(settings)
    tasks.register(application)
    async with application.open_async():
        for failures in (0, 1, 0, 2):
            await application.configure_task("test:flaky").defer_async(failures=failures)
        await drain(application, queues=["tests"])
        await record_chart_history(application.pool, time.monotonic() + 60)
    yield settings


async def bucket_start(database: str, hours_ago: float) -> datetime:
    from tests.support.chart_history import bucket_start as start_of

    async with await psycopg.AsyncConnection.connect(database) as conn:
        return await start_of(conn, hours_ago)


async def hover_titled(page: Page, chart: str, selector: str, starts_with: str) -> None:
    """Hover the element of `chart` (a data-testid) whose <title> starts so."""
    items = page.locator(f'[data-testid="{chart}"] svg {selector}')
    titles = await items.evaluate_all(
        "nodes => nodes.map(n => (n.querySelector(':scope > title') || {}).textContent || '')"
    )
    index = next(i for i, title in enumerate(titles) if title.startswith(starts_with))
    target = items.nth(index)
    if selector == "g":
        target = target.locator("rect").first
    await target.hover()


@pytest.mark.parametrize("name", VIEWPORTS)
async def test_hovering_a_bar_or_a_point_shows_its_tooltip(
    settings: Settings, database: str, name: str
) -> None:
    width, height = VIEWPORTS[name]
    label = (await bucket_start(database, 5)).strftime("%m-%d %H:%M")
    async with (
        served(settings, access_for(settings, "127.0.0.1", False)) as base,
        chromium() as browser,
    ):
        page = await browser.new_page(viewport={"width": width, "height": height})
        await page.goto(f"{base}/")
        await page.get_by_label("Your name").fill("alice")
        await page.get_by_label("Admin secret").fill(SECRET)
        await page.get_by_role("button", name="Sign in").click()
        await page.get_by_test_id("queue-charts").first.click()  # overview → a queue's charts
        await expect(page.locator("h1")).to_contain_text("queue")
        await page.get_by_role("link", name="last day").click()
        await page.get_by_label("Queue").select_option("alpha")
        await page.get_by_role("button", name="Show").click()
        await expect(page.locator("h1")).to_contain_text("alpha")
        tip = page.locator(".chart-tip")
        await expect(tip).to_be_hidden()

        await hover_titled(page, "chart-throughput", "g", f"{label}: ")
        await expect(tip).to_be_visible()
        await expect(tip).to_have_text(f"{label}: 4 succeeded, 1 retried, 1 failed")
        box = await tip.bounding_box()
        assert box is not None and 0 <= box["x"] and box["x"] + box["width"] <= width

        await hover_titled(page, "chart-durations", "rect.hit", f"{label}: ")
        await expect(tip).to_contain_text(f"{label}: p50 ")
        await expect(tip).to_contain_text(", p95 1.7")  # 1.75 s, between the 1 and 2 s
        await hover_titled(page, "chart-errors", "circle", f"{label}: ")
        await expect(tip).to_have_text(f"{label}: 33% of 6 attempts failed")

        scroll_width = await page.evaluate("document.documentElement.scrollWidth")
        assert scroll_width <= width, "the page is wider than the screen"
        await hover_titled(page, "chart-throughput", "g", f"{label}: ")
        await expect(tip).to_be_visible()
        await shoot(page, name)
