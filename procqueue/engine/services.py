"""What an app's jobs share: the settings, the entities, and every client a
feature provides (`Services`), each named by a typed `ServiceKey`."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

from procqueue.engine.liveness import Liveness
from procqueue.entities import EntityRegistry
from procqueue.settings import CoreSettings

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

    def __init__(self, settings: CoreSettings, entities: EntityRegistry) -> None:
        self.settings = settings
        self.entities = entities
        self._providers: dict[str, _Provider[Any]] = {}
        self._clients: dict[str, Any] = {}  # in the order they were made
        #: The running worker's loops, for `/livez` (procqueue/engine/liveness.py).
        self.liveness: Liveness | None = None

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
