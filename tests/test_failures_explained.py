"""Every failure explains itself: a job of an unknown task, with arguments its task
does not take, or with args that are not a JSON object fails with a recorded
reason (none stays `doing` and blocks its row's lock); args that are not an object
are refused at enqueue; a retry by hand is not an attempt; health flags a few
failures among few runs; the dashboard's counters say what they count."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from procqueue.app import build_app
from procqueue.dashboard.security import access_for
from procqueue.engine.app import ProcqueueApp
from procqueue.features import Settings
from procqueue.migrate import migrate
from procqueue.queue.health import (
    HealthConfig,
    Snapshot,
    Status,
    TaskHealth,
    WorkerHealth,
    evaluate,
    read_snapshot,
)
from tests.conftest import make_settings
from tests.support import tasks
from tests.support.dashboard import csrf_from, dashboard_client, sign_in
from tests.support.history import finished_job, run_cli
from tests.support.worker import drain

ARGS_CONSTRAINT = "procqueue_job_args_are_an_object"
SECRET = "admin-secret-" + uuid.uuid4().hex


@contextlib.asynccontextmanager
async def opened_app(database: str, es_url: str, **overrides: Any) -> AsyncIterator[ProcqueueApp]:
    application = build_app(make_settings(database, es_url, **overrides))
    tasks.register(application)
    async with application.open_async():
        yield application
    await application.services.aclose()


@pytest.fixture(scope="module")
async def app(database: str, es_url: str) -> AsyncIterator[ProcqueueApp]:
    async with opened_app(database, es_url, dashboard_secret=SECRET) as application:
        yield application


async def sql_job(dsn: str, task: str, args: str, queue: str, lock: str | None = None) -> int:
    """A job enqueued from SQL, as a trigger or an SQL caller does."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cursor = await conn.execute(
            "SELECT procqueue.add_job(%s, %s::jsonb, %s, %s, %s)", [task, args, queue, lock, lock]
        )
        row = await cursor.fetchone()
    assert row is not None and row[0] is not None
    job_id: int = row[0]
    return job_id


async def job_row(dsn: str, job_id: int) -> dict[str, Any]:
    async with await psycopg.AsyncConnection.connect(dsn, row_factory=dict_row) as conn:
        cursor = await conn.execute(
            "SELECT status::text, attempts, args FROM procrastinate.procrastinate_jobs"
            " WHERE id = %s",
            [job_id],
        )
        row = await cursor.fetchone()
    assert row is not None
    return row


async def error_rows(dsn: str, job_id: int) -> list[dict[str, Any]]:
    async with await psycopg.AsyncConnection.connect(dsn, row_factory=dict_row) as conn:
        cursor = await conn.execute(
            "SELECT attempt, error_type, message, traceback, transient, final"
            " FROM procqueue.job_errors WHERE job_id = %s ORDER BY id",
            [job_id],
        )
        return await cursor.fetchall()


async def test_a_job_of_an_unknown_task_is_left_for_a_worker_that_has_it(
    app: ProcqueueApp, database: str
) -> None:
    """A newer version's job met by an older worker (a rolling upgrade): not failed,
    no attempt spent, no error row; it waits for a worker that has the task, and health
    says how long it has waited."""
    job_id = await sql_job(database, "product:update", '{"id": "p-1"}', "sync", "product:p-1")
    await drain(app, concurrency=1)
    assert await job_row(database, job_id) == {
        "status": "todo", "attempts": 0, "args": {"id": "p-1"},
    }  # fmt: skip
    assert await error_rows(database, job_id) == []
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        cursor = await conn.execute(
            "SELECT p.reason, j.scheduled_at > now() FROM procqueue.job_postponements AS p"
            " JOIN procrastinate.procrastinate_jobs AS j ON j.id = p.job_id"
            " WHERE p.job_id = %s",
            [job_id],
        )
        assert await cursor.fetchone() == (
            "unknown task 'product:update': no task of that name in this worker; left for "
            "a worker that has it (a newer version: deploy it; a typo in what enqueued it: "
            f"`procqueue cancel {job_id}`)",
            True,
        )
        snapshot = await read_snapshot(conn, app.services.settings.health)
    [unknown] = snapshot.unknown_tasks
    assert (unknown.task_name, unknown.waiting) == ("product:update", 1)
    verdict = evaluate(snapshot, app.services.settings.health)
    assert any("task 'product:update' have waited" in reason for reason in verdict.reasons)
    # Out of the way of the module's other tests (their health would count it).
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        await conn.execute(
            "UPDATE procrastinate.procrastinate_jobs SET status = 'cancelled' WHERE id = %s",
            [job_id],
        )


