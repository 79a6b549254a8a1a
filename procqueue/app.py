"""The Procrastinate App: connector, worker defaults and tasks.

`procqueue.app.app` is built on first access from the process settings, so
`procrastinate --app=procqueue.app.app worker` works; tests and tools call
`build_app(settings)` with settings of their own.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import procrastinate
from elasticsearch import AsyncElasticsearch
from procrastinate import JobContext
from psycopg_pool import AsyncConnectionPool

from procqueue.entities import Entity, EntityRegistry, load_entities
from procqueue.middleware import EnforceTimeout, RecordFailures
from procqueue.migrate import PROCRASTINATE_SCHEMA
from procqueue.processors.sync import sync_entity
from procqueue.retry import BackoffRetry
from procqueue.settings import Settings, get_settings
from procqueue.sinks.search import SearchIndex, make_client

logger = logging.getLogger(__name__)

SYNC_OPERATIONS = ("create", "update", "delete")


@dataclass
class Services:
    """What jobs talk to, created once per app and shared by every job."""

    settings: Settings
    entities: EntityRegistry
    _client: AsyncElasticsearch | None = field(default=None, repr=False)

    @property
    def search(self) -> SearchIndex:
        if self._client is None:
            self._client = make_client(self.settings)
        return SearchIndex(self._client, self.settings.index_prefix)

    def secrets(self) -> tuple[str, ...]:
        """Values that must never reach a log line or an error record."""
        values = [self.settings.dsn]
        password = _password_of(self.settings.dsn)
        if password:
            values.append(password)
        if self.settings.elasticsearch_api_key:
            values.append(self.settings.elasticsearch_api_key.get_secret_value())
        return tuple(values)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


class ProcqueueApp(procrastinate.App):
    """A Procrastinate App that also carries the services its jobs use."""

    services: Services


def _password_of(dsn: str) -> str | None:
    return urlsplit(dsn).password


async def _use_queue_schema(conn: Any) -> None:
    # Procrastinate's SQL names its tables unqualified: point it at its schema.
    await conn.execute(f"SET search_path TO {PROCRASTINATE_SCHEMA}, public")
    await conn.commit()


def make_connector(settings: Settings) -> procrastinate.PsycopgConnector:
    connection_kwargs: dict[str, Any] = {"application_name": "procqueue-worker"}
    if settings.uses_transaction_pooler:
        # Transaction pooling cannot keep prepared statements between transactions.
        connection_kwargs["prepare_threshold"] = None
    return procrastinate.PsycopgConnector(
        conninfo=settings.dsn,
        kwargs=connection_kwargs,
        configure=_use_queue_schema,
        min_size=1,
        max_size=settings.concurrency + 2,
        name="procqueue",
    )


def worker_options(settings: Settings, services: Services) -> dict[str, Any]:
    if not settings.use_listen_notify:
        logger.warning(
            "DATABASE_URL uses port 6543 (Supabase transaction pooler), where LISTEN/NOTIFY "
            "cannot work: the worker polls every %g s instead. Use the direct connection "
            "or the session pooler (port 5432) for instant pick-up.",
            settings.polling_interval,
        )
    return {
        "concurrency": settings.concurrency,
        "listen_notify": settings.use_listen_notify,
        "fetch_job_polling_interval": settings.polling_interval,
        "worker_middleware": [
            RecordFailures(services.secrets()),
            EnforceTimeout(settings.job_timeout),
        ],
    }


def register_sync_tasks(app: ProcqueueApp, entity: Entity, retry: BackoffRetry) -> None:
    """`<entity>:create|update|delete`: one processor registered under three names."""

    async def sync(context: JobContext, id: str) -> str:
        connector = context.app.connector
        pool: AsyncConnectionPool[Any] = connector.pool  # type: ignore[attr-defined]
        return await sync_entity(pool, app.services.search, entity, id)

    for operation in SYNC_OPERATIONS:
        app.task(
            name=entity.task_name(operation), queue=entity.queue, pass_context=True, retry=retry
        )(sync)


def build_app(settings: Settings) -> ProcqueueApp:
    entities = EntityRegistry(load_entities(settings.entities_file))
    services = Services(settings=settings, entities=entities)
    app = ProcqueueApp(connector=make_connector(settings))
    app.services = services
    app.worker_defaults = worker_options(settings, services)  # type: ignore[assignment]
    retry = BackoffRetry(settings.max_retries, settings.retry_backoff, settings.retry_backoff_max)
    for entity in entities.entities:
        register_sync_tasks(app, entity, retry)
    return app


_app: ProcqueueApp | None = None


def __getattr__(name: str) -> Any:
    """`procqueue.app.app`, built from the process settings on first use."""
    global _app
    if name == "app":
        if _app is None:
            _app = build_app(get_settings())
        return _app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
