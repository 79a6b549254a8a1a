"""Prepared queue history for the health and pruning tests: jobs written
straight into Procrastinate's tables with events at chosen times, as the
worker would have left them."""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

import psycopg

FINISHED_INSERT = (
    "INSERT INTO procrastinate.procrastinate_jobs (queue_name, task_name, args, status, attempts)"
    " VALUES (%s, %s, '{}', %s, %s) RETURNING id"
)
EVENT_INSERT = (
    "INSERT INTO procrastinate.procrastinate_events (job_id, type, at)"
    " VALUES (%s, %s, now() - make_interval(secs => %s))"
)


async def finished_job(
    conn: psycopg.AsyncConnection[Any],
    *,
    task: str,
    queue: str,
    status: str,
    ended_ago: float,
    seconds: float,
    retried_before: bool = False,
) -> int:
    """A job that ended `ended_ago` seconds ago after running `seconds`."""
    attempts = 2 if retried_before else 1
    events = [("deferred", ended_ago + seconds + 60), ("started", ended_ago + seconds)]
    if retried_before:
        events += [
            ("started", ended_ago + seconds + 30),
            ("deferred_for_retry", ended_ago + seconds + 29),
        ]
    events.append((status if status in ("succeeded", "failed") else "cancelled", ended_ago))
    # One transaction: one now() for every event, so durations are exact on a busy machine.
    async with conn.transaction():
        row = await (
            await conn.execute(FINISHED_INSERT, [queue, task, status, attempts])
        ).fetchone()
        assert row is not None
        job_id: int = row[0]
        for event_type, ago in events:
            await conn.execute(EVENT_INSERT, [job_id, event_type, ago])
    return job_id


async def error_row(conn: psycopg.AsyncConnection[Any], job_id: int, ago: float) -> None:
    await conn.execute(
        "INSERT INTO procqueue.job_errors (job_id, attempt, task_name, queue_name, error_type,"
        " message, traceback, transient, final, occurred_at) VALUES (%s, 1, 't', 'q', 'E', 'm',"
        " 'tb', true, false, now() - make_interval(secs => %s))",
        [job_id, ago],
    )


async def run_cli(dsn: str, *args: str, **env: str) -> tuple[int, str, str]:
    """`python -m procqueue.cli ARGS` against `dsn`; (exit code, stdout, stderr)."""
    environment = {
        **os.environ,
        "PROCQUEUE_DATABASE_URL": dsn,
        "PROCQUEUE_MAINTENANCE_TASKS": "false",
        **{f"PROCQUEUE_{key.upper()}": value for key, value in env.items()},
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "procqueue.cli",
        *args,
        env=environment,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()
