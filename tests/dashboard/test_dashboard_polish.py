"""What an operator meets on the dashboard besides its features (issue 13): an
unmigrated database, maintenance jobs crowding the list, the favicon, emoji, the
flash after an action, and counters that say what they count."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import AsyncIterator

import httpx
import psycopg
import pytest
from psycopg.types.json import Jsonb

from procqueue.dashboard.app import STATIC_DIR, TEMPLATES_DIR
from procqueue.dashboard.security import access_for
from procqueue.features import Settings
from procqueue.queue.maintenance import MAINTENANCE_QUEUE, PRUNE_TASK, RESCUE_TASK
from procqueue.search.jobs import RECONCILE
from tests.conftest import make_settings
from tests.support.dashboard import csrf_from, dashboard_client, sign_in
from tests.support.supabase import supabase_database

SECRET = "polish-secret-" + uuid.uuid4().hex
MAINTENANCE_TASKS = (RESCUE_TASK, PRUNE_TASK, RECONCILE.task_name)
#: Pictographs and dingbats: drawn as a box on a machine without an emoji font.
EMOJI = re.compile("[\U0001f000-\U0001faff\u2600-\u27bf\u2b00-\u2bff\ufe0f]")
PAGES = ("/", "/overview/panel", "/jobs", "/jobs/1", "/failures", "/audit")


@pytest.fixture(scope="module")
def settings(database: str, es_url: str) -> Settings:
    return make_settings(database, es_url, dashboard_secret=SECRET)


@pytest.fixture
async def admin(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with dashboard_client(settings, access_for(settings, "0.0.0.0", False)) as client:
        assert (await sign_in(client, "alice", SECRET)).status_code == 303
        yield client


async def add_jobs(dsn: str, queue: str, *tasks: str) -> list[int]:
    """Jobs due tomorrow (no worker takes them), one per task name."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        ids = []
        for task in tasks:
            row = await (
                await conn.execute(
                    "SELECT procqueue.add_job(%s, %s, %s, NULL, NULL, now() + interval '1 day')",
                    [task, Jsonb({}), queue],
                )
            ).fetchone()
            assert row is not None
            ids.append(int(row[0]))
    return ids


def listed(html: str) -> set[int]:
    return {int(i) for i in re.findall(r'<td class="num[^"]*"><a href="/jobs/(\d+)">', html)}


async def test_an_unmigrated_database_answers_503_with_one_line_on_every_page(
    admin_dsn: str, es_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with supabase_database(admin_dsn, f"pq_dash_bare_{uuid.uuid4().hex[:6]}") as bare:
        open_locally = make_settings(bare, es_url)
        async with dashboard_client(
            open_locally, access_for(open_locally, "127.0.0.1", True)
        ) as client:
            for path in PAGES:
                caplog.clear()
                with caplog.at_level(logging.INFO):
                    response = await client.get(path)
                assert response.status_code == 503, (path, response.text)
                assert "run `procqueue migrate`" in response.text, path
                assert "\n" not in response.text.strip(), path
                logged = [r for r in caplog.records if r.levelno >= logging.WARNING]
                assert len(logged) == 1, (path, [r.getMessage() for r in logged])
                assert "run `procqueue migrate`" in logged[0].getMessage()
                assert logged[0].exc_info is None and "Traceback" not in caplog.text
        # Signing in records an audit row: the same line, not a 500.
        settings = make_settings(bare, es_url, dashboard_secret=SECRET)
        async with dashboard_client(settings, access_for(settings, "0.0.0.0", False)) as client:
            response = await sign_in(client, "alice", SECRET)
            assert response.status_code == 503
            assert "run `procqueue migrate`" in response.text


async def test_maintenance_jobs_are_hidden_until_asked_for(
    admin: httpx.AsyncClient, database: str
) -> None:
    maintenance = set(await add_jobs(database, MAINTENANCE_QUEUE, *MAINTENANCE_TASKS))
    ordinary = set(await add_jobs(database, "polish", "listing:update"))

    default = (await admin.get("/jobs")).text
    assert ordinary <= listed(default) and not maintenance & listed(default)
    assert 'type="checkbox" name="maintenance"' in default  # the visible toggle
    assert "maintenance jobs hidden" in default and "maintenance=1" in default

    shown = (await admin.get("/jobs?maintenance=1")).text
    assert maintenance | ordinary <= listed(shown)
    assert re.search(r'name="maintenance" value="1"\s+checked', shown)
    # Asking for the maintenance queue or one of its tasks shows them too.
    assert maintenance <= listed((await admin.get(f"/jobs?queue={MAINTENANCE_QUEUE}")).text)
    by_task = (await admin.get(f"/jobs?task={RESCUE_TASK}")).text
    assert listed(by_task) & maintenance


async def test_favicon_is_served(settings: Settings) -> None:
    async with dashboard_client(settings, access_for(settings, "0.0.0.0", False)) as client:
        sign_in_page = (await client.get("/login")).text  # signed out: still there
        link = re.search(r'<link rel="icon" href="([^"]+)" type="image/svg\+xml">', sign_in_page)
        assert link, "no icon link in base.html"
        icon = await client.get(link.group(1))
        assert icon.status_code == 200
        assert icon.headers["content-type"].startswith("image/svg+xml")
        assert icon.text.lstrip().startswith("<svg")
        legacy = await client.get("/favicon.ico", follow_redirects=True)
        assert legacy.status_code == 200 and legacy.content == icon.content


async def test_no_emoji_in_any_page_or_asset(admin: httpx.AsyncClient) -> None:
    for path in [*TEMPLATES_DIR.iterdir(), *STATIC_DIR.iterdir()]:
        found = EMOJI.findall(path.read_text(encoding="utf-8"))
        assert not found, f"{path.name}: {found}"
    for page in PAGES:
        assert not EMOJI.findall((await admin.get(page)).text), page


async def test_a_cancel_is_reported_exactly_once(admin: httpx.AsyncClient, database: str) -> None:
    [job_id] = await add_jobs(database, "polish", "listing:update")
    back = f"/jobs/{job_id}"
    token = csrf_from((await admin.get(back)).text)
    form = {"csrf_token": token, "back": back}
    for says in (f"job {job_id} cancelled", f"job {job_id} is cancelled: only waiting"):
        response = await admin.post(f"/jobs/{job_id}/cancel", data=form, follow_redirects=True)
        assert response.status_code == 200
        assert response.text.count(says) == 1, says
        assert response.text.count('class="flash') == 1
        assert says not in (await admin.get(back)).text  # shown once, then gone


async def test_the_failed_counters_say_which_is_kept_and_which_is_the_last_hour(
    admin: httpx.AsyncClient, settings: Settings
) -> None:
    html = (await admin.get("/")).text
    days = settings.prune_failed_after.days
    headers = dict(re.findall(r'<th class="num" title="([^"]+)">([^<]+)</th>', html))
    by_label = {label: title for title, label in headers.items()}
    assert "however long ago" in by_label["failed jobs now"]
    assert "in the last hour" in by_label["failed for good, last 1 h"]
    caption = re.search(r'<p class="caption[^"]*"[^>]*>(.*?)</p>', html, re.S)
    assert caption, "no caption under the queue table"
    text = " ".join(caption.group(1).split())
    assert "Failed jobs now" in text and f"kept {days} days" in text
    assert "last 1 h" in text and "last 24 h" in text
