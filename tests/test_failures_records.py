"""Failed attempts are recorded, shown by `procqueue failed`, retried and
cancelled by hand; logs can be JSON lines with the job's fields."""

from __future__ import annotations

import getpass
import json
import logging
import sys
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from procqueue.app import build_app
from procqueue.engine.app import ProcqueueApp
from procqueue.queue.logs import JsonFormatter, RedactingFormatter
from tests.conftest import make_settings
from tests.support import tasks
from tests.support.history import run_cli
from tests.support.worker import drain

SECRET_KEY = "es-api-key-4b1d7c2e"


@pytest.fixture(scope="module")
async def app(database: str, es_url: str) -> AsyncIterator[ProcqueueApp]:
    settings = make_settings(database, es_url, elasticsearch_api_key=SECRET_KEY)
    application = build_app(settings)
    tasks.register(application)
    async with application.open_async():
        async with application.pool.connection() as conn:
            await conn.execute(tasks.SWITCHES_SQL)
        yield application


async def job_row(dsn: str, job_id: int) -> dict[str, Any]:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cursor = conn.cursor(row_factory=dict_row)
        await cursor.execute(
            "SELECT status::text, attempts FROM procrastinate.procrastinate_jobs WHERE id = %s",
            [job_id],
        )
        row = await cursor.fetchone()
    assert row is not None
    return row


async def error_rows(dsn: str, job_id: int) -> list[dict[str, Any]]:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cursor = conn.cursor(row_factory=dict_row)
        await cursor.execute(
            "SELECT * FROM procqueue.job_errors WHERE job_id = %s ORDER BY attempt", [job_id]
        )
        return await cursor.fetchall()


async def test_three_failures_then_success_leave_three_error_rows(
    app: ProcqueueApp, database: str
) -> None:
    job_id = await app.configure_task("test:flaky").defer_async(failures=3)
    await drain(app, concurrency=1)
    assert await job_row(database, job_id) == {"status": "succeeded", "attempts": 4}
    errors = await error_rows(database, job_id)
    assert [e["attempt"] for e in errors] == [1, 2, 3]
    for error in errors:
        assert error["error_type"] == "procqueue.errors.TransientError"
        assert error["transient"] and not error["final"]
        assert "Traceback (most recent call last)" in error["traceback"]
        assert "in flaky" in error["traceback"]
    assert errors[2]["message"] == "upstream busy (attempt 3)"


async def test_exhausted_retries_mark_the_last_error_final(
    app: ProcqueueApp, database: str
) -> None:
    job_id = await app.configure_task("test:flaky").defer_async(failures=99)
    await drain(app, concurrency=1)
    assert await job_row(database, job_id) == {"status": "failed", "attempts": 4}
    assert [e["final"] for e in await error_rows(database, job_id)] == [False] * 3 + [True]


async def test_permanent_failure_is_shown_by_procqueue_failed(
    app: ProcqueueApp, database: str
) -> None:
    reason = f"listing 42 has no title (api key {SECRET_KEY})"
    job_id = await app.configure_task("test:broken").defer_async(reason=reason)
    await drain(app, concurrency=1)
    assert await job_row(database, job_id) == {"status": "failed", "attempts": 1}
    (error,) = await error_rows(database, job_id)
    assert error["final"] and not error["transient"]
    assert SECRET_KEY not in error["message"] + error["traceback"]

    code, out, _ = await run_cli(database, "failed", "--task", "test:broken")
    assert code == 0
    line = next(line for line in out.splitlines() if line.startswith(str(job_id)))
    assert "test:broken" in line and "PermanentError: listing 42 has no title" in line
    assert SECRET_KEY not in out

    code, out, _ = await run_cli(database, "failed", "--json")
    listed = {entry["id"]: entry for entry in json.loads(out)}
    assert listed[job_id]["error_type"] == "procqueue.errors.PermanentError"
    assert "Traceback" in listed[job_id]["traceback"]


async def test_retry_all_failed_succeeds_once_the_cause_is_gone(
    app: ProcqueueApp, database: str
) -> None:
    async with app.pool.connection() as conn:
        await conn.execute("INSERT INTO public.test_switches VALUES ('partner', true)")
    job_ids = [await app.configure_task("test:switch").defer_async(name="partner") for _ in "abc"]
    await drain(app, concurrency=1)
    assert [(await job_row(database, j))["status"] for j in job_ids] == ["failed"] * 3

    # still broken: retried, and failed again
    code, out, _ = await run_cli(database, "retry", "--task", "test:switch")
    assert code == 0 and "retried 3 job(s)" in out
    await drain(app, concurrency=1)
    assert [(await job_row(database, j))["status"] for j in job_ids] == ["failed"] * 3

    async with app.pool.connection() as conn:
        await conn.execute("UPDATE public.test_switches SET broken = false")
    code, out, _ = await run_cli(database, "retry", "--all-failed")
    assert code == 0
    await drain(app, concurrency=1)
    assert [(await job_row(database, j))["status"] for j in job_ids] == ["succeeded"] * 3
    # each job's two failed attempts are still on record
    assert [len(await error_rows(database, j)) for j in job_ids] == [2, 2, 2]


