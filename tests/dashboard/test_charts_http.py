"""The Charts page over HTTP: for a known history (written before the real
maintenance code rolled it up) and for real jobs run by a worker, the buckets'
tooltips and the totals show the right numbers per queue and per task, the
sampled depth shows, and the overview links to the charts."""

from __future__ import annotations

import html
import re
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import psycopg
import pytest

from procqueue.app import build_app
from procqueue.dashboard.security import access_for
from procqueue.features import Settings
from procqueue.queue.chart_history import record_chart_history
from tests.conftest import make_settings
from tests.support import tasks
from tests.support.chart_history import exact_percentile, selected, write_history
from tests.support.dashboard import dashboard_client, signed_in_admin
from tests.support.worker import drain

SECRET = "charts-secret-" + uuid.uuid4().hex
PARKED = 3  # jobs waiting, overdue, in queue "parked" that no worker serves


@pytest.fixture(scope="module")
def settings(database: str, es_url: str) -> Settings:
    return make_settings(database, es_url, dashboard_secret=SECRET)


@pytest.fixture(scope="module")
async def history(settings: Settings, database: str) -> AsyncIterator[dict[float, datetime]]:
    """The known history, real jobs run by a worker (queue `tests`: two succeed after
    one retried attempt, one fails for good), waiting jobs, then one maintenance pass."""
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        starts = await write_history(conn)
    application = build_app(settings)
    tasks.register(application)
    async with application.open_async():
        for _ in range(2):
            await application.configure_task("test:flaky").defer_async(failures=1)
        await application.configure_task("test:broken").defer_async(reason="bad row")
        await drain(application, queues=["tests"])
        overdue = datetime.now(UTC) - timedelta(minutes=5)
        for _ in range(PARKED):
            await application.configure_task(
                "test:broken", queue="parked", schedule_at=overdue
            ).defer_async(reason="never run")
        await record_chart_history(application.pool, time.monotonic() + 60)
    yield starts


@pytest.fixture
async def admin(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with signed_in_admin(settings, SECRET) as client:
        yield client


def tips(page: str) -> list[str]:
    return [html.unescape(tip) for tip in re.findall(r"<title>([^<]*)</title>", page)]


UNITS = {"µs": 1e-6, "ms": 1e-3, "s": 1.0, "min": 60.0}


def seconds(shown: str) -> float:
    """A duration as the page shows it (`270.8 ms`), in seconds."""
    value, unit = shown.split()
    return float(value) * UNITS[unit]


def shown(page: str, testid: str) -> str:
    found = re.search(rf'data-testid="{testid}">([^<]*)<', page)
    assert found, testid
    return found.group(1)


def total(page: str, name: str) -> str:
    return shown(page, f"total-{name}")


@pytest.mark.parametrize(
    "queue,task", [("alpha", ""), ("", "alpha:sync"), ("", "beta:push"), ("alpha", "alpha:mail")]
)
async def test_the_day_charts_show_the_known_history(
    admin: httpx.AsyncClient, history: dict[float, datetime], queue: str, task: str
) -> None:
    response = await admin.get("/charts", params={"queue": queue, "task": task, "range": "day"})
    assert response.status_code == 200
    page = response.text
    expected = selected(queue, task)
    for hours_ago, start in history.items():
        here = [f for f in expected if f.hours_ago == hours_ago]
        label = start.strftime("%m-%d %H:%M")
        counts = (
            f"{label}: {sum(f.status == 'succeeded' for f in here)} succeeded, "
            f"{sum(f.retried_before for f in here)} retried, "
            f"{sum(f.status == 'failed' for f in here)} failed"
        )
        if hours_ago < 24:  # (0 of each when nothing of this selection ended then)
            assert counts in tips(page)
        else:  # out of the day: no bucket
            assert not [tip for tip in tips(page) if tip.startswith(f"{label}: ")]
    succeeded = sum(f.status == "succeeded" for f in expected)
    retried = sum(f.retried_before for f in expected)
    failed = sum(f.status == "failed" for f in expected)
    assert (total(page, "succeeded"), total(page, "retried"), total(page, "failed")) == (
        str(succeeded), str(retried), str(failed),
    )  # fmt: skip
    rate = (retried + failed) / (succeeded + retried + failed)
    assert total(page, "error-rate") == f"{rate:.1%}"
    durations = [d for f in expected for d in f.durations]
    for name, fraction in (("p50", 0.5), ("p95", 0.95)):
        shown = total(page, name)
        exact = exact_percentile(durations, fraction)
        # within 2 % of the exact value (the histogram's bound), and the page's rounding
        assert seconds(shown) == pytest.approx(exact, rel=0.021), (name, shown, exact)


async def test_the_hour_charts_show_the_jobs_a_worker_ran(
    admin: httpx.AsyncClient, history: dict[float, datetime]
) -> None:
    page = (await admin.get("/charts?queue=tests")).text
    assert (total(page, "succeeded"), total(page, "retried"), total(page, "failed")) == (
        "2", "2", "1",
    )  # fmt: skip
    assert total(page, "error-rate") == "60.0%"
    bars = [tip for tip in tips(page) if re.fullmatch(r"\d\d:\d\d: \d+ succeeded, .*", tip)]
    assert sum(int(tip.split(": ")[1].split()[0]) for tip in bars) == 2
    page = (await admin.get("/charts?task=test:flaky")).text
    assert (total(page, "succeeded"), total(page, "retried"), total(page, "failed")) == (
        "2", "2", "0",
    )  # fmt: skip
    # each minute's duration tooltip names its time, p50 and p95
    assert any(re.fullmatch(r"\d\d:\d\d: p50 [\d.]+ (µs|ms|s), p95 .*", tip) for tip in tips(page))


async def test_the_depth_and_lag_charts_show_the_sampled_queue(
    admin: httpx.AsyncClient, history: dict[float, datetime]
) -> None:
    page = (await admin.get("/charts?queue=parked")).text
    assert shown(page, "latest-waiting") == str(PARKED)
    assert 300 <= seconds(shown(page, "latest-lag")) < 400  # overdue by five minutes
    assert any(re.fullmatch(rf"\d\d:\d\d: waiting {PARKED}, running 0", tip) for tip in tips(page))
    assert "1 sampled minute(s)" in page or "2 sampled minute(s)" in page


async def test_the_overview_and_nav_link_to_the_charts(
    admin: httpx.AsyncClient, history: dict[float, datetime]
) -> None:
    page = (await admin.get("/")).text
    assert 'href="/charts"' in page  # the nav, and the charts line under the activity
    assert 'href="/charts?queue=tests"' in page
    assert 'href="/charts?task=test%3Aflaky"' in page
    page = (await admin.get("/charts?task=test%3Aflaky&range=hour")).text
    assert '<option value="test:flaky" selected>' in page
    assert 'href="/charts?task=test%3Aflaky&amp;range=day"' in page  # the day toggle keeps it


async def test_a_bad_range_is_one_line_and_signed_out_goes_to_sign_in(
    admin: httpx.AsyncClient, settings: Settings
) -> None:
    response = await admin.get("/charts?range=week")
    assert response.status_code == 400
    assert response.text == "bad request: range must be one of hour, day, not 'week'"
    async with dashboard_client(settings, access_for(settings, "0.0.0.0", False)) as anonymous:
        response = await anonymous.get("/charts?queue=tests")
    assert response.status_code == 303
    assert response.headers["location"] == "/login?next=%2Fcharts%3Fqueue%3Dtests"
