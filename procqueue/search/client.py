"""The Elasticsearch side: versioned indexes behind aliases, and documents in them.

An entity's index is `<prefix><alias>_v1` reached through `<prefix><alias>`, so
that a reindex can build `_v2` and swap the alias without downtime. Client
errors are translated into SinkUnavailable (the cluster is down or overloaded) /
PermanentError here, once.

Backpressure item by item: under load Elasticsearch answers a `_bulk` with 200 and
refuses items with 429 (`es_rejected_execution_exception`, `circuit_breaking_exception`)
or 503 (unavailable shards). Such an item is the cluster asking to slow down, not a
fault of its document (`ItemFailure.backpressure`; procqueue/search/sync.py makes it
a SinkUnavailable, so its job is postponed spending no attempt). The client slows
its own writes to that index: after a response with such refusals, the next write to
the index waits a pause (PAUSE_FIRST, doubling with every such response in a row,
at most PAUSE_MAX, with jitter); a response to it without one ends the pause.

The client takes a SearchConfig (`SearchSettings.search`). A worker's jobs share one
SearchIndex through the app's Services: `search_index(app.services)`.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

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
#: Per-item statuses of backpressure: the cluster is overloaded (a full write queue, a
#: tripped circuit breaker: 429) or cannot take writes for now (unavailable shards: 503).
BACKPRESSURE_STATUSES = frozenset({429, 503})
#: The pause of writes to an index after one response refusing items of it under
#: backpressure (seconds); it doubles with each further such response, up to PAUSE_MAX.
PAUSE_FIRST = 0.1
PAUSE_MAX = 5.0


@dataclass(frozen=True)
class Write:
    """One document to put (document: its JSON text, sent as it is) or remove
    (document None) in one index."""

    index: str
    entity_id: str
    document: str | None


@dataclass(frozen=True)
class ItemFailure:
    """A write Elasticsearch refused, with its per-item status and reason."""

    write: Write
    status: int
    reason: str

    @property
    def transient(self) -> bool:
        return self.status == 429 or self.status >= 500

    @property
    def backpressure(self) -> bool:
        """The cluster refused the item because it is overloaded, not because of it."""
        return self.status in BACKPRESSURE_STATUSES


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


#: Seconds a ping may take to show that the cluster answers (a write timed out).
PING_TIMEOUT = 2.0


def _timed_out(error: SinkUnavailable) -> bool:
    return isinstance(error.__cause__, elasticsearch.ConnectionTimeout)


def _too_slow(write: Write, timeout: float) -> str:
    return (
        f"took longer than the timeout ({timeout:g} s, PROCQUEUE_ELASTICSEARCH_TIMEOUT) to "
        f"write alone while Elasticsearch answers other requests: {write.index}/"
        f"{write.entity_id} is too costly to index (bound it with max_document_bytes / "
        "max_array_length in the entities file)"
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


@dataclass
class _Pressure:
    """An index whose last write met backpressure: how many responses in a row did,
    and until when (monotonic) writes to it wait."""

    responses: int = 0
    until: float = 0.0


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
        self._pressure: dict[str, _Pressure] = {}

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

    async def ensure_index(self, entity: Entity) -> bool:
        """Create the first versioned index behind the alias, unless the alias exists;
        True if this call created it."""
        alias = self.alias(entity)
        if alias in self._ready:
            return False
        with translate_errors(f"checking alias {alias}"):
            exists = await self.client.indices.exists_alias(name=alias)
        if not exists:
            await self.create_index(entity, INITIAL_VERSION, alias=True)
        self._ready.add(alias)
        return not exists

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

    def pause_left(self, indexes: Iterable[str]) -> float:
        """Seconds writes to `indexes` still wait because of backpressure (0: none)."""
        now = time.monotonic()
        waits = [p.until - now for index in indexes if (p := self._pressure.get(index))]
        return max([0.0, *waits])

    async def wait_for_room(self, indexes: Iterable[str]) -> None:
        """Wait out the pause of `indexes` (at most PAUSE_MAX and a little jitter, so
        that the writes held back do not all go at once)."""
        wait = self.pause_left(indexes)
        if wait > 0:
            await asyncio.sleep(wait + random.uniform(0, wait / 4))

    def _note_pressure(self, writes: Sequence[Write], failures: Sequence[ItemFailure]) -> None:
        """After a response: a longer pause for each index it refused items of under
        backpressure, none any more for the others it wrote."""
        pressed = {failure.write.index for failure in failures if failure.backpressure}
        for index in {write.index for write in writes}:
            if index not in pressed:
                self._pressure.pop(index, None)
                continue
            pressure = self._pressure.setdefault(index, _Pressure())
            pressure.responses += 1
            pause = min(PAUSE_MAX, PAUSE_FIRST * 2 ** (pressure.responses - 1))
            pressure.until = time.monotonic() + pause * random.uniform(1.0, 1.25)

    async def write_versioned(self, writes: Sequence[Write], version: int) -> list[ItemFailure]:
        """One `_bulk` request: index or delete each write with `version` as its
        external version, so an older read never overwrites a newer one (409: a
        newer state is there = done), once the pause of its indexes under backpressure
        is over and one of this index's `bulk_concurrency` slots is free. Returns the
        items Elasticsearch refused.

        A request that outlives the timeout while the cluster answers a ping is sent
        again one write at a time, so that one costly row cannot hold up the others: a
        write that outlives the timeout alone is that row's failure (504, transient: it
        spends its job's attempts), never an outage that opens the circuit for every
        job. No answer to the ping either: the cluster is down (the circuit opens)."""
        try:
            return await self._write_once(writes, version)
        except SinkUnavailable as error:
            if not _timed_out(error) or not await self._answers_ping():
                raise
        failures: list[ItemFailure] = []
        for write in writes:
            try:
                failures += await self._write_once([write], version)
            except SinkUnavailable as error:
                if not _timed_out(error):
                    raise
                failures.append(ItemFailure(write, 504, _too_slow(write, self._timeout)))
        return failures

    async def _answers_ping(self) -> bool:
        timeout = min(PING_TIMEOUT, self._timeout)
        try:
            return bool(await self.client.options(request_timeout=timeout).ping())
        except elasticsearch.TransportError:
            return False

    async def _write_once(self, writes: Sequence[Write], version: int) -> list[ItemFailure]:
        if not writes:
            return []
        await self.wait_for_room({write.index for write in writes})
        operations: list[Mapping[str, Any] | str] = []
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
                # A str line goes out as it is (the client's NDJSON serializer; its own
                # bulk helpers send serialized lines the same way), typed or not.
                lines = cast(Sequence[Mapping[str, Any]], operations)
                response = await self.client.bulk(operations=lines)
        failures = []
        for write, entry in zip(writes, response["items"], strict=True):
            failure = _failure(write, next(iter(entry.values())))
            if failure is not None:
                failures.append(failure)
        self._note_pressure(writes, failures)
        return failures


#: The app's one SearchIndex, in its Services (procqueue/search/feature.py provides it).
SEARCH_INDEX: ServiceKey[SearchIndex] = ServiceKey("search")


def search_index(services: Services) -> SearchIndex:
    """The search index the app's jobs share."""
    return services.get(SEARCH_INDEX)
