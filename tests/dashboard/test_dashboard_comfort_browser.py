"""Comfort in a real headless Chromium (issue 25): the dark theme follows the system's
prefers-color-scheme and the header's toggle (remembered, applied before the page is
painted), and on a phone (390 x 844) job rows are compact cards. Screenshots
(theme-light, theme-dark, jobs-phone) go where test_dashboard_browser.py puts its."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Browser, Page, ViewportSize, expect

from procqueue.dashboard.security import access_for
from procqueue.engine.app import ProcqueueApp
from procqueue.features import Settings
from tests.conftest import make_settings
from tests.support import tasks
from tests.support.browser import chromium, require_chromium, shoot
from tests.support.dashboard import served
from tests.support.gotrue_server import gotrue_server
from tests.support.worker import drain

require_chromium()

LIGHT_BACKGROUND = "rgb(247, 248, 250)"
DARK_BACKGROUND = "rgb(16, 22, 28)"
PHONE: ViewportSize = {"width": 390, "height": 844}
BACKGROUND = "getComputedStyle(document.body).backgroundColor"
#: Records the theme at the moment <body> first exists, before anything is painted.
THEME_AT_FIRST_BODY = """
window.themeAtFirstBody = null;
new MutationObserver((records, observer) => {
  if (!document.body) return;
  window.themeAtFirstBody = [document.documentElement.getAttribute("data-theme"),
                             getComputedStyle(document.body).backgroundColor];
  observer.disconnect();
}).observe(document, {childList: true, subtree: true});
"""
CARD_ROWS = """selector => [...document.querySelectorAll(selector)].map(row => {
    const box = row.getBoundingClientRect();
    return [box.height, box.left, box.right];
})"""


@pytest.fixture(scope="module")
async def app(settings: Settings) -> AsyncIterator[ProcqueueApp]:
    async with tasks.opened_app(settings) as application:
        for n in range(4):
            await application.configure_task("test:flaky").defer_async(failures=n % 2)
        for n in range(2):
            reason = f"listing {n} has a price the index refuses: " + "very long detail " * 20
            await application.configure_task("test:broken").defer_async(reason=reason)
        await drain(application)
        later = application.configure_task("test:flaky", schedule_in={"hours": 2})
        await later.defer_async(failures=0, message="a long message " * 30)
        yield application


@pytest.fixture(scope="module")
async def base(app: ProcqueueApp, database: str, es_url: str) -> AsyncIterator[str]:
    local = make_settings(database, es_url)  # --local-only: no sign-in to go through
    async with served(local, access_for(local, "127.0.0.1", True)) as url:
        yield url


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as launched:
        yield launched


async def background(page: Page) -> str:
    colour: str = await page.evaluate(BACKGROUND)
    return colour


async def test_the_theme_follows_the_system(browser: Browser, base: str) -> None:
    context = await browser.new_context(
        color_scheme="light", viewport={"width": 1280, "height": 900}
    )
    page = await context.new_page()
    await page.goto(f"{base}/")
    await expect(page.locator("#overview-panel svg").first).to_be_visible()
    assert await background(page) == LIGHT_BACKGROUND
    await shoot(page, "theme-light")
    await page.emulate_media(color_scheme="dark")
    assert await background(page) == DARK_BACKGROUND
    await expect(page.get_by_test_id("theme-toggle")).to_have_text("Light theme")
    table = await page.evaluate("getComputedStyle(document.querySelector('main table')).color")
    assert table != "rgb(29, 35, 42)"  # the text turned light with the surface
    await shoot(page, "theme-dark")
    await context.close()


async def test_the_toggle_picks_a_theme_remembered_before_the_first_paint(
    browser: Browser, base: str
) -> None:
    context = await browser.new_context(color_scheme="light")
    await context.add_init_script(THEME_AT_FIRST_BODY)
    page = await context.new_page()
    await page.goto(f"{base}/jobs")
    toggle = page.get_by_test_id("theme-toggle")
    await expect(toggle).to_have_text("Dark theme")
    assert await background(page) == LIGHT_BACKGROUND
    await toggle.click()
    assert await background(page) == DARK_BACKGROUND
    await expect(toggle).to_have_text("Light theme")
    assert await page.evaluate("localStorage.getItem('procqueue-theme')") == "dark"

    # Another page: dark from the very first <body>, so no light flash.
    await page.goto(f"{base}/failures")
    assert await page.evaluate("window.themeAtFirstBody") == ["dark", DARK_BACKGROUND]
    await expect(page.get_by_test_id("theme-toggle")).to_have_text("Light theme")

    # A light choice wins over a dark system too.
    await page.get_by_test_id("theme-toggle").click()
    await page.emulate_media(color_scheme="dark")
    await page.reload()
    assert await page.evaluate("window.themeAtFirstBody") == ["light", LIGHT_BACKGROUND]
    await context.close()


@pytest.mark.parametrize(
    ("path", "rows"),
    [("/jobs", "table.jobs tbody tr"), ("/failures", "table.failed-jobs tbody tr")],
)
async def test_on_a_phone_job_rows_are_compact_cards(
    browser: Browser, base: str, path: str, rows: str
) -> None:
    context = await browser.new_context(
        viewport=PHONE, is_mobile=True, has_touch=True, color_scheme="light"
    )
    page = await context.new_page()
    await page.goto(f"{base}{path}")
    await expect(page.locator(rows).first).to_be_visible()
    found = await page.evaluate(CARD_ROWS, rows)
    assert len(found) >= 2, found
    for height, left, right in found:
        assert height < 120, found  # a card, not a 300 px tall table row
        assert 0 <= left and right <= PHONE["width"], found
    width = await page.evaluate(
        "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
    )
    assert width[0] <= width[1], width  # nothing sticks out sideways
    await shoot(page, f"{path.strip('/')}-phone")
    await context.close()


async def test_a_viewer_signs_in_and_sees_no_button(
    browser: Browser, app: ProcqueueApp, database: str, es_url: str
) -> None:
    with gotrue_server("HS256") as gotrue:
        gotrue.add_user("viewer@example.com", "viewer password", procqueue_role="viewer")
        settings = make_settings(
            database,
            es_url,
            supabase_url=gotrue.url,
            supabase_anon_key=gotrue.anon_key,
            supabase_jwt_secret=gotrue.jwt_secret,
        )
        async with served(settings, access_for(settings, "0.0.0.0", False)) as url:
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            await page.goto(f"{url}/failures")
            await page.get_by_label("Email").fill("viewer@example.com")
            await page.get_by_label("Password").fill("viewer password")
            await page.get_by_role("button", name="Sign in").click()
            await expect(page.get_by_role("heading", name="Failures")).to_be_visible()
            await expect(page.get_by_test_id("role")).to_have_text("viewer")
            await expect(page.locator("table.failed-jobs")).to_contain_text("test:broken")
            await expect(page.locator("main button")).to_have_count(0)
            await shoot(page, "failures-viewer")
            await page.close()
