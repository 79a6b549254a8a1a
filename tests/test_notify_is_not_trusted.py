"""Anyone who can connect may NOTIFY on Procrastinate's channels (Postgres checks no
privilege, and Supabase's `anon` can): the worker acts only on what the jobs table
says. A forged abort aborts nothing, garbage stops no worker."""

from __future__ import annotations

from collections.abc import AsyncIterator

import psycopg
import pytest

from procqueue.app import build_app
from procqueue.engine.app import ProcqueueApp
from tests.conftest import make_settings
from tests.support import tasks
from tests.support.supabase import act_as_api_user
from tests.support.worker import eventually, job_status, running_worker

#: A worker of every queue listens on the first, one of the `tests` queue on the second.
CHANNELS = ("procrastinate_any_queue_v1", "procrastinate_queue_v1#tests")


@pytest.fixture
async def app(database: str, es_url: str) -> AsyncIterator[ProcqueueApp]:
    application = build_app(make_settings(database, es_url, polling_interval=600))
    tasks.register(application)
    async with application.open_async():
        yield application


async def test_a_forged_abort_from_anon_aborts_nothing_and_garbage_stops_no_worker(
    app: ProcqueueApp, database: str
) -> None:
    target = await app.configure_task("test:block_first").defer_async()
    witness = await app.configure_task("test:block_first").defer_async()
    async with running_worker(app, queues=["tests"], concurrency=2) as worker:
        await eventually(lambda: _has_status(database, target, "doing"))
        await eventually(lambda: _has_status(database, witness, "doing"))
        async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
            await act_as_api_user(conn, "anon", None)
            for payload in (
                f'{{"type": "abort_job_requested", "job_id": {target}}}',
                "not json at all",
                '{"type": 5}',
                "[1, 2]",
                '{"type": "abort_job_requested", "job_id": "x"}',
            ):
                for channel in CHANNELS:
                    await conn.execute("SELECT pg_notify(%s, %s)", [channel, payload])
        # A real abort of the witness, announced on the same channel after the forged
        # ones: once it is aborted, the worker has read everything sent before it.
        assert await app.job_manager.cancel_job_by_id_async(witness, abort=True)
        await eventually(lambda: _has_status(database, witness, "aborted"))
        assert await job_status(database, target) == "doing"
        assert not worker.done(), "a notification stopped the worker"
        # The target is aborted when the jobs table says so.
        assert await app.job_manager.cancel_job_by_id_async(target, abort=True)
        await eventually(lambda: _has_status(database, target, "aborted"))


async def _has_status(database: str, job_id: int, wanted: str) -> bool:
    return await job_status(database, job_id) == wanted
