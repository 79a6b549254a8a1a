"""The Procrastinate App: connector, worker defaults and tasks.

`procqueue.app.app` is built on first access from the process settings, so
`procrastinate --app=procqueue.app.app worker` works; tests and tools call
`build_app(settings)` with settings of their own. Settings that are missing or
wrong end the process there with one line and status 2, as `procqueue` does:
Procrastinate's command would otherwise print the whole traceback of the import.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from procqueue.engine.app import ProcqueueApp
from procqueue.engine.connections import FailFastPool, pool_arguments
from procqueue.engine.qualified import QualifiedPsycopgConnector
from procqueue.engine.services import Services
from procqueue.engine.worker import WORKER_APPLICATION
from procqueue.entities import EntityRegistry, load_entities
from procqueue.errors import ProcqueueError
from procqueue.features import Settings, features, get_settings, warn_unknown_variables
from procqueue.queue import maintenance
from procqueue.queue.middleware import worker_middleware
from procqueue.queue.retry import BackoffRetry

logger = logging.getLogger(__name__)


def make_connector(settings: Settings) -> QualifiedPsycopgConnector:
    """Procrastinate's connector, running its queries schema-qualified: its pooled
    connections get no `SET search_path` (nor any other session state), so they are
    safe behind a transaction pooler and need no role-level setting."""
    return QualifiedPsycopgConnector(
        **pool_arguments(
            settings.dsn,
            transaction_pooler=settings.uses_transaction_pooler,
            application_name=WORKER_APPLICATION,
            min_size=1,
            max_size=settings.concurrency + 2,
            name="procqueue",
        ),
        pool_factory=FailFastPool,
    )


def job_sinks(settings: Settings) -> dict[str, str]:
    """Task name -> the outside service its jobs call, from the features' job specs."""
    schema = settings.schema_config()
    return {
        spec.task_name: spec.sink
        for feature in features()
        for spec in feature.job_specs(schema)
        if spec.sink is not None
    }


def worker_options(settings: Settings) -> dict[str, Any]:
    if not settings.use_listen_notify and settings.uses_transaction_pooler:
        logger.warning(
            "DATABASE_URL goes through a transaction pooler (port 6543 or "
            "PROCQUEUE_TRANSACTION_POOLER), where LISTEN/NOTIFY cannot work: the worker "
            "polls every %g s instead. Use the direct connection or the session pooler "
            "(port 5432) for instant pick-up.",
            settings.polling_interval,
        )
    return {
        "concurrency": settings.concurrency,
        "listen_notify": settings.use_listen_notify,
        "fetch_job_polling_interval": settings.polling_interval,
        "update_heartbeat_interval": settings.heartbeat_interval,
        "stalled_worker_timeout": settings.stalled_timeout,
        "shutdown_graceful_timeout": settings.shutdown_timeout,
        "worker_middleware": worker_middleware(settings, job_sinks(settings)),
    }


def build_app(settings: Settings) -> ProcqueueApp:
    entities = EntityRegistry(load_entities(settings.entities_file))
    app = ProcqueueApp(connector=make_connector(settings))
    app.services = Services(settings=settings, entities=entities)
    app.worker_defaults = worker_options(settings)  # type: ignore[assignment]
    app.retry = BackoffRetry(
        settings.max_retries, settings.retry_backoff, settings.retry_backoff_max
    )
    for feature in features():
        feature.register(app)
    maintenance.register(app)
    return app


_app: ProcqueueApp | None = None


def __getattr__(name: str) -> Any:
    """`procqueue.app.app`, built from the process settings on first use."""
    global _app
    if name == "app":
        if _app is None:
            warn_unknown_variables()
            try:
                _app = build_app(get_settings())
            except ProcqueueError as error:
                print(f"procqueue: error: {error}", file=sys.stderr)
                raise SystemExit(2) from None
        return _app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
