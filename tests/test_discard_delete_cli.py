"""`procqueue discard ID...` and `procqueue delete ID...`: the dashboard's discard and
delete (procqueue/queue/operations.py) from the command line, audited as `cli:<user>`."""

from __future__ import annotations

import getpass
from collections.abc import AsyncIterator

import psycopg
import pytest

from procqueue.engine.app import ProcqueueApp
from tests.conftest import make_settings
from tests.support import tasks
from tests.support.dashboard import audit_rows
from tests.support.history import run_cli
from tests.support.worker import drain


@pytest.fixture(scope="module")
async def app(database: str, es_url: str) -> AsyncIterator[ProcqueueApp]:
    async with tasks.opened_app(make_settings(database, es_url)) as application:
        yield application


async def status_of(dsn: str, job_id: int) -> str | None:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cursor = await conn.execute(
            "SELECT status::text FROM procrastinate.procrastinate_jobs WHERE id = %s", [job_id]
        )
        row = await cursor.fetchone()
    return None if row is None else str(row[0])


async def test_discard_then_delete_from_the_command_line(app: ProcqueueApp, database: str) -> None:
    failed = [
        await app.configure_task("test:broken").defer_async(reason=f"cli {n}") for n in range(2)
    ]
    await drain(app, queues=["tests"])
    code, out, _ = await run_cli(database, "discard", *map(str, failed))
    assert code == 0 and "discarded 2 job(s)" in out, out
    code, out, _ = await run_cli(database, "failed")
    assert all(f" {job_id} " not in f" {out} " for job_id in failed), out
    code, out, err = await run_cli(database, "retry", str(failed[0]))
    assert (code, out) == (1, "") and f"job {failed[0]} was discarded: not retried" in err
    code, out, err = await run_cli(database, "discard", str(failed[0]))
    assert (code, out) == (1, "")
    assert err.strip() == f"procqueue: job {failed[0]} was discarded already"

    running = await app.configure_task("test:flaky").defer_async(failures=0)
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        await conn.execute(
            "UPDATE procrastinate.procrastinate_jobs SET status = 'doing' WHERE id = %s", [running]
        )
    code, out, err = await run_cli(database, "delete", str(failed[0]), str(running), "999999999")
    assert code == 1
    assert err.splitlines() == [
        f"procqueue: job {running} is running: running jobs are not deleted "
        f"(abort it first: procqueue cancel --abort {running})",
        "procqueue: job 999999999 does not exist: not deleted",
    ], err
    assert out.splitlines() == ["deleted 1 job(s), 2 left alone"], out
    assert await status_of(database, failed[0]) is None
    assert await status_of(database, running) == "doing"
    actions = [(row["actor"], row["action"], row["job_ids"]) for row in await audit_rows(database)]
    actor = f"cli:{getpass.getuser()}"
    assert (actor, "discard_many", sorted(failed)) in actions
    assert actions[-1] == (actor, "delete_many", [failed[0]])
