"""`/metrics` (served by uvicorn, as `procqueue metrics` does) parses with the
Prometheus text parser and shows the queue gauges and the worker's histograms
and counters; `/healthz` answers with the verdict."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from procqueue.engine.app import ProcqueueApp
from procqueue.local import free_port
from procqueue.queue.server import make_server
from tests.conftest import make_settings
from tests.support import tasks
from tests.support.deploy import exported_series, series_used
from tests.support.worker import drain, eventually


@pytest.fixture(scope="module")
async def app(database: str, es_url: str) -> AsyncIterator[ProcqueueApp]:
    async with tasks.opened_app(make_settings(database, es_url)) as application:
        yield application


@pytest.fixture(scope="module")
async def base_url(app: ProcqueueApp) -> AsyncIterator[str]:
    port = free_port()
    server = make_server(app.services.settings, "127.0.0.1", port)
    serving = asyncio.create_task(server.serve())

    async def started() -> bool:
        return bool(server.started)

    await eventually(started, timeout=10, interval=0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    await serving


async def get(url: str) -> tuple[int, str]:
    def fetch() -> tuple[int, str]:
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    return await asyncio.to_thread(fetch)


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_metrics_show_queue_gauges_and_worker_series(
    app: ProcqueueApp, base_url: str, database: str
) -> None:
    await app.configure_task("test:flaky").defer_async(failures=1)
    await app.configure_task("test:broken").defer_async(reason="bad row")
    await drain(app, concurrency=1)
    for _ in range(2):
        await app.configure_task("test:flaky").defer_async(failures=0)  # left waiting

    status, text = await get(f"{base_url}/metrics")
    assert status == 200
    values = samples(text)

    def value(name: str, **labels: str) -> float:
        return values[(name, frozenset(labels.items()))]

    assert value("procqueue_health_up") == 1
    assert value("procqueue_queue_jobs", queue="tests", state="waiting") == 2
    assert value("procqueue_queue_jobs", queue="tests", state="running") == 0
    assert value("procqueue_queue_failed_jobs", queue="tests", window="1h") == 1
    assert value("procqueue_queue_lag_seconds", queue="tests") >= 0
    assert (
        value("procqueue_task_attempts", task="test:flaky", result="retried", window="3600s") == 1
    )
    assert value("procqueue_task_failure_ratio", task="test:broken", window="3600s") == 1
    assert value("procqueue_workers", state="healthy") == 0
    assert value("procqueue_health_status") == 2  # no worker is running now
    assert (
        value("procqueue_table_size_bytes", table="procrastinate.procrastinate_jobs", part="total")
        > 0
    )

    # from this process's worker (the drain above): counters and histograms per task
    assert value("procqueue_jobs_total", task="test:flaky", queue="tests", outcome="retried") >= 1
    assert value("procqueue_jobs_total", task="test:broken", queue="tests", outcome="failed") >= 1
    count = value(
        "procqueue_job_duration_seconds_count",
        task="test:flaky",
        queue="tests",
        outcome="succeeded",
    )
    infinite = value(
        "procqueue_job_duration_seconds_bucket",
        task="test:flaky",
        queue="tests",
        outcome="succeeded",
        le="+Inf",
    )
    assert count >= 1 and infinite == count


async def test_healthz_answers_503_when_unhealthy_and_200_when_not(
    base_url: str, database: str
) -> None:
    status, body = await get(f"{base_url}/healthz")
    report: dict[str, Any] = json.loads(body)
    assert (status, report["status"]) == (503, "unhealthy")
    assert any("healthy worker" in reason for reason in report["reasons"])

    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        await conn.execute("INSERT INTO procrastinate.procrastinate_workers DEFAULT VALUES")
        await conn.execute(
            "UPDATE procrastinate.procrastinate_jobs SET status = 'cancelled' WHERE status = 'todo'"
        )
        status, body = await get(f"{base_url}/healthz")
        await conn.execute("DELETE FROM procrastinate.procrastinate_workers")
    assert status == 200, body
    assert json.loads(body)["workers"][0]["healthy"] is True


async def test_alert_rules_and_grafana_read_only_exported_series(
    app: ProcqueueApp, base_url: str
) -> None:
    """deploy/prometheus/alerts.yml and deploy/grafana/procqueue.json read series the
    exporter's scrape declares (queue gauges from the health SQL) or a worker's port does
    (the job counters, histograms and circuit gauges of the process registry)."""
    _, text = await get(f"{base_url}/metrics")
    # The worker families (job counters, durations, circuit gauges) as a worker's port
    # declares them: the exporter prints only those this process has samples of.
    worker_port = generate_latest(REGISTRY).decode()
    exported = exported_series(text) | exported_series(worker_port)
    used = series_used()
    assert {"procqueue_jobs_total", "procqueue_changes_waiting"} <= used
    assert used <= exported, sorted(used - exported)