async def test_arguments_a_task_does_not_take_fail_with_a_reason_naming_them(
    app: ProcqueueApp, database: str
) -> None:
    job_id = await sql_job(database, "test:flaky", '{"bogus": 1}', "tests")
    await drain(app, concurrency=1)
    assert (await job_row(database, job_id))["status"] == "failed"
    (error,) = await error_rows(database, job_id)
    assert error["error_type"] == "procqueue.engine.refusals.InvalidJobArgs"
    assert error["final"] and not error["transient"]
    assert "test:flaky" in error["message"] and "bogus" in error["message"]
    assert "failures" in error["message"]  # the argument it lacks


@pytest.mark.parametrize("args", ['"oops"', "[1, 2]", "3", "null", "true"])
async def test_args_that_are_not_an_object_are_refused_at_enqueue(database: str, args: str) -> None:
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.CheckViolation, match=ARGS_CONSTRAINT):
            await conn.execute(
                "SELECT procqueue.add_job('listing:update', %s::jsonb, 'sync')", [args]
            )
        with pytest.raises(psycopg.errors.CheckViolation, match=ARGS_CONSTRAINT):
            await conn.execute(
                "INSERT INTO procrastinate.procrastinate_jobs (queue_name, task_name, args)"
                " VALUES ('sync', 'listing:update', %s::jsonb)",
                [args],
            )


