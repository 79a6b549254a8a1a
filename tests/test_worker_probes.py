"""A worker's own port answers `/livez` (its fetch loop and heartbeat go round) and
`/readyz` (Postgres answers), apart from the queue-wide health: a real `procqueue
worker` process (tests/support/cli_worker.py) with PROCQUEUE_METRICS_PORT, an
Elasticsearch that refuses connections, a Postgres behind a proxy that goes down, a
job that blocks the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from procqueue.app import build_app
from procqueue.local import free_port
from tests.conftest import make_settings
from tests.support import cli_worker
from tests.support.proxy import started_proxy, unreachable_url
from tests.support.worker import SELLER_ID, eventually
from tests.test_health_metrics import samples
from tests.test_operator_logs import worker_env

#: Short loops, so that a blocked worker reads dead within seconds: the heartbeat may
#: rest 0.2 + 1 + 6.25 s between turns (procqueue/engine/liveness.py).
QUICK = {"heartbeat_interval": "0.2", "stalled_timeout": "1"}


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


async def probe(port: int, path: str) -> tuple[int, str]:
    return await asyncio.to_thread(get, f"http://127.0.0.1:{port}{path}")


@contextlib.asynccontextmanager
async def worker_with_port(env: dict[str, str], log: Path) -> AsyncIterator[int]:
    """A `procqueue worker` process serving its port; its port, once it fetches."""
    port = free_port()
    process = await cli_worker.start_cli_worker({**env, "PROCQUEUE_METRICS_PORT": str(port)}, log)

    async def fetching() -> bool:
        if process.returncode is not None:
            text = await asyncio.to_thread(log.read_text)
            raise AssertionError(f"the worker exited: {text[-3000:]}")
        try:
            status, body = await probe(port, "/livez")
        except OSError:
            return False  # the port is not open yet
        return status == 200 and body.startswith("alive")

    try:
        await eventually(fetching, timeout=30, interval=0.1)
        yield port
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), timeout=40)


async def test_a_worker_is_alive_and_ready_while_elasticsearch_is_down(
    database: str, es_url: str, db: psycopg.AsyncConnection[Any], tmp_path: Path
) -> None:
    with unreachable_url() as down:
        env = worker_env(database, down)
        async with worker_with_port(env, tmp_path / "worker.log") as port:
            await db.execute(
                "INSERT INTO listings (user_id, title) VALUES (%s, 'while es is down')",
                [SELLER_ID],
            )

            async def circuit_open() -> bool:
                _, text = await probe(port, "/metrics")
                key = ("procqueue_sink_circuit_open", frozenset({("sink", "elasticsearch")}))
                return samples(text).get(key) == 1

            await eventually(circuit_open, timeout=30, interval=0.2)
            assert await probe(port, "/livez") == (
                200,
                "alive: the fetch loop and the heartbeat go round\n",
            )
            assert await probe(port, "/readyz") == (200, "ready: Postgres answers\n")
            # The queue-wide verdict is not this port's.
            status, body = await probe(port, "/healthz")
            assert status == 404 and "procqueue metrics" in body, body


async def test_ready_follows_postgres_while_alive_stays_200(
    database: str, es_url: str, tmp_path: Path
) -> None:
    params = conninfo_to_dict(database)
    target = f"postgresql://{params.get('host') or '127.0.0.1'}:{params.get('port') or 5432}"
    async with started_proxy(target) as proxy:
        # A password the probe must never echo (trust authentication ignores it).
        proxied = make_conninfo(
            database, host="127.0.0.1", port=str(proxy.port), password="probe-secret-7"
        )
        env = worker_env(proxied, es_url, **QUICK)
        async with worker_with_port(env, tmp_path / "worker.log") as port:
            assert (await probe(port, "/readyz"))[0] == 200
            await proxy.go_down()

            async def not_ready() -> bool:
                return (await probe(port, "/readyz"))[0] == 503

            await eventually(not_ready, timeout=10, interval=0.1)
            _, reason = await probe(port, "/readyz")
            assert reason.startswith("not ready: Postgres does not answer (DATABASE_URL): ")
            assert reason.count("\n") == 1 and "probe-secret-7" not in reason, reason
            # The worker waits the outage out: many heartbeats fail, none hangs.
            deadline = time.monotonic() + 4 * float(QUICK["stalled_timeout"])
            while time.monotonic() < deadline:
                assert (await probe(port, "/livez"))[0] == 200
                await asyncio.sleep(0.2)
            await proxy.come_back()

            async def ready() -> bool:
                return (await probe(port, "/readyz"))[0] == 200

            await eventually(ready, timeout=15, interval=0.1)


async def test_a_worker_whose_event_loop_is_blocked_reads_dead_then_alive_again(
    database: str, es_url: str, tmp_path: Path
) -> None:
    env = worker_env(database, es_url, job_timeout="1", **QUICK)
    async with worker_with_port(env, tmp_path / "worker.log") as port:
        app = build_app(make_settings(database, es_url))
        cli_worker.register(app)
        async with app.open_async():
            await app.configure_task("test:block_loop").defer_async(seconds=12)

        answers: list[str] = []

        async def dead() -> bool:
            status, body = await probe(port, "/livez")
            answers.append(body)
            return status == 503

        await eventually(dead, timeout=12, interval=0.2)
        reason = answers[-1]
        assert "the heartbeat is stale: no turn for" in reason, reason
        assert reason.endswith(": restart the worker\n") and reason.count("\n") == 1, reason
        assert (await probe(port, "/readyz"))[0] == 200  # Postgres is fine: a new connection

        async def alive() -> bool:
            return (await probe(port, "/livez"))[0] == 200

        await eventually(alive, timeout=15, interval=0.2)


async def test_a_stopping_worker_is_not_alive(database: str, es_url: str, tmp_path: Path) -> None:
    port = free_port()
    env = {**worker_env(database, es_url), "PROCQUEUE_METRICS_PORT": str(port)}
    log = tmp_path / "worker.log"
    process = await cli_worker.start_cli_worker(env, log)
    app = build_app(make_settings(database, es_url))
    cli_worker.register(app)
    async with app.open_async():
        job_id = await app.configure_task("test:sleep").defer_async(seconds=5)

    async def running() -> bool:
        async with await psycopg.AsyncConnection.connect(database) as conn:
            cursor = await conn.execute(
                "SELECT status::text FROM procrastinate.procrastinate_jobs WHERE id = %s",
                [job_id],
            )
            row = await cursor.fetchone()
        return row is not None and row[0] == "doing"

    stopped = False
    try:
        await eventually(running, timeout=30)
        process.send_signal(signal.SIGTERM)
        stopped = True

        answers: list[str] = []

        async def stopping() -> bool:
            status, body = await probe(port, "/livez")
            answers.append(body)
            return status == 503

        await eventually(stopping, timeout=4, interval=0.05)
        reason = answers[-1]
        assert reason.startswith("the worker is stopping"), reason
    finally:
        if not stopped:  # a second SIGTERM would kill it
            process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), timeout=40)
    assert process.returncode == 0, log.read_text()[-3000:]
