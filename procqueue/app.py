"""The Procrastinate App: connector, worker defaults and tasks.

`procqueue.app.app` is built on first access from the process settings, so
`procrastinate --app=procqueue.app.app worker` works; tests and tools call
`build_app(settings)` with settings of their own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import procrastinate

from procqueue.entities import EntityRegistry, load_entities
from procqueue.middleware import worker_middleware
from procqueue.migrate import PROCRASTINATE_SCHEMA
from procqueue.monitoring import maintenance
from procqueue.processors import bulk, images, notifications, sync
from procqueue.retry import BackoffRetry
from procqueue.runtime import ProcqueueApp, Services
from procqueue.settings import Settings, get_settings

logger = logging.getLogger(__name__)

Registrar = Callable[[ProcqueueApp, BackoffRetry], None]

#: Each job family registers its tasks; add a family by adding its module here.
REGISTRARS: tuple[Registrar, ...] = (
    sync.register,
    bulk.register,
    images.register,
    notifications.register,
    maintenance.register,
)


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


def worker_options(settings: Settings) -> dict[str, Any]:
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
        "update_heartbeat_interval": settings.heartbeat_interval,
        "stalled_worker_timeout": settings.stalled_timeout,
        "worker_middleware": worker_middleware(settings),
    }


def build_app(settings: Settings) -> ProcqueueApp:
    entities = EntityRegistry(load_entities(settings.entities_file))
    app = ProcqueueApp(connector=make_connector(settings))
    app.services = Services(settings=settings, entities=entities)
    app.worker_defaults = worker_options(settings)  # type: ignore[assignment]
    retry = BackoffRetry(settings.max_retries, settings.retry_backoff, settings.retry_backoff_max)
    for register in REGISTRARS:
        register(app, retry)
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
