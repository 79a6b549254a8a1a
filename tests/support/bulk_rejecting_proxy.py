"""A loopback HTTP proxy in front of the ES-API server that can answer `_bulk` the
way a real Elasticsearch under pressure does: HTTP 200, `"errors": true`, and every
item refused with its own status (429 `es_rejected_execution_exception` by default,
or 503 ...). Every other request, and every `_bulk` while it does not reject, is
forwarded to the server as is. It counts the `_bulk` requests it refused, so a test
can await them instead of sleeping."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import web

#: Hop-by-hop headers and those aiohttp sets itself: not copied either way.
_SKIPPED_HEADERS = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "keep-alive",
     "content-encoding"}
)  # fmt: skip
_ACTIONS = ("index", "create", "update", "delete")
#: What Elasticsearch 8 answers a `_bulk` with.
_BULK_ANSWER_HEADERS = {
    "X-Elastic-Product": "Elasticsearch",
    "Content-Type": "application/vnd.elasticsearch+json;compatible-with=8",
}


class BulkRejectingProxy:
    """Forwards to `target_url`; while `rejecting`, answers every `_bulk` itself."""

    def __init__(self, target_url: str) -> None:
        self.target_url = target_url.rstrip("/")
        self.port = 0
        self.status: int | None = None
        self.error_type = ""
        #: `_bulk` requests refused, and the items in them.
        self.rejected_requests = 0
        self.rejected_items = 0
        #: `_bulk` requests forwarded to the server.
        self.forwarded_bulks = 0
        self._changed = asyncio.Event()
        self._slow: tuple[bytes, float] | None = None
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def reject(
        self, status: int = 429, error_type: str = "es_rejected_execution_exception"
    ) -> None:
        """From now on answer each `_bulk` with every item refused with `status`."""
        self.status, self.error_type = status, error_type

    def stop_rejecting(self) -> None:
        self.status = None

    def slow_down(self, marker: bytes, seconds: float) -> None:
        """From now on hold each `_bulk` whose body contains `marker` for `seconds`
        before forwarding it (a row the cluster takes long to index)."""
        self._slow = (marker, seconds)

    async def until_rejected(self, requests: int) -> None:
        """Until `requests` `_bulk` requests have been refused in all."""
        while self.rejected_requests < requests:
            self._changed.clear()
            await self._changed.wait()

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(auto_decompress=True)
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if self.status is not None and request.path.rstrip("/").endswith("/_bulk"):
            return self._refuse(body)
        if request.path.rstrip("/").endswith("/_bulk"):
            self.forwarded_bulks += 1
            if self._slow is not None and self._slow[0] in body:
                await asyncio.sleep(self._slow[1])  # the cluster's time on this row
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _SKIPPED_HEADERS}
        async with self._session.request(
            request.method, f"{self.target_url}{request.path_qs}", data=body, headers=headers
        ) as upstream:
            answer = await upstream.read()
            copied = {
                k: v for k, v in upstream.headers.items() if k.lower() not in _SKIPPED_HEADERS
            }
            return web.Response(status=upstream.status, body=answer, headers=copied)

    def _refuse(self, body: bytes) -> web.Response:
        assert self.status is not None
        items: list[dict[str, Any]] = []
        lines = iter(line for line in body.split(b"\n") if line.strip())
        for line in lines:
            action = json.loads(line)
            kind = next(key for key in _ACTIONS if key in action)
            meta = action[kind]
            if kind != "delete":
                next(lines, None)  # its document
            items.append(
                {kind: {
                    "_index": meta.get("_index", ""), "_id": meta.get("_id"),
                    "status": self.status,
                    "error": {
                        "type": self.error_type,
                        "reason": f"rejected execution of coordinating operation [shard "
                        f"{meta.get('_index', '')}][0] (a proxy under test)",
                    },
                }}
            )  # fmt: skip
        self.rejected_requests += 1
        self.rejected_items += len(items)
        self._changed.set()
        answer = {"took": 1, "errors": True, "items": items}
        return web.Response(
            status=200, body=json.dumps(answer).encode(), headers=_BULK_ANSWER_HEADERS
        )


@contextlib.asynccontextmanager
async def bulk_rejecting_proxy(target_url: str) -> AsyncIterator[BulkRejectingProxy]:
    """A proxy to `target_url`, listening for the block."""
    proxy = BulkRejectingProxy(target_url)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()