async def without_args_constraint(dsn: str) -> None:
    """The jobs table as it was before migration 0010 (no check on args)."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(
            f"ALTER TABLE procrastinate.procrastinate_jobs DROP CONSTRAINT {ARGS_CONSTRAINT}"
        )


async def test_a_job_whose_args_are_not_an_object_fails_and_frees_its_row(
    fresh_database: str, es_url: str
) -> None:
    database = fresh_database
    await without_args_constraint(database)
    lock = f"listing:{uuid.uuid4()}"
    bad = await sql_job(database, "test:flaky", '"oops"', "tests", lock)
    async with opened_app(database, es_url) as app:
        # A later job of the same row: it waits for the bad one's lock.
        async with app.pool.connection() as conn:
            await conn.execute(
                "UPDATE procrastinate.procrastinate_jobs SET queueing_lock = NULL WHERE id = %s",
                [bad],
            )
        later = await sql_job(database, "test:flaky", '{"failures": 0}', "tests", lock)
        await drain(app, concurrency=2)  # the bad job; the later one waits for its lock
        await drain(app, concurrency=2)  # the lock is free: the later one runs
    assert (await job_row(database, bad))["status"] == "failed"
    assert (await job_row(database, later))["status"] == "succeeded"
    (error,) = await error_rows(database, bad)
    assert error["error_type"] == "procqueue.engine.refusals.InvalidJobArgs"
    assert error["final"]
    assert "must be a JSON object" in error["message"] and "'oops'" in error["message"]


async def test_migrating_fails_the_jobs_whose_args_are_not_an_object(fresh_database: str) -> None:
    """Jobs written before migration 0010 with args that are not an object (a waiting
    one, and one stuck `doing` since its worker crashed on it) are failed by the
    migration, their args kept under "invalid_args", with a recorded reason."""
    database = fresh_database
    await without_args_constraint(database)
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        waiting = await sql_job(database, "listing:update", '"oops"', "sync", "listing:a")
        stuck = await sql_job(database, "listing:update", "[1]", "sync", "listing:b")
        await conn.execute(
            "WITH w AS (INSERT INTO procrastinate.procrastinate_workers DEFAULT VALUES"
            " RETURNING id) UPDATE procrastinate.procrastinate_jobs SET status = 'doing',"
            " worker_id = (SELECT id FROM w) WHERE id = %s",
            [stuck],
        )
        good = await sql_job(database, "listing:update", '{"id": "c"}', "sync", "listing:c")
        cursor = await conn.execute(
            "DELETE FROM procqueue.schema_migrations WHERE name LIKE '0010\\_%' RETURNING name"
        )
        assert len(await cursor.fetchall()) == 1
    migrate(database)

    assert await job_row(database, waiting) == {
        "status": "failed",
        "attempts": 0,
        "args": {"invalid_args": "oops"},
    }
    assert (await job_row(database, stuck))["status"] == "failed"
    assert (await job_row(database, stuck))["args"] == {"invalid_args": [1]}
    assert (await job_row(database, good))["status"] == "todo"
    for job_id in (waiting, stuck):
        (error,) = await error_rows(database, job_id)
        # The migration's record names the class where it lived then (append-only).
        assert error["error_type"] == "procqueue.worker.InvalidJobArgs"
        assert error["final"] and "must be a JSON object" in error["message"]
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.CheckViolation):
            await conn.execute("SELECT procqueue.add_job('listing:update', '\"x\"', 'sync')")


async def test_a_retry_by_hand_is_not_an_attempt(app: ProcqueueApp, database: str) -> None:
    job_id = await app.configure_task("test:flaky").defer_async(failures=99)
    await drain(app, concurrency=1)
    assert (await job_row(database, job_id))["attempts"] == 4  # the first run + 3 retries

    code, _, _ = await run_cli(database, "retry", str(job_id))
    assert code == 0
    assert {k: v for k, v in (await job_row(database, job_id)).items() if k != "args"} == {
        "status": "todo",
        "attempts": 4,
    }
    await drain(app, concurrency=1)
    assert (await job_row(database, job_id))["attempts"] == 5
    assert [e["attempt"] for e in await error_rows(database, job_id)] == [1, 2, 3, 4, 5]


async def test_a_retry_from_the_dashboard_is_not_an_attempt(
    app: ProcqueueApp, database: str, es_url: str
) -> None:
    job_id = await app.configure_task("test:broken").defer_async(reason="bad data")
    await drain(app, concurrency=1)
    assert (await job_row(database, job_id))["attempts"] == 1
    settings = app.services.settings.section(Settings)
    async with dashboard_client(settings, access_for(settings, "0.0.0.0", False)) as client:
        assert (await sign_in(client, "alice", SECRET)).status_code == 303
        page = await client.get(f"/jobs/{job_id}")
        response = await client.post(
            f"/jobs/{job_id}/retry", data={"csrf_token": csrf_from(page.text)}
        )
        assert response.status_code == 303
    assert {k: v for k, v in (await job_row(database, job_id)).items() if k != "args"} == {
        "status": "todo",
        "attempts": 1,
    }


def snapshot(*tasks_seen: tuple[str, int, int]) -> Snapshot:
    """Tasks as (name, succeeded, failed) in the last hour, one healthy worker."""
    return Snapshot(
        queues=[],
        tasks=[
            TaskHealth(
                task_name=name,
                runs=ok + failed,
                succeeded=ok,
                failed=failed,
                retries=0,
                aborted=0,
                success_rate=ok / (ok + failed),
                failure_rate=failed / (ok + failed),
                p50_seconds=None,
                p95_seconds=None,
                max_seconds=None,
            )
            for name, ok, failed in tasks_seen
        ],
        workers=[WorkerHealth(1, datetime.now(UTC), 0.0, 0, True)],
        tables=[],
        window=timedelta(hours=1),
    )


def test_the_failure_rule_flags_a_few_failures_among_few_runs() -> None:
    config = HealthConfig()
    # 5 failures in 31 runs, spread over three tasks (none has 20 runs, or 3 failures)
    verdict = evaluate(snapshot(("a", 10, 2), ("b", 8, 2), ("c", 8, 1)), config)
    assert verdict.status == Status.DEGRADED
    assert any("5 of 31" in reason for reason in verdict.reasons), verdict.reasons
    # one task with 3 failures in 9 runs
    verdict = evaluate(snapshot(("a", 6, 3)), config)
    assert verdict.status == Status.DEGRADED
    assert any("task 'a'" in reason and "3 of 9" in reason for reason in verdict.reasons)
    # most jobs fail: unhealthy
    assert evaluate(snapshot(("a", 1, 3)), config).status == Status.UNHEALTHY
    # fewer failures than min_failures: a blip, not a verdict
    assert evaluate(snapshot(("a", 1, 2)), config).status == Status.HEALTHY
    # many failures at a low rate: healthy
    assert evaluate(snapshot(("a", 9990, 10)), config).status == Status.HEALTHY


async def test_procqueue_health_is_degraded_by_5_failures_in_31_runs(fresh_database: str) -> None:
    database = fresh_database
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        for task, ok, failed in (("listing:update", 10, 2), ("inventory:update", 8, 2)):
            for index in range(ok + failed):
                status = "failed" if index < failed else "succeeded"
                await finished_job(
                    conn, task=task, queue="sync", status=status, ended_ago=60 + index, seconds=0.1
                )
        for index in range(9):
            await finished_job(
                conn, task="images:cleanup", queue="images",
                status="failed" if index == 0 else "succeeded", ended_ago=90, seconds=0.1,
            )  # fmt: skip
        await conn.execute("INSERT INTO procrastinate.procrastinate_workers DEFAULT VALUES")
    code, out, _ = await run_cli(database, "health")
    assert code == 1, out
    assert "5 of 31 jobs failed" in out


async def test_the_dashboards_counters_say_what_they_count(app: ProcqueueApp) -> None:
    settings = app.services.settings.section(Settings)
    async with dashboard_client(settings, access_for(settings, "0.0.0.0", False)) as client:
        assert (await sign_in(client, "alice", SECRET)).status_code == 303
        html = (await client.get("/")).text
    for label in (
        "failed jobs now",
        "failed for good, last 1 h",
        "failed for good, last 24 h",
        "Attempts ended in the last hour",
        "failed attempts ÷ attempts ended",
    ):
        assert label in html, label
