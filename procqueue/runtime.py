"""What jobs share: the App type and the services it carries; how a worker starts
(preflight checks) and stops (non-zero when it stopped on a failure). The worker
itself is procqueue/worker.py."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

import procrastinate
from psycopg_pool import AsyncConnectionPool
from typing_extensions import Unpack

from procqueue import preflight
from procqueue.entities import EntityRegistry
from procqueue.queue import sentry
from procqueue.settings import Settings
from procqueue.worker import Worker, WorkerStopped, first_line

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class ServiceKey(Generic[T]):
    """The name of one shared client, typed with the client's type. A feature defines
    its key and a typed accessor next to its client, e.g. procqueue/search/client.py:

        SEARCH_INDEX: ServiceKey[SearchIndex] = ServiceKey("search")

        def search_index(services: Services) -> SearchIndex:
            return services.get(SEARCH_INDEX)
    """

    name: str


@dataclass(frozen=True)
class _Provider(Generic[T]):
    factory: Callable[[], T]
    close: Callable[[T], Awaitable[None]] | None


class Services:
    """Everything an app's jobs share: the settings, the entities, and every client
    (search index, Cloudinary deleter, notification channels...). The core names no
    client: each feature's register hook `provide`s its own, with a factory and a
    closer; a client is made on its first `get` and reused; `aclose` closes all of
    those made so far (a later `get` makes a new one)."""

    def __init__(self, settings: Settings, entities: EntityRegistry) -> None:
        self.settings = settings
        self.entities = entities
        self._providers: dict[str, _Provider[Any]] = {}
        self._clients: dict[str, Any] = {}  # in the order they were made

    def __repr__(self) -> str:
        return f"Services(provided={sorted(self._providers)}, made={list(self._clients)})"

    def provide(
        self,
        key: ServiceKey[T],
        factory: Callable[[], T],
        close: Callable[[T], Awaitable[None]] | None = None,
    ) -> None:
        """Say how to make (and close) the client `key` names; once per key."""
        if key.name in self._providers:
            raise ValueError(f"a service named {key.name!r} is provided already")
        self._providers[key.name] = _Provider(factory, close)

    def get(self, key: ServiceKey[T]) -> T:
        """The client `key` names, made now if this is its first use. A factory that
        raises makes nothing: the next `get` tries again."""
        if key.name not in self._clients:
            provider = self._providers.get(key.name)
            if provider is None:
                raise LookupError(
                    f"no service named {key.name!r}: its feature did not register "
                    f"(provided: {', '.join(sorted(self._providers)) or 'none'})"
                )
            self._clients[key.name] = provider.factory()
        return cast(T, self._clients[key.name])

    async def aclose(self) -> None:
        """Close every client made so far, the last made first. A closer that fails
        does not keep the others open: its error is raised once all were tried."""
        clients, self._clients = self._clients, {}
        errors: list[Exception] = []
        for name, client in reversed(clients.items()):
            close = self._providers[name].close
            if close is None:
                continue
            try:
                await close(client)
            except Exception as error:
                logger.warning("closing service %s failed: %s", name, error)
                errors.append(error)
        if errors:
            raise errors[0]


class ProcqueueApp(procrastinate.App):
    """A Procrastinate App that also carries the services its jobs use."""

    services: Services

    @property
    def pool(self) -> AsyncConnectionPool[Any]:
        """The connector's psycopg pool. Its connections carry no session state (the
        same through a transaction pooler): SQL names the queue's objects with their
        schema, `procrastinate.` or `procqueue.` (procqueue/qualified.py)."""
        pool: AsyncConnectionPool[Any] = self.connector.pool  # type: ignore[attr-defined]
        return pool

    async def preflight(self) -> None:
        """Refuse to work (PreflightError, one line) on a database or role where the
        worker cannot work correctly (procqueue/preflight.py)."""
        settings = self.services.settings
        async with self.pool.connection() as conn:
            await preflight.check_worker(
                conn,
                self.services.entities.entities,
                (settings.notifications_table, settings.push_tokens_table),
            )

    def _worker(self, **kwargs: Unpack[procrastinate.app.WorkerOptions]) -> Worker:
        options: procrastinate.app.WorkerOptions = {**self.worker_defaults, **kwargs}
        return Worker(app=self, **options)

    async def run_worker_async(self, **kwargs: Unpack[procrastinate.app.WorkerOptions]) -> None:
        """Procrastinate's worker, after the preflight checks; raises WorkerStopped when
        a failure (not a signal) stopped it. `procqueue worker` and `procrastinate
        --app=procqueue.app.app worker` both come here, so both exit non-zero."""
        await self.preflight()
        sentry.init_sentry(self.services.settings)
        self.perform_import_paths()  # type: ignore[no-untyped-call]
        worker = self._worker(**kwargs)
        await worker.run()  # type: ignore[no-untyped-call]
        if worker.side_task_failure is not None:
            name, error = worker.side_task_failure
            raise WorkerStopped(f"the worker stopped: its {name} task failed: {first_line(error)}")
