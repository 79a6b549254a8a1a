"""The Elasticsearch side: versioned indexes behind aliases, and documents in them.

An entity's index is `<prefix><alias>_v1` reached through `<prefix><alias>`, so
that a reindex can build `_v2` and swap the alias without downtime. Client
errors are translated into SinkUnavailable (the cluster is down or overloaded) /
PermanentError here, once.

The client takes a SearchConfig (`SearchSettings.search`). A worker's jobs share one
SearchIndex through the app's Services: `search_index(app.services)`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import elasticsearch
from elasticsearch import AsyncElasticsearch

from procqueue.engine.services import ServiceKey, Services
from procqueue.entities import Entity
from procqueue.errors import PermanentError, SinkUnavailable
from procqueue.search.jobs import SINK
from procqueue.search.settings import SearchConfig

INITIAL_VERSION = 1
#: Per-item statuses of a versioned write that mean "done": 409 = a newer version
#: is already there; 404 on a delete = nothing to delete.
DONE_STATUSES = frozenset({200, 201, 409})


@dataclass(frozen=True)
class Write:
    """One document to put (document) or remove (document None) in one index."""

    index: str
    entity_id: str
    document: Mapping[str, Any] | None


@dataclass(frozen=True)
class ItemFailure:
    """A write Elasticsearch refused, with its per-item status and reason."""

    write: Write
    status: int
    reason: str

    @property
    def transient(self) -> bool:
        return self.status == 429 or self.status >= 500


def _failure(write: Write, item: Mapping[str, Any]) -> ItemFailure | None:
    status = int(item.get("status", 500))
    if status in DONE_STATUSES or (status == 404 and write.document is None):
        return None
    error = item.get("error") or {}
    if isinstance(error, Mapping):
        reason = f"{error.get('type', 'error')}: {error.get('reason', '')}"
    else:
        reason = str(error)
    return ItemFailure(write, status, reason)


def make_client(config: SearchConfig) -> AsyncElasticsearch:
    return AsyncElasticsearch(
        config.url,
        api_key=config.api_key.get_secret_value() if config.api_key else None,
        request_timeout=config.timeout,
        max_retries=1,
        retry_on_timeout=False,
    )


@contextlib.contextmanager
def translate_errors(action: str) -> Iterator[None]:
    """Turn client errors into transient (retry) or permanent (fail now) ones."""
    try:
        yield
    except elasticsearch.ApiError as error:
        status = error.meta.status
        reason = f"Elasticsearch answered {status} to {action}: {error.message}"
        if status == 429 or status >= 500:
            raise SinkUnavailable(SINK, reason) from error
        raise PermanentError(reason) from error
    except elasticsearch.TransportError as error:  # connection refused, timeout, TLS
        raise SinkUnavailable(
            SINK,
            f"Elasticsearch unreachable during {action}: {type(error).__name__}: {error.message}",
        ) from error


class SearchIndex:
    """Documents of the configured entities in Elasticsearch."""

    def __init__(
        self,
        client: AsyncElasticsearch,
        prefix: str = "",
        bulk_concurrency: int = 2,
        timeout: float = 10.0,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self._ready: set[str] = set()
        # A request that waits in a busy server's queue runs into the client's
        # timeout, and the server still does its work: the circuit then stops
        # every job and the writes are sent again. Waiting here costs neither,
        # as long as it is bounded by the same timeout (then it is an outage).
        self._bulk_slots = asyncio.Semaphore(bulk_concurrency)
        self._bulk_concurrency = bulk_concurrency
        self._timeout = timeout

    @classmethod
    def from_config(cls, config: SearchConfig) -> SearchIndex:
        """A client of its own on `config`'s cluster and prefix; `aclose` closes it."""
        return cls(
            make_client(config), config.index_prefix, config.bulk_concurrency, config.timeout
        )

    async def aclose(self) -> None:
        await self.client.close()

    def alias(self, entity: Entity) -> str:
        return f"{self.prefix}{entity.index}"

    def versioned_name(self, entity: Entity, version: int) -> str:
        return f"{self.alias(entity)}_v{version}"

    async def ensure_index(self, entity: Entity) -> None:
        """Create the first versioned index behind the alias, unless the alias exists."""
        alias = self.alias(entity)
        if alias in self._ready:
            return
        with translate_errors(f"checking alias {alias}"):
            exists = await self.client.indices.exists_alias(name=alias)
        if not exists:
            await self.create_index(entity, INITIAL_VERSION, alias=True)
        self._ready.add(alias)

    async def create_index(self, entity: Entity, version: int, *, alias: bool) -> str:
        name = self.versioned_name(entity, version)
        body: dict[str, Any] = {"mappings": entity.mappings()}
        if alias:
            body["aliases"] = {self.alias(entity): {}}
        with translate_errors(f"creating index {name}"):
            try:
                await self.client.indices.create(index=name, **body)
            except elasticsearch.BadRequestError as error:
                # Another worker created it first: that is what we wanted.
                if error.error != "resource_already_exists_exception":
                    raise
        return name

    async def put(self, entity: Entity, entity_id: str, document: Mapping[str, Any]) -> None:
        await self.ensure_index(entity)
        with translate_errors(f"indexing {entity.name} {entity_id}"):
            await self.client.index(index=self.alias(entity), id=entity_id, document=document)

    @contextlib.asynccontextmanager
    async def _bulk_slot(self, action: str) -> AsyncIterator[None]:
        try:
            async with asyncio.timeout(self._timeout):
                await self._bulk_slots.acquire()
        except TimeoutError:
            raise SinkUnavailable(
                SINK,
                f"Elasticsearch is too slow: {action} waited {self._timeout:g} s for one of "
                f"this worker's {self._bulk_concurrency} bulk requests in flight to end "
                "(PROCQUEUE_ELASTICSEARCH_BULK_CONCURRENCY)",
            ) from None
        try:
            yield
        finally:
            self._bulk_slots.release()

    async def write_versioned(self, writes: Sequence[Write], version: int) -> list[ItemFailure]:
        """One `_bulk` request: index or delete each write with `version` as its
        external version, so an older read never overwrites a newer one (409: a
        newer state is there = done), once one of this index's `bulk_concurrency`
        slots is free. Returns the items Elasticsearch refused."""
        if not writes:
            return []
        operations: list[Mapping[str, Any]] = []
        for write in writes:
            meta = {
                "_index": write.index, "_id": write.entity_id,
                "version": version, "version_type": "external",
            }  # fmt: skip
            if write.document is None:
                operations.append({"delete": meta})
            else:
                operations += [{"index": meta}, write.document]
        action = f"a bulk write of {len(writes)} documents"
        async with self._bulk_slot(action):
            with translate_errors(action):
                response = await self.client.bulk(operations=operations)
        failures = []
        for write, entry in zip(writes, response["items"], strict=True):
            failure = _failure(write, next(iter(entry.values())))
            if failure is not None:
                failures.append(failure)
        return failures


#: The app's one SearchIndex, in its Services (procqueue/search/feature.py provides it).
SEARCH_INDEX: ServiceKey[SearchIndex] = ServiceKey("search")


def search_index(services: Services) -> SearchIndex:
    """The search index the app's jobs share."""
    return services.get(SEARCH_INDEX)
