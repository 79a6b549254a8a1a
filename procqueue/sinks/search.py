"""The Elasticsearch side: versioned indexes behind aliases, and documents in them.

An entity's index is `<prefix><alias>_v1` reached through `<prefix><alias>`, so
that a reindex can build `_v2` and swap the alias without downtime. Client
errors are translated into TransientError / PermanentError here, once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import elasticsearch
from elasticsearch import AsyncElasticsearch

from procqueue.entities import Entity
from procqueue.errors import PermanentError, TransientError
from procqueue.settings import Settings

INITIAL_VERSION = 1


def make_client(settings: Settings) -> AsyncElasticsearch:
    api_key = settings.elasticsearch_api_key
    return AsyncElasticsearch(
        settings.elasticsearch_url,
        api_key=api_key.get_secret_value() if api_key else None,
        request_timeout=settings.elasticsearch_timeout,
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
            raise TransientError(reason) from error
        raise PermanentError(reason) from error
    except elasticsearch.TransportError as error:  # connection refused, timeout, TLS
        raise TransientError(
            f"Elasticsearch unreachable during {action}: {type(error).__name__}: {error.message}"
        ) from error


class SearchIndex:
    """Documents of the configured entities in Elasticsearch."""

    def __init__(self, client: AsyncElasticsearch, prefix: str = "") -> None:
        self.client = client
        self.prefix = prefix
        self._ready: set[str] = set()

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

    async def remove(self, entity: Entity, entity_id: str) -> None:
        """Delete a document; one that is already gone is fine."""
        await self.ensure_index(entity)
        with translate_errors(f"deleting {entity.name} {entity_id}"):
            try:
                await self.client.delete(index=self.alias(entity), id=entity_id)
            except elasticsearch.NotFoundError:
                pass
