"""What an operator reads by default: the real output of `procqueue worker`,
`reindex` and `verify` processes. One line per job attempt (no traceback when a sink
is down), routine maintenance silent, no line per HTTP request; `-v` shows them."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import psycopg

from procqueue.local import free_port
from tests.support.cli_worker import start_cli_worker
from tests.support.worker import SELLER_ID, eventually


def worker_env(database: str, es_url: str, **overrides: str) -> dict[str, str]:
    return {
        "DATABASE_URL": database,
        "ELASTICSEARCH_URL": es_url,
        "PROCQUEUE_INDEX_PREFIX": f"l{uuid.uuid4().hex[:8]}_",
        "PROCQUEUE_MAINTENANCE_TASKS": "false",
        "PROCQUEUE_POLLING_INTERVAL": "0.1",
        **{f"PROCQUEUE_{key.upper()}": value for key, value in overrides.items()},
    }


async def finished_jobs(database: str, task: str, listing_id: str | None = None) -> int:
    """The task's finished jobs (of this listing): in the jobs table, and, for any
    listing, those that left for the log of first-attempt successes (migration 0026)."""
    async with await psycopg.AsyncConnection.connect(database) as conn:
        cursor = await conn.execute(
            "SELECT (SELECT count(*) FROM procrastinate.procrastinate_jobs"
            "        WHERE task_name = %(task)s AND status IN ('succeeded', 'failed')"
            "          AND (%(id)s::text IS NULL OR args->>'id' = %(id)s))"
            "     + (SELECT count(*) FROM procqueue.finished_attempts"
            "        WHERE task_name = %(task)s AND %(id)s::text IS NULL)",
            {"task": task, "id": listing_id},
        )
        row = await cursor.fetchone()
    return int(row[0]) if row else 0


async def postponements(database: str, task: str, listing_id: str | None = None) -> int:
    """How many times the task's jobs (of this listing) were postponed (the same row
    waits again)."""
    async with await psycopg.AsyncConnection.connect(database) as conn:
        cursor = await conn.execute(
            "SELECT coalesce(sum(p.times), 0) FROM procrastinate.procrastinate_jobs AS j "
            "JOIN procqueue.job_postponements AS p ON p.job_id = j.id "
            "WHERE j.task_name = %s AND (%s::text IS NULL OR j.args->>'id' = %s)",
            [task, listing_id, listing_id],
        )
        row = await cursor.fetchone()
    return int(row[0]) if row else 0


async def run_worker_until(env: dict[str, str], log: Path, done: Any) -> str:
    """Run `procqueue worker` until `done()` holds, stop it with SIGTERM; its output."""
    process = await start_cli_worker(env, log)
    try:
        await eventually(done, timeout=30)
    finally:
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), timeout=30)
    text = await asyncio.to_thread(log.read_text)
    assert process.returncode == 0, text[-3000:]
    return text


async def test_a_worker_with_elasticsearch_down_logs_one_line_per_attempt_and_no_traceback(
    database: str, db: psycopg.AsyncConnection[Any], tmp_path: Path
) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    env = worker_env(database, closed, circuit_max_wait="0.2")
    await db.execute("DELETE FROM procrastinate.procrastinate_jobs")
    await db.execute("INSERT INTO listings (user_id, title) VALUES (%s, 'es down')", [SELLER_ID])

    async def three_attempts() -> bool:
        return await postponements(database, "listing:drain") >= 3

    text = await run_worker_until(env, tmp_path / "worker.log", three_attempts)
    assert await finished_jobs(database, "listing:drain") == 0
    attempts = await postponements(database, "listing:drain")
    assert "Traceback" not in text and "elastic_transport" not in text, text[-3000:]
    about_the_job = [line for line in text.splitlines() if "(listing:drain)" in line]
    assert len(about_the_job) == attempts, text[-3000:]
    assert all(" postponed in " in line for line in about_the_job)
    assert "listing:drain[" not in text  # no Procrastinate start/end line besides ours


async def test_routine_maintenance_is_silent(database: str, es_url: str, tmp_path: Path) -> None:
    env = worker_env(database, es_url, maintenance_tasks="true", rescue_interval="1")
    before = await finished_jobs(database, "procqueue:rescue_stalled")

    async def rescued_twice() -> bool:
        return await finished_jobs(database, "procqueue:rescue_stalled") >= before + 2

    text = await run_worker_until(env, tmp_path / "worker.log", rescued_twice)
    assert await finished_jobs(database, "procqueue:prune") >= 1  # ran at start, pruned nothing
    for routine in ("rescue_stalled", "procqueue:prune", "pruned", "search:reconcile", "Periodic"):
        assert routine not in text, text


def cli(database: str, es_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    environment = {
        **os.environ,
        "DATABASE_URL": database,
        "ELASTICSEARCH_URL": es_url,
        "PROCQUEUE_INDEX_PREFIX": f"c{uuid.uuid4().hex[:8]}_",
    }
    return subprocess.run(
        [sys.executable, "-m", "procqueue.cli", *args],
        env=environment, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_reindex_and_verify_print_no_line_per_request_unless_verbose(
    database: str, es_url: str
) -> None:
    reindexed = cli(database, es_url, "reindex", "listings")
    assert reindexed.returncode == 0, reindexed.stderr
    assert "elastic_transport" not in reindexed.stderr and "HTTP" not in reindexed.stderr
    verbose = cli(database, es_url, "-v", "verify", "listings")
    assert "elastic_transport" in verbose.stderr
