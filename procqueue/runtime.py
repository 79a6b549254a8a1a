"""What jobs share: the App type and the services it carries."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import procrastinate
from psycopg_pool import AsyncConnectionPool

from procqueue.entities import EntityRegistry
from procqueue.settings import Settings
from procqueue.sinks.search import SearchIndex, make_client


@dataclass
class Services:
    """Clients created once per app, lazily, and shared by every job."""

    settings: Settings
    entities: EntityRegistry
    _search: SearchIndex | None = field(default=None, repr=False)

    @property
    def search(self) -> SearchIndex:
        if self._search is None:
            self._search = SearchIndex(make_client(self.settings), self.settings.index_prefix)
        return self._search

    async def aclose(self) -> None:
        if self._search is not None:
            await self._search.client.close()
            self._search = None


class ProcqueueApp(procrastinate.App):
    """A Procrastinate App that also carries the services its jobs use."""

    services: Services

    @property
    def pool(self) -> AsyncConnectionPool[Any]:
        """The connector's psycopg pool (search_path: Procrastinate's schema)."""
        pool: AsyncConnectionPool[Any] = self.connector.pool  # type: ignore[attr-defined]
        return pool
