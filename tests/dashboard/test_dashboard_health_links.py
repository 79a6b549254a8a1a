"""Each health reason on the overview links to the jobs behind it, with the shared
jobs-list parameters (/jobs?state=&task=&queue=): a failing task to its failed jobs,
a lagging queue to its waiting ones, a sink that is down to the postponed jobs."""

from __future__ import annotations

import html
import re
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg.types.json import Jsonb

from procqueue.dashboard.security import access_for
from procqueue.engine.app import ProcqueueApp
from procqueue.features import Settings
from procqueue.queue.health import (
    CircuitHealth,
    HealthConfig,
    QueueHealth,
    Snapshot,
    TaskHealth,
    UnknownTaskHealth,
    WorkerHealth,
    evaluate,
)
from tests.conftest import make_settings
from tests.support import tasks
from tests.support.dashboard import dashboard_client
from tests.support.worker import drain

REASON = re.compile(
    r"<li>(?:<a href=\"([^\"]*)\" data-testid=\"reason-link\">)?(.*?)(?:</a>)?</li>"
)


def queue(name: str, lag: float) -> QueueHealth:
    return QueueHealth(name, 4, 0, 0, 0, 0, 0, lag, 0.0, 0.0)


def task(name: str, succeeded: int, failed: int) -> TaskHealth:
    runs = succeeded + failed
    return TaskHealth(name, runs, succeeded, failed, 0, 0, None, None, None, None, None)


def test_every_reason_carries_the_filter_of_its_jobs() -> None:
    now = datetime.now(UTC)
    snapshot = Snapshot(
        queues=[queue("search", 900.0), queue("calm", 1.0)],
        tasks=[task("listing:update", 10, 9), task("images:cleanup", 50, 0)],
        workers=[WorkerHealth(7, now - timedelta(minutes=5), 300.0, 1, healthy=False)],
        tables=[],
        window=timedelta(hours=1),
        open_circuits=[CircuitHealth("elasticsearch", now, "connection refused", now)],
        unknown_tasks=[UnknownTaskHealth("listing:renamed", 2, now - timedelta(minutes=2))],
    )
    verdict = evaluate(snapshot, HealthConfig())
    assert len(verdict.filters) == len(verdict.reasons)
    linked = dict(zip(verdict.reasons, verdict.filters, strict=True))

    def filter_of(start: str) -> dict[str, str]:
        [found] = [f for reason, f in linked.items() if reason.startswith(start)]
        return found

    assert filter_of("0 healthy worker(s)") == {}  # no list of jobs says why
    assert filter_of("elasticsearch is unavailable") == {"state": "postponed"}
    assert filter_of("2 job(s) of task 'listing:renamed'") == {
        "state": "todo",
        "task": "listing:renamed",
    }
    assert filter_of("worker(s) 7 stopped") == {"state": "doing"}
    assert filter_of("queue 'search'") == {"state": "todo", "queue": "search"}
    assert filter_of("task 'listing:update'") == {"state": "failed", "task": "listing:update"}
    assert not any(r.startswith("queue 'calm'") or "images:cleanup" in r for r in linked)
    # All tasks together, when no single one tells it.
    spread = evaluate(
        Snapshot(
            queues=[],
            tasks=[task(f"t{n}", 3, 2) for n in range(3)],
            workers=[WorkerHealth(1, now, 1.0, 0, healthy=True)],
            tables=[],
            window=timedelta(hours=1),
        ),
        HealthConfig(),
    )
    assert spread.filters == [{"state": "failed"}], spread.reasons


@pytest.fixture(scope="module")
async def app(settings: Settings) -> AsyncIterator[ProcqueueApp]:
    async with tasks.opened_app(settings) as application:
        yield application


async def test_the_overview_links_each_reason_to_its_jobs(
    app: ProcqueueApp, database: str, es_url: str
) -> None:
    for n in range(3):
        await app.configure_task("test:broken").defer_async(reason=f"links {n}")
    await drain(app)
    lagging = f"lagging_{uuid.uuid4().hex[:6]}"
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        await conn.execute(
            "SELECT procqueue.add_job('test:flaky', %s, %s, NULL, NULL, now() - interval '5 min')",
            [Jsonb({"failures": 0}), lagging],
        )
    local = make_settings(database, es_url)
    async with dashboard_client(local, access_for(local, "127.0.0.1", True)) as http:
        panel = (await http.get("/overview/panel")).text
        reasons = re.search(r'<ul class="reasons">(.*?)</ul>', panel, re.S)
        assert reasons, panel
        found = {
            html.unescape(text): html.unescape(href)
            for href, text in REASON.findall(reasons.group(1))
        }
        overview = (await http.get("/")).text
    by_start = {text.split(":")[0]: href for text, href in found.items()}
    assert by_start["task 'test"] == "/jobs?state=failed&task=test%3Abroken", found
    assert by_start[f"queue '{lagging}'"] == f"/jobs?state=todo&queue={lagging}", found
    assert by_start["0 healthy worker(s), at least 1 needed"] == "", found  # plain text
    assert 'data-testid="reason-link"' in overview  # the first paint has them too