async def test_retry_and_cancel_one_job(app: ProcqueueApp, database: str) -> None:
    waiting = await app.configure_task("test:flaky").defer_async(failures=0)
    code, out, err = await run_cli(database, "retry", str(waiting))
    assert code == 1 and err == f"procqueue: job {waiting} is todo, not failed: not retried\n"
    assert out == ""
    code, out, _ = await run_cli(database, "cancel", str(waiting))
    assert code == 0 and "cancelled" in out
    assert (await job_row(database, waiting))["status"] == "cancelled"
    code, out, err = await run_cli(database, "cancel", str(waiting))
    assert code == 1 and "only waiting or running jobs can be cancelled" in err and out == ""
    code, out, err = await run_cli(database, "cancel", "999999999")
    assert code == 1 and err == "procqueue: job 999999999 does not exist\n" and out == ""


async def audit_rows(dsn: str) -> list[dict[str, Any]]:
    async with await psycopg.AsyncConnection.connect(dsn, row_factory=dict_row) as conn:
        cursor = await conn.execute(
            "SELECT actor, action, job_ids, outcome FROM procqueue.dashboard_actions ORDER BY id"
        )
        return await cursor.fetchall()


async def test_the_cli_acts_through_the_audited_operations(
    app: ProcqueueApp, database: str
) -> None:
    """One rule for the CLI and the dashboard: every action leaves an audit row, and
    a running job is cancelled only when an abort is asked for."""
    running = await app.configure_task("test:flaky").defer_async(failures=0)
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        await conn.execute(
            "WITH w AS (INSERT INTO procrastinate.procrastinate_workers DEFAULT VALUES"
            " RETURNING id) UPDATE procrastinate.procrastinate_jobs SET status = 'doing',"
            " worker_id = (SELECT id FROM w) WHERE id = %s",
            [running],
        )
    code, _, err = await run_cli(database, "cancel", str(running))
    assert code == 1 and "only waiting jobs are cancelled (--abort stops it)" in err
    assert (await job_row(database, running))["status"] == "doing"
    code, out, _ = await run_cli(database, "cancel", "--abort", str(running))
    assert code == 0 and "its worker was asked to abort it" in out
    async with await psycopg.AsyncConnection.connect(database) as conn:
        cursor = await conn.execute(
            "SELECT abort_requested FROM procrastinate.procrastinate_jobs WHERE id = %s", [running]
        )
        assert await cursor.fetchone() == (True,)
    code, _, err = await run_cli(database, "retry", str(running))
    assert code == 1 and f"job {running} is doing, not failed" in err

    actor = f"cli:{getpass.getuser()}"
    assert [(r["actor"], r["action"], r["job_ids"]) for r in (await audit_rows(database))[-3:]] == [
        (actor, "cancel", []),
        (actor, "abort", [running]),
        (actor, "retry", []),
    ]
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        await conn.execute("DELETE FROM procrastinate.procrastinate_jobs WHERE id = %s", [running])


async def test_json_logs_carry_job_id_task_attempt_and_duration(
    app: ProcqueueApp, caplog: pytest.LogCaptureFixture
) -> None:
    job_id = await app.configure_task("test:flaky").defer_async(failures=1)
    with caplog.at_level(logging.INFO, logger="procqueue.queue.outcomes"):
        await drain(app, concurrency=1)
    formatter = JsonFormatter((SECRET_KEY,))
    lines = [
        json.loads(formatter.format(record))
        for record in caplog.records
        if getattr(record, "job_id", None) == job_id and hasattr(record, "duration")
    ]
    assert [(line["attempt"], line["outcome"]) for line in lines] == [
        (1, "retried"),
        (2, "succeeded"),
    ]
    for line in lines:
        assert line["task"] == "test:flaky" and line["queue"] == "tests"
        assert line["job_id"] == job_id and line["duration"] >= 0
        assert line["level"] == "info" and line["message"].startswith(f"job {job_id}")


@pytest.mark.parametrize("formatter", [JsonFormatter, RedactingFormatter])
def test_log_lines_never_carry_secrets_in_either_format(
    formatter: type[JsonFormatter] | type[RedactingFormatter],
) -> None:
    """Third-party messages and tracebacks (Procrastinate's, an SDK's) too."""
    secret = "s3cr3t-Pa55"
    try:
        raise ConnectionError(f"cannot reach postgresql://app:{secret}@db.example:5432/x")
    except ConnectionError:
        record = logging.LogRecord(
            "procrastinate.worker", logging.ERROR, __file__, 1,
            "job failed with key %s", (secret,), sys.exc_info(),
        )  # fmt: skip
    line = formatter((secret,)).format(record)
    assert secret not in line
    assert "ConnectionError" in line
