"""Pausing a queue (migration 0022): a real worker process claims none of its jobs
while it is paused (running ones finish), the pause outlives a worker restart, the
resume wakes the workers at once (a NOTIFY, not their poll), and a polling worker
behind a transaction pooler honours it too. Every pause and resume
is audited. `procqueue pause|resume|queues` and their refusals."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from procqueue.app import build_app
from procqueue.engine.app import ProcqueueApp
from procqueue.queue import operations
from procqueue.queue.batch import BatchSpec, claim_jobs_like
from tests.conftest import make_settings
from tests.support import cli_worker
from tests.support.dashboard import audit_rows, job_status
from tests.support.pgbouncer import Pgbouncer
from tests.support.worker import eventually
from tests.test_operator_logs import cli, worker_env

ACTOR = operations.Actor("test:operator", None)


@pytest.fixture(scope="module")
async def app(database: str, es_url: str) -> AsyncIterator[ProcqueueApp]:
    """The app, to defer the test tasks (a worker process runs them)."""
    application = build_app(make_settings(database, es_url))
    cli_worker.register(application)
    async with application.open_async():
        yield application


@contextlib.asynccontextmanager
async def worker(
    database: str, es_url: str, log: Path, **settings: str
) -> AsyncIterator[asyncio.subprocess.Process]:
    """`procqueue worker` (with the test tasks) as a child process, stopped by SIGTERM."""
    process = await cli_worker.start_cli_worker(
        worker_env(database, es_url, **settings), log, name=log.stem
    )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(process.wait(), timeout=60)


async def defer(app: ProcqueueApp, queue: str, task: str = "test:flaky", **args: Any) -> int:
    job_id: int = await app.configure_task(task, queue=queue).defer_async(
        **(args or {"failures": 0})
    )
    return job_id


async def status_is(database: str, job_id: int, wanted: str) -> bool:
    return await job_status(database, job_id) == wanted


async def wait_status(database: str, job_id: int, wanted: str, timeout: float = 30) -> None:
    async def reached() -> bool:
        return await status_is(database, job_id, wanted)

    await eventually(reached, timeout=timeout)


async def fetched_past(app: ProcqueueApp, database: str, job_id: int) -> None:
    """Wait until the worker has fetched after job `job_id` was due: a job of another
    queue, deferred after it (so later in fetch order), has run."""
    marker = await defer(app, f"other-{uuid.uuid4().hex[:6]}")
    assert marker > job_id
    await wait_status(database, marker, "succeeded")


async def pause(database: str, queue: str) -> operations.Outcome:
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        return await operations.pause_queue(conn, ACTOR, queue, known={queue})


async def resume(database: str, queue: str) -> operations.Outcome:
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        return await operations.resume_queue(conn, ACTOR, queue)


def queue_name() -> str:
    return f"pause-{uuid.uuid4().hex[:8]}"


async def test_a_worker_takes_nothing_from_a_paused_queue_lets_running_jobs_finish_and_resumes_at_once(  # noqa: E501
    app: ProcqueueApp, database: str, es_url: str, tmp_path: Path
) -> None:
    queue = queue_name()
    # A long poll: only the resume's NOTIFY can make the worker take the jobs quickly.
    async with worker(database, es_url, tmp_path / "w1.log", polling_interval="60"):
        running = await defer(app, queue, "test:sleep", seconds=1.5)
        await wait_status(database, running, "doing")
        paused = await pause(database, queue)
        assert not paused.problems, paused.message
        held = await defer(app, queue)  # announced by NOTIFY: the worker fetches, skips it
        await fetched_past(app, database, held)
        assert await job_status(database, held) == "todo"
        await wait_status(database, running, "succeeded")  # the running job finished
        assert await job_status(database, held) == "todo"

        started = time.monotonic()
        resumed = await resume(database, queue)
        assert not resumed.problems, resumed.message
        await wait_status(database, held, "succeeded", timeout=10)
        assert time.monotonic() - started < 10  # woken by the NOTIFY, not the 60 s poll


async def test_a_pause_outlives_a_worker_restart(
    app: ProcqueueApp, database: str, es_url: str, tmp_path: Path
) -> None:
    queue = queue_name()
    assert not (await pause(database, queue)).problems
    held = await defer(app, queue)
    async with worker(database, es_url, tmp_path / "first.log"):
        await fetched_past(app, database, held)
    assert await job_status(database, held) == "todo"
    async with worker(database, es_url, tmp_path / "second.log"):
        await fetched_past(app, database, held)
        assert await job_status(database, held) == "todo"
        assert not (await resume(database, queue)).problems
        await wait_status(database, held, "succeeded")


async def test_a_polling_worker_through_a_transaction_pooler_honours_the_pause(
    app: ProcqueueApp, database: str, es_url: str, tmp_path: Path, pgbouncer: Pgbouncer
) -> None:
    """Through pgbouncer in transaction mode (no LISTEN: the worker polls), the poll's
    fetch skips the paused queue, and takes its jobs at the first poll after the
    resume (made through the pooler too)."""
    pooled = pgbouncer.via(database)
    queue = queue_name()
    assert not (await pause(pooled, queue)).problems
    held = await defer(app, queue)
    log = tmp_path / "polling.log"
    settings = {"transaction_pooler": "true", "polling_interval": "0.2"}
    async with worker(pooled, es_url, log, **settings):
        await fetched_past(app, database, held)
        assert await job_status(database, held) == "todo"
        assert not (await resume(pooled, queue)).problems
        await wait_status(database, held, "succeeded")
    assert "polls every 0.2 s instead" in log.read_text()


async def test_a_paused_queue_gives_no_job_to_a_batch_claim(
    app: ProcqueueApp, database: str
) -> None:
    """A running job's claim of more jobs for its batch (procqueue/queue/batch.py)
    skips a paused queue too."""
    spec = BatchSpec(task_names=("test:keyed",), key_arg="id", size=10)
    queue = queue_name()
    async with app.pool.connection() as conn:
        await conn.execute(
            "SELECT procqueue.add_job('test:keyed', jsonb_build_object('id', 'k1'), %s)", [queue]
        )
        cursor = await conn.execute(
            "INSERT INTO procrastinate.procrastinate_workers DEFAULT VALUES RETURNING id"
        )
        row = await cursor.fetchone()
    assert row is not None
    try:
        assert not (await pause(database, queue)).problems
        assert await claim_jobs_like(app.pool, spec, queue, row[0], 10) == []
        assert not (await resume(database, queue)).problems
        assert len(await claim_jobs_like(app.pool, spec, queue, row[0], 10)) == 1
    finally:
        async with app.pool.connection() as conn:
            await conn.execute(
                "DELETE FROM procrastinate.procrastinate_jobs WHERE queue_name = %s", [queue]
            )
            await conn.execute(
                "DELETE FROM procrastinate.procrastinate_workers WHERE id = %s", [row[0]]
            )


async def test_pause_and_resume_are_audited_and_refused_when_they_change_nothing(
    database: str,
) -> None:
    queue = queue_name()
    first = await pause(database, queue)
    again = await pause(database, queue)
    assert again.problems == [again.message]
    assert again.message.startswith(f"queue {queue!r} is already paused (since ")
    assert "by test:operator" in again.message
    assert not (await resume(database, queue)).problems
    not_paused = await resume(database, queue)
    assert not_paused.message == f"queue {queue!r} is not paused: nothing to resume"
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        unknown = await operations.pause_queue(conn, ACTOR, queue + "-typo")
    assert unknown.problems and "is unknown" in unknown.message

    rows = [
        row
        for row in await audit_rows(database)
        if row["target"].get("queue", "").startswith(queue)
    ]
    assert [(row["action"], row["actor"], row["outcome"]) for row in rows] == [
        ("pause_queue", "test:operator", first.message),
        ("pause_queue", "test:operator", again.message),
        ("resume_queue", "test:operator", rows[2]["outcome"]),
        ("resume_queue", "test:operator", not_paused.message),
        ("pause_queue", "test:operator", unknown.message),
    ]
    assert rows[2]["outcome"].startswith(f"queue {queue!r} resumed (paused since ")
    assert all(row["job_ids"] == [] for row in rows)


async def test_the_pause_commands_and_the_queue_list(
    app: ProcqueueApp, database: str, es_url: str
) -> None:
    def run(*args: str) -> Any:
        return cli(database, es_url, *args)

    unknown = await asyncio.to_thread(run, "pause", "no-such-queue")
    assert unknown.returncode == 1
    assert unknown.stderr.strip().splitlines() == [
        "queue 'no-such-queue' is unknown (no job, worker or task of procqueue uses it): "
        "check the name with `procqueue queues`"
    ]
    # A queue of procqueue's own tasks may be paused before it has any job.
    paused = await asyncio.to_thread(run, "pause", "notifications", "--reason", "SMTP migration")
    assert paused.returncode == 0, paused.stderr
    assert paused.stdout.strip() == (
        "queue 'notifications' paused: workers take none of its jobs until it is resumed; "
        "running jobs finish"
    )
    again = await asyncio.to_thread(run, "pause", "notifications")
    assert again.returncode == 1 and "already paused" in again.stderr

    queue = queue_name()
    waiting = [await defer(app, queue) for _ in range(3)]
    assert waiting
    listing = await asyncio.to_thread(run, "queues")
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert lines[0].split() == [
        "queue", "state", "waiting", "scheduled", "running", "failed", "workers", "slots"
    ]  # fmt: skip
    rows = {line.split()[0]: line.split() for line in lines[2:] if line and "  " in line}
    assert rows["notifications"][:3] == ["notifications", "paused", "0"]
    assert rows[queue][:3] == [queue, "active", "3"]
    assert any(
        line.startswith("notifications paused since ")
        and "by cli:" in line
        and line.endswith(": SMTP migration (`procqueue resume notifications`)")
        for line in lines
    ), listing.stdout

    resumed = await asyncio.to_thread(run, "resume", "notifications")
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.startswith("queue 'notifications' resumed (paused since ")
    not_paused = await asyncio.to_thread(run, "resume", "notifications")
    assert not_paused.returncode == 1
    assert not_paused.stderr.strip() == "queue 'notifications' is not paused: nothing to resume"

    async with await psycopg.AsyncConnection.connect(database) as conn:
        cursor = conn.cursor(row_factory=dict_row)
        await cursor.execute(
            "SELECT action, actor, target FROM procqueue.dashboard_actions"
            " WHERE target->>'queue' IN ('notifications', 'no-such-queue') ORDER BY id"
        )
        audited = await cursor.fetchall()
    assert [row["action"] for row in audited] == [
        "pause_queue", "pause_queue", "pause_queue", "resume_queue", "resume_queue"
    ]  # fmt: skip
    assert all(row["actor"].startswith("cli:") for row in audited)
    assert audited[1]["target"] == {"queue": "notifications", "reason": "SMTP migration"}
