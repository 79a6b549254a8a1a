"""The job list in a real headless Chromium, at desktop and phone widths: a filter
whose list picks up a new job by itself (live refresh), ticking rows and retrying
them, and an action on everything matching through its confirmation page. Saves
screenshots as tests/support/browser.py says (PROCQUEUE_SCREENSHOTS_DIR)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import psycopg
import pytest
from playwright.async_api import Dialog, expect
from psycopg.types.json import Jsonb

from procqueue.dashboard.security import access_for
from procqueue.engine.app import ProcqueueApp
from tests.conftest import make_settings
from tests.support import tasks
from tests.support.browser import chromium, require_chromium, shoot
from tests.support.dashboard import job_status, served
from tests.support.worker import drain

require_chromium()

#: Desktop and phone viewports (width, height).
VIEWPORTS = {"desktop": (1280, 800), "phone": (390, 844)}
#: Long enough for a few live refreshes (every 5 s) on a busy machine.
REFRESHED_WITHIN_MS = 20_000


@pytest.fixture(scope="module")
async def app(database: str, es_url: str) -> AsyncIterator[ProcqueueApp]:
    async with tasks.opened_app(make_settings(database, es_url)) as application:
        yield application


async def add_waiting(database: str, queue: str, args: dict[str, str]) -> int:
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        cursor = await conn.execute(
            "SELECT procqueue.add_job('demo:later', %s, %s, NULL, NULL, now() + interval '1 hour')",
            [Jsonb(args), queue],
        )
        row = await cursor.fetchone()
    assert row is not None
    job_id: int = row[0]
    return job_id


async def accept(dialog: Dialog) -> None:
    await dialog.accept()


@pytest.mark.parametrize("device", list(VIEWPORTS))
async def test_filter_refresh_select_retry_and_act_on_everything_matching(
    app: ProcqueueApp, database: str, es_url: str, device: str
) -> None:
    word = f"w{uuid.uuid4().hex[:8]}"
    failed = []
    for n in range(3):
        job_id: int = await app.configure_task("test:broken").defer_async(reason=f"{word} {n}")
        failed.append(job_id)
    await drain(app, queues=["tests"])
    local = make_settings(database, es_url)  # --local-only: no sign-in to go through
    width, height = VIEWPORTS[device]
    async with served(local, access_for(local, "127.0.0.1", True)) as base, chromium() as browser:
        page = await browser.new_page(viewport={"width": width, "height": height})
        page.on("dialog", accept)
        # Filter: search the word (in the failed jobs' error messages), failed only.
        await page.goto(f"{base}/jobs")
        await page.get_by_label("Search args and errors").fill(word)
        await page.locator("select[name=state]").select_option("failed")
        await page.get_by_role("button", name="Filter").click()
        rows = page.locator("#jobs-panel tr.job")
        await expect(rows).to_have_count(3)
        await expect(rows.first.locator(".state")).to_have_text("failed")

        # Live refresh: a new matching job shows up without a reload.
        await page.goto(f"{base}/jobs?q={word}")
        await expect(rows).to_have_count(3)
        newcomer = await add_waiting(database, "browser", {"note": word})
        fresh = page.locator(f'#jobs-panel tr[data-job-id="{newcomer}"]')
        await expect(fresh).to_be_visible(timeout=REFRESHED_WITHIN_MS)
        await expect(fresh.locator(".state")).to_have_text("scheduled")
        await shoot(page, f"jobs-list-{device}")

        # Tick two failed rows and retry them (the dialog states the count).
        said: list[str] = []
        page.on("dialog", lambda dialog: said.append(dialog.message))
        for job_id in failed[:2]:
            await page.get_by_test_id(f"select-{job_id}").check()
        await page.get_by_test_id("selected-retry").click()
        await expect(page.locator(".flash")).to_contain_text("retried 2 job(s)")
        assert said == ["Retry 2 selected jobs?"], said
        assert [await job_status(database, job_id) for job_id in failed] == [
            "todo", "todo", "failed",
        ]  # fmt: skip

        # Everything matching: the confirmation page states the count, then acts.
        await page.goto(f"{base}/jobs?q={word}&state=todo")
        await page.get_by_test_id("matching-cancel").click()
        await expect(page.get_by_test_id("confirm-count")).to_contain_text("3 jobs match")
        await shoot(page, f"jobs-confirm-{device}")
        await page.get_by_test_id("confirm").click()
        await expect(page.locator(".flash")).to_contain_text("cancelled 3 job(s)")
        states = [await job_status(database, job_id) for job_id in [*failed[:2], newcomer]]
        assert states == ["cancelled"] * 3
        if device == "desktop":
            await page.goto(f"{base}/jobs/{failed[2]}")
            await expect(page.get_by_test_id("timing")).to_contain_text("duration")
            await shoot(page, "job-page")
