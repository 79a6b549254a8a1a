"""`/metrics` and `/healthz` over HTTP, as Starlette routes.

`health_routes(source)` gives the two routes for any Starlette app (the
dashboard mounts them, with a HealthSource on its own pool); `create_app(settings)`
is the standalone app served by `procqueue metrics`, with a small pool of its own.
Each request reads one health snapshot from Postgres; if Postgres does not answer,
`/metrics` still serves the process's own metrics with `procqueue_health_up 0` and
`/healthz` answers 503. A worker's own port (`/metrics`, `/livez`, `/readyz`) is
procqueue/engine/probes.py.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import psycopg
import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from procqueue.engine.connections import async_pool, pool_lifespan
from procqueue.queue.health import (
    HealthConfig,
    Snapshot,
    Status,
    Verdict,
    as_json,
    evaluate,
    read_snapshot,
)
from procqueue.queue.metrics import render_metrics
from procqueue.settings import CoreSettings

logger = logging.getLogger(__name__)

UP_METRIC = (
    "# HELP procqueue_health_up Whether the health SQL answered for this scrape.\n"
    "# TYPE procqueue_health_up gauge\n"
    "procqueue_health_up {value}\n"
)


#: How long a snapshot waits for a second connection before reading on one (seconds).
SECOND_CONNECTION_WAIT = 0.05

#: What `HealthSource.read` answers None for: Postgres did not answer.
UNANSWERED = (psycopg.Error, TimeoutError)


class HealthSource:
    """Reads health snapshots through a connection pool its owner opens and closes."""

    def __init__(self, config: HealthConfig, pool: AsyncConnectionPool[Any]) -> None:
        self.config = config
        self.pool = pool

    async def snapshot(self) -> Snapshot:
        """A snapshot; raises psycopg.Error or TimeoutError when Postgres does not answer.
        Read on two of the pool's connections side by side when a second one is free at
        once (never waiting for it: pages reading at the same time could each hold one
        and wait for another), else on one."""
        async with self.pool.connection(timeout=5) as conn:
            try:
                async with self.pool.connection(timeout=SECOND_CONNECTION_WAIT) as second:
                    return await read_snapshot(conn, self.config, second)
            except PoolTimeout:
                return await read_snapshot(conn, self.config)

    async def read(self) -> tuple[Snapshot, Verdict] | None:
        """A snapshot and its verdict; None (logged) when Postgres does not answer."""
        try:
            snapshot = await self.snapshot()
        except UNANSWERED as error:
            self.unanswered(error)
            return None
        return snapshot, evaluate(snapshot, self.config)

    def unanswered(self, error: BaseException) -> None:
        """Log why a snapshot could not be read (`read` answers None then)."""
        logger.warning("health SQL failed: %s: %s", type(error).__name__, error)


def health_routes(source: HealthSource) -> list[Route]:
    """`GET /metrics` (Prometheus text) and `GET /healthz` (JSON, 503 when unhealthy)."""

    async def metrics(request: Request) -> Response:
        read = await source.read()
        body = render_metrics(*(read or (None, None)))
        body += UP_METRIC.format(value=1 if read else 0).encode()
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    async def healthz(request: Request) -> Response:
        read = await source.read()
        if read is None:
            payload: dict[str, Any] = {
                "status": "unhealthy",
                "reasons": ["the database did not answer the health queries"],
            }
            code = 503
        else:
            snapshot, verdict = read
            payload = as_json(snapshot, verdict)
            code = 503 if verdict.status is Status.UNHEALTHY else 200
        return Response(
            json.dumps(payload, default=str), status_code=code, media_type="application/json"
        )

    return [Route("/metrics", metrics), Route("/healthz", healthz)]


def create_app(settings: CoreSettings) -> Starlette:
    pool: AsyncConnectionPool[Any] = async_pool(
        settings.dsn,
        transaction_pooler=settings.uses_transaction_pooler,
        application_name="procqueue-metrics",
        min_size=1,
        max_size=2,
    )
    source = HealthSource(settings.health, pool)

    return Starlette(routes=health_routes(source), lifespan=pool_lifespan(pool))


def make_server(settings: CoreSettings, host: str, port: int) -> uvicorn.Server:
    config = uvicorn.Config(
        create_app(settings), host=host, port=port, log_level="warning", lifespan="on"
    )
    return uvicorn.Server(config)
