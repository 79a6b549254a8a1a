"""The overview's health snapshot is read in the background while the overview is
watched (procqueue/dashboard/overview_snapshots.py): a change shows within one
refresh, an idle dashboard reads nothing, a failed read keeps the last snapshot and
says so in one line, and shutdown cancels the refresher."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator

import httpx
import psycopg
import pytest
from psycopg.types.json import Jsonb

from procqueue.dashboard.overview_snapshots import IDLE_AFTER_SECONDS, OverviewSnapshots
from procqueue.dashboard.security import access_for
from procqueue.dashboard.views import REFRESH_SECONDS
from tests.conftest import make_settings
from tests.support.dashboard import csrf_from, dashboard_client


class Clock:
    """Monotonic seconds the test moves on by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def watched(
    database: str, es_url: str
) -> AsyncIterator[tuple[httpx.AsyncClient, OverviewSnapshots, Clock]]:
    local = make_settings(database, es_url)
    clock = Clock()
    async with dashboard_client(
        local, access_for(local, "127.0.0.1", True), overview_clock=clock
    ) as http:
        yield http, http.app.state.overview_snapshots, clock  # type: ignore[attr-defined]


async def add_waiting_job(database: str) -> str:
    queue = f"fresh_{uuid.uuid4().hex[:8]}"
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        await conn.execute(
            "SELECT procqueue.add_job('test:flaky', %s, %s, NULL, NULL, now())",
            [Jsonb({"failures": 0}), queue],
        )
    return queue


async def test_a_change_shows_within_one_refresh_read_in_the_background(
    watched: tuple[httpx.AsyncClient, OverviewSnapshots, Clock], database: str
) -> None:
    http, snapshots, clock = watched
    first = await http.get("/")  # the first request reads at once: never an empty page
    assert first.status_code == 200 and snapshots.reads == 1
    queue = await add_waiting_job(database)
    clock.now += REFRESH_SECONDS / 2  # within the refresh: the page shows the reading
    assert queue not in (await http.get("/overview/panel")).text
    assert snapshots.reads == 1
    clock.now += REFRESH_SECONDS / 2  # a refresh later the refresher reads it
    assert await snapshots.step()
    assert snapshots.reads == 2
    panel = (await http.get("/overview/panel")).text
    assert queue in panel and snapshots.reads == 2  # the page read nothing itself
    latest = snapshots.latest
    assert latest is not None
    assert f'class="stamp">{latest.read_at:%H:%M:%S} UTC<' in panel  # the time it was read


async def test_a_page_finding_the_reading_older_than_a_refresh_reads_at_once(
    watched: tuple[httpx.AsyncClient, OverviewSnapshots, Clock], database: str
) -> None:
    http, snapshots, clock = watched
    await http.get("/")
    queue = await add_waiting_job(database)
    clock.now += REFRESH_SECONDS + IDLE_AFTER_SECONDS  # idle since: the refresher slept
    assert queue in (await http.get("/overview/panel")).text
    assert snapshots.reads == 2


async def test_an_idle_dashboard_reads_nothing(
    watched: tuple[httpx.AsyncClient, OverviewSnapshots, Clock],
) -> None:
    http, snapshots, clock = watched
    assert not await snapshots.step()  # never watched: no read
    assert (await http.get("/healthz")).status_code in (200, 503)  # probes read fresh...
    assert snapshots.reads == 0  # ...but not through the overview's snapshots
    await http.get("/")
    clock.now += IDLE_AFTER_SECONDS  # a minute without the overview
    assert not snapshots.watched()
    for _ in range(3):
        assert not await snapshots.step()
    assert snapshots.reads == 1


async def test_a_failed_read_keeps_the_last_snapshot_and_says_so(
    watched: tuple[httpx.AsyncClient, OverviewSnapshots, Clock],
    database: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    http, snapshots, clock = watched
    queue = await add_waiting_job(database)
    assert queue in (await http.get("/")).text
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        # The health SQL reads the sinks' circuits; the overview's own reads do not.
        await conn.execute("ALTER TABLE procqueue.sink_circuits RENAME TO sink_circuits_away")
        try:
            clock.now += REFRESH_SECONDS
            assert await snapshots.step()  # fails, and the refresher lives on
            assert await snapshots.step()
            panel = (await http.get("/overview/panel")).text
        finally:
            await conn.execute("ALTER TABLE procqueue.sink_circuits_away RENAME TO sink_circuits")
    assert queue in panel  # the last snapshot
    logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(logged) == 1 and "UndefinedTable" in logged[0], logged  # once a streak
    [notice] = [line for line in panel.splitlines() if 'data-testid="snapshot-failed"' in line]
    latest = snapshots.latest
    assert latest is not None and latest.failed_at is not None
    assert f"The health read failed at {latest.failed_at:%H:%M:%S} UTC (UndefinedTable" in notice
    assert f"showing the snapshot read at {latest.read_at:%H:%M:%S} UTC" in notice
    clock.now += REFRESH_SECONDS
    assert await snapshots.step()  # the table is back: so is a fresh snapshot
    assert 'data-testid="snapshot-failed"' not in (await http.get("/overview/panel")).text


async def test_the_refresher_runs_in_the_background_and_stops_at_shutdown(
    database: str, es_url: str
) -> None:
    local = make_settings(database, es_url)
    async with dashboard_client(local, access_for(local, "127.0.0.1", True)) as http:
        snapshots: OverviewSnapshots = http.app.state.overview_snapshots  # type: ignore[attr-defined]
        task = snapshots.task
        assert task is not None and not task.done()
        snapshots.refresh = 0.05  # the real clock, and a short interval: the loop itself
        await http.get("/")
        read = await asyncio.wait_for(snapshots.next_refresh(), timeout=30)
        assert read is not None and read.snapshot is not None and snapshots.reads >= 2
    assert task.cancelled()


async def test_after_an_action_the_overview_reads_anew(
    watched: tuple[httpx.AsyncClient, OverviewSnapshots, Clock], database: str
) -> None:
    """An operator who pauses a queue and opens the overview sees the pause at once,
    not the reading from before it."""
    http, snapshots, _ = watched
    queue = await add_waiting_job(database)
    await http.get("/")
    reads = snapshots.reads
    token = csrf_from((await http.get("/queues")).text)
    paused = await http.post(
        "/queues/pause", data={"csrf_token": token, "queue": queue, "next": "/"}
    )
    assert paused.status_code == 303, paused.text
    panel = (await http.get("/overview/panel")).text
    assert snapshots.reads == reads + 1
    assert 'data-testid="paused-banner"' in panel and queue in panel
    resumed = await http.post(
        "/queues/resume", data={"csrf_token": token, "queue": queue, "next": "/"}
    )
    assert resumed.status_code == 303, resumed.text
