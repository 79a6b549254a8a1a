"""Health SQL on a prepared history: counts, lag, failure rate, durations,
workers, storage; `procqueue health` exits 0/1/2 on the matching states."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from prometheus_client import CollectorRegistry
from psycopg.rows import dict_row

from procqueue.queue.health import evaluate, read_snapshot
from procqueue.queue.metrics import render_metrics
from tests.conftest import make_settings
from tests.support.history import finished_job, run_cli

QUEUE = "orders"
TASK = "order:sync"


async def rows(conn: psycopg.AsyncConnection[Any], sql: str) -> list[dict[str, Any]]:
    cursor = conn.cursor(row_factory=dict_row)
    await cursor.execute(sql)
    return await cursor.fetchall()


@pytest.fixture
async def history(fresh_database: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """One queue with a known past and present, two workers (one stalled), in a database
    of its own for each test (the exit-code test changes that present)."""
    conn = await psycopg.AsyncConnection.connect(fresh_database, autocommit=True)
    # Finished in the window: 4 successes of 1-4 s in the last 5 minutes, one
    # final failure of 10 s 30 minutes ago, one retried attempt of 0.5 s.
    for index, seconds in enumerate((1.0, 2.0, 3.0, 4.0)):
        await finished_job(
            conn, task=TASK, queue=QUEUE, status="succeeded", ended_ago=60 + index, seconds=seconds
        )
    await finished_job(conn, task=TASK, queue=QUEUE, status="failed", ended_ago=1800, seconds=10)
    job = await finished_job(
        conn, task=TASK, queue=QUEUE, status="succeeded", ended_ago=7200, seconds=1
    )
    # ... which had a retried attempt of 0.5 s that ended 10 minutes ago
    await conn.execute(
        "INSERT INTO procrastinate.procrastinate_events (job_id, type, at) VALUES"
        " (%s, 'started', now() - interval '600.5 s'), (%s, 'deferred_for_retry',"
        " now() - interval '600 s')",
        [job, job],
    )
    # Outside the task window, inside the day: a failure 2 hours ago; and an old one.
    await finished_job(conn, task=TASK, queue=QUEUE, status="failed", ended_ago=7200, seconds=1)
    await finished_job(
        conn, task=TASK, queue=QUEUE, status="failed", ended_ago=3 * 86400, seconds=1
    )

    # The present: 3 due (the oldest deferred 120 s ago), 1 running, 1 scheduled
    # for later, 1 scheduled for retry.
    workers = await (
        await conn.execute(
            "INSERT INTO procrastinate.procrastinate_workers (last_heartbeat)"
            " VALUES (now()), (now() - interval '5 minutes') RETURNING id"
        )
    ).fetchall()
    add = "SELECT procqueue.add_job(%s, '{}', %s, NULL, NULL, %s)"
    oldest = await (await conn.execute(add, [TASK, QUEUE, None])).fetchone()
    assert oldest is not None
    await conn.execute(
        "UPDATE procrastinate.procrastinate_events SET at = now() - interval '120 s'"
        " WHERE job_id = %s",
        [oldest[0]],
    )
    for _ in range(3):
        await conn.execute(add, [TASK, QUEUE, None])
    await conn.execute(add, [TASK, QUEUE, "2100-01-01"])
    retry_row = await (await conn.execute(add, [TASK, QUEUE, "2100-01-01"])).fetchone()
    assert retry_row is not None
    await conn.execute(
        "UPDATE procrastinate.procrastinate_jobs SET attempts = 1 WHERE id = %s", [retry_row[0]]
    )
    running = await (
        await conn.execute(
            "SELECT id FROM procrastinate.procrastinate_jobs WHERE status = 'todo'"
            " AND scheduled_at IS NULL ORDER BY id DESC LIMIT 1"
        )
    ).fetchone()
    assert running is not None
    await conn.execute(
        "UPDATE procrastinate.procrastinate_jobs SET status = 'doing', worker_id = %s"
        " WHERE id = %s",
        [workers[0][0], running[0]],
    )
    yield conn
    await conn.close()


async def test_queue_health_counts_lag_and_throughput(
    history: psycopg.AsyncConnection[Any],
) -> None:
    (queue,) = [row for row in await rows(history, "SELECT * FROM procqueue.queue_health")]
    assert queue["queue_name"] == QUEUE
    assert (queue["waiting"], queue["running"]) == (3, 1)
    assert (queue["scheduled"], queue["retry_scheduled"]) == (1, 1)
    assert (queue["failed_last_hour"], queue["failed_last_day"]) == (1, 2)
    assert 119 <= queue["lag_seconds"] < 130
    assert queue["finished_per_minute_5m"] == pytest.approx(4 / 5)
    assert queue["finished_per_minute_60m"] == pytest.approx(5 / 60)


async def test_task_health_rates_retries_and_durations(
    history: psycopg.AsyncConnection[Any],
) -> None:
    (task,) = await rows(history, "SELECT * FROM procqueue.task_health")
    assert task["task_name"] == TASK
    assert (task["runs"], task["succeeded"], task["failed"], task["retries"]) == (6, 4, 1, 1)
    assert task["success_rate"] == pytest.approx(0.8)
    assert task["failure_rate"] == pytest.approx(0.2)
    # attempts: 0.5, 1, 2, 3, 4, 10 s
    assert task["p50_seconds"] == pytest.approx(2.5, abs=0.01)
    assert task["p95_seconds"] == pytest.approx(8.5, abs=0.01)
    assert task["max_seconds"] == pytest.approx(10, abs=0.01)
    (day,) = await rows(history, "SELECT * FROM procqueue.task_stats(interval '1 day')")
    assert (day["runs"], day["failed"]) == (8, 2)  # + the 2 h old success and failure


async def test_worker_health_and_storage(history: psycopg.AsyncConnection[Any]) -> None:
    workers = await rows(history, "SELECT * FROM procqueue.worker_health")
    assert [(w["jobs_in_hand"], w["healthy"]) for w in workers] == [(1, True), (0, False)]
    assert workers[0]["heartbeat_age_seconds"] < 5
    assert 295 < workers[1]["heartbeat_age_seconds"] < 320
    tables = {
        f"{row['schema_name']}.{row['table_name']}": row
        for row in await rows(history, "SELECT * FROM procqueue.storage_health")
    }
    jobs = tables["procrastinate.procrastinate_jobs"]
    assert jobs["total_bytes"] >= jobs["table_bytes"] + jobs["index_bytes"] > 0
    assert "procqueue.job_errors" in tables and "procrastinate.procrastinate_events" in tables


LENIENT = {
    "health_lag_degraded": "1000",
    "health_lag_unhealthy": "2000",
    "health_failure_rate_degraded": "0.9",
    "health_failure_rate_unhealthy": "1",
    "health_min_failures": "1",
}


async def test_procqueue_health_exit_codes(
    fresh_database: str, history: psycopg.AsyncConnection[Any]
) -> None:
    database = fresh_database
    # a stalled worker: degraded
    code, out, _ = await run_cli(database, "health", **LENIENT)
    assert code == 1, out
    assert "stopped heartbeating" in out and f"{QUEUE}" in out

    await history.execute(
        "DELETE FROM procrastinate.procrastinate_workers"
        " WHERE last_heartbeat < now() - interval '1 minute'"
    )
    code, out, _ = await run_cli(database, "health", "--json", **LENIENT)
    report = json.loads(out)
    assert (code, report["status"], report["reasons"]) == (0, "healthy", [])
    assert report["queues"][0]["waiting"] == 3

    # the oldest waiting job (120 s) is over a 60 s lag threshold: degraded
    code, out, _ = await run_cli(database, "health", **{**LENIENT, "health_lag_degraded": "60"})
    assert code == 1 and "waited" in out

    # a 20 % failure rate over a 10 % threshold: degraded; over 15 % unhealthy
    code, _, _ = await run_cli(
        database, "health", **{**LENIENT, "health_failure_rate_unhealthy": "0.15"}
    )
    assert code == 2

    # no healthy worker left: unhealthy
    await history.execute("DELETE FROM procrastinate.procrastinate_workers")
    await history.execute(
        "UPDATE procrastinate.procrastinate_jobs SET status = 'todo', worker_id = NULL"
        " WHERE status = 'doing'"
    )
    code, out, _ = await run_cli(database, "health", "--json", **LENIENT)
    assert code == 2
    assert "0 healthy worker(s)" in json.loads(out)["reasons"][0]


async def test_changes_waiting_for_a_drain_read_in_health_and_metrics(
    fresh_database: str, history: psycopg.AsyncConnection[Any]
) -> None:
    """A backlog of row changes is one waiting drain job (docs/bulk.md, "The write
    path"): health counts the changes themselves, judges their age as lag, and
    `procqueue metrics` exports them."""
    database = fresh_database
    await history.execute(
        "DELETE FROM procrastinate.procrastinate_workers"
        " WHERE last_heartbeat < now() - interval '1 minute'"
    )
    await history.execute(
        "INSERT INTO procqueue.sync_changes (entity, entity_id, changed_at, claimed_by)"
        " SELECT 'listing', 'id-' || g, now() - make_interval(secs => 300 - g),"
        " CASE WHEN g <= 2 THEN 7 END FROM generate_series(1, 5) AS g"
    )
    code, out, _ = await run_cli(database, "health", "--json", **LENIENT)
    report = json.loads(out)
    [backlog] = report["changes"]
    assert (backlog["entity"], backlog["waiting"], backlog["claimed"]) == ("listing", 5, 2)
    assert code == 0, report["reasons"]  # 299 s is under the lenient lag thresholds
    code, out, _ = await run_cli(database, "health", **{**LENIENT, "health_lag_degraded": "60"})
    assert code == 1, out
    waited = r"5 change\(s\) of listing wait for its drain job, the oldest for \d{3} s"
    assert re.search(waited, out), out
    assert "Changes waiting for a drain job" in out
    config = make_settings(database, "http://127.0.0.1:9").health
    snapshot = await read_snapshot(history, config)
    text = render_metrics(snapshot, evaluate(snapshot, config), CollectorRegistry()).decode()
    assert 'procqueue_changes_waiting{entity="listing"} 5.0' in text
    oldest = re.search(r'procqueue_changes_oldest_seconds\{entity="listing"\} ([\d.]+)', text)
    assert oldest is not None and 299 <= float(oldest.group(1)) < 900, text
