"""Sentry: exactly one event per final failure, tagged and fingerprinted; none
for attempts that will be retried; none at all without a DSN; no secrets.
The real sentry-sdk sends to a loopback server that speaks Sentry's envelope API."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
import pytest

from procqueue.app import build_app
from procqueue.engine.app import ProcqueueApp
from procqueue.queue.maintenance import rescue_stalled_jobs
from procqueue.queue.sentry import (
    flush_sentry,
    init_sentry,
    sentry_enabled,
    shutdown_sentry,
)
from tests.conftest import make_settings
from tests.support import tasks
from tests.support.sentry_server import SentryServer
from tests.support.worker import drain, job_status

SECRET_KEY = "es-api-key-9f8e7d6c5b"


@pytest.fixture(scope="module")
def sentry() -> Iterator[SentryServer]:
    with SentryServer() as server:
        yield server


@pytest.fixture(scope="module")
async def app(database: str, es_url: str, sentry: SentryServer) -> AsyncIterator[ProcqueueApp]:
    settings = make_settings(
        database,
        es_url,
        sentry_dsn=sentry.dsn,
        environment="test",
        elasticsearch_api_key=SECRET_KEY,
        stalled_timeout=1,
        heartbeat_interval=0.25,  # shorter than the stalled timeout, as settings require
    )
    application = build_app(settings)
    tasks.register(application)
    init_sentry(settings)  # as the worker does when it starts: the rescue test runs none
    async with application.open_async():
        yield application
    shutdown_sentry()


async def sent_events(sentry: SentryServer) -> list[dict[str, Any]]:
    await asyncio.to_thread(flush_sentry)
    return list(sentry.events)


async def test_final_failure_sends_one_tagged_event(
    app: ProcqueueApp, sentry: SentryServer
) -> None:
    sentry.clear()
    job_id = await app.configure_task("test:broken").defer_async(
        reason=f"partner rejected the listing (key {SECRET_KEY})"
    )
    await drain(app, concurrency=1)
    (event,) = await sent_events(sentry)
    assert event["tags"]["task"] == "test:broken"
    assert event["tags"]["queue"] == "tests"
    assert event["tags"]["job_id"] == str(job_id)
    assert event["tags"]["attempts"] == "1"
    assert event["fingerprint"] == [
        "procqueue-final-failure",
        "test:broken",
        "procqueue.errors.PermanentError",
    ]
    assert event["environment"] == "test"
    (exception,) = event["exception"]["values"]
    assert exception["type"] == "PermanentError"
    assert "partner rejected the listing" in exception["value"]
    assert all(SECRET_KEY.encode() not in raw for raw in sentry.raw)


async def test_retried_attempts_send_nothing(app: ProcqueueApp, sentry: SentryServer) -> None:
    sentry.clear()
    await app.configure_task("test:flaky").defer_async(failures=2)
    await drain(app, concurrency=1)
    assert await sent_events(sentry) == []


async def test_exhausted_retries_send_one_event_with_all_attempts(
    app: ProcqueueApp, sentry: SentryServer
) -> None:
    sentry.clear()
    first = await app.configure_task("test:flaky").defer_async(failures=99)
    second = await app.configure_task("test:flaky").defer_async(failures=99)
    await drain(app, concurrency=1)
    events = await sent_events(sentry)
    assert sorted(event["tags"]["job_id"] for event in events) == sorted([str(first), str(second)])
    assert {event["tags"]["attempts"] for event in events} == {"4"}
    # same task and exception type: one issue in Sentry
    assert events[0]["fingerprint"] == events[1]["fingerprint"]


async def test_a_lost_worker_is_reported(
    app: ProcqueueApp, sentry: SentryServer, database: str
) -> None:
    sentry.clear()
    job_id = await app.configure_task("test:flaky").defer_async(failures=0)
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        await conn.execute(
            "WITH dead AS (INSERT INTO procrastinate.procrastinate_workers (last_heartbeat)"
            " VALUES (now() - interval '1 hour') RETURNING id)"
            " UPDATE procrastinate.procrastinate_jobs SET status = 'doing',"
            " worker_id = (SELECT id FROM dead) WHERE id = %s",
            [job_id],
        )
    report = await rescue_stalled_jobs(app)
    assert report.retried == [job_id]
    (event,) = await sent_events(sentry)
    assert event["fingerprint"] == ["procqueue-lost-worker"]
    assert "stopped heartbeating" in str(event.get("message") or event.get("logentry"))
    await drain(app, concurrency=1)


async def test_without_a_dsn_nothing_is_sent_and_jobs_still_fail_normally(
    app: ProcqueueApp, sentry: SentryServer, database: str, es_url: str
) -> None:
    shutdown_sentry()
    sentry.clear()
    try:
        plain = build_app(make_settings(database, es_url))
        tasks.register(plain)
        assert not sentry_enabled()
        async with plain.open_async():
            job_id = await plain.configure_task("test:broken").defer_async(reason="no dsn")
            await drain(plain, concurrency=1)
    finally:
        init_sentry(app.services.settings)  # the other tests of this module use it
    assert await job_status(database, job_id) == "failed"
    assert await sent_events(sentry) == []
