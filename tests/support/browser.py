"""Chromium for the dashboard's browser tests: Debian's /usr/bin/chromium driven by
Playwright (`playwright install` is never run). Screenshots go to a temporary folder,
or to PROCQUEUE_SCREENSHOTS_DIR when set: refresh the docs' pictures on purpose with
`PROCQUEUE_SCREENSHOTS_DIR=docs/screenshots ./scripts/test -k browser`."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, async_playwright

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS = Path(
    os.environ.get("PROCQUEUE_SCREENSHOTS_DIR") or tempfile.mkdtemp(prefix="procqueue-screenshots-")
)
SCREENSHOTS.mkdir(parents=True, exist_ok=True)


def require_chromium() -> None:
    """At a browser test module's top: skip it without Chromium (fail it on CI)."""
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} is missing: `apt-get install -y chromium` (.ci/run installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason + " — CI must run the browser test", pytrace=False)
        pytest.skip(reason, allow_module_level=True)


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield launched
        finally:
            await launched.close()


async def shoot(page: Page, name: str) -> None:
    await page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
