"""A loopback TCP proxy the tests put between the worker and a server, to cut
the connection (outage) or hold it open without answering (a hung server),
the same way against the ES-API emulator or a real Elasticsearch. It also notes
the HTTP requests it forwards (method and path), so a test can count them."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlsplit

import pytest

_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.IGNORECASE)


class _RequestLines:
    """The request lines of one connection's client-to-server HTTP/1.1 stream, read
    request by request (head, then a body of its Content-Length) as bytes arrive."""

    def __init__(self, seen: list[tuple[str, str]], noted: asyncio.Event) -> None:
        self.seen = seen
        self.noted = noted
        self.buffer = bytearray()
        self.body_left = 0

    def feed(self, data: bytes) -> None:
        self.buffer += data
        while True:
            if self.body_left:
                skipped = min(self.body_left, len(self.buffer))
                del self.buffer[:skipped]
                self.body_left -= skipped
                if self.body_left:
                    return
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[: end + 2])
            del self.buffer[: end + 4]
            method, path, *_ = head.split(b"\r\n", 1)[0].split(b" ")
            self.seen.append((method.decode(), path.decode()))
            self.noted.set()
            length = _CONTENT_LENGTH.search(head)
            self.body_left = int(length[1]) if length else 0


class TcpProxy:
    def __init__(self, target_url: str) -> None:
        parts = urlsplit(target_url)
        self.target_host = parts.hostname or "127.0.0.1"
        self.target_port = parts.port or 80
        self.scheme = parts.scheme
        self.server: asyncio.Server | None = None
        self.port = 0
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        #: (method, path) of every HTTP request forwarded, in order.
        self.requests: list[tuple[str, str]] = []
        self._noted = asyncio.Event()

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def go_down(self) -> None:
        """Refuse new connections and cut open ones, like a server that died."""
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None
        for writer in list(self._writers):
            writer.close()
        self._writers.clear()

    async def come_back(self) -> None:
        self._flowing.set()
        if self.server is None:
            await self.start()

    def stall(self) -> None:
        """Accept requests but never answer them."""
        self._flowing.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            writer.close()
            return
        self._writers.add(up_writer)
        pumps = [
            asyncio.create_task(
                self._pump(reader, up_writer, _RequestLines(self.requests, self._noted))
            ),
            asyncio.create_task(self._pump(up_reader, writer)),
        ]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            pass
        finally:
            for task in pumps:
                task.cancel()
            for w in (writer, up_writer):
                w.close()
                self._writers.discard(w)

    def count(self, path_suffix: str) -> int:
        """How many requests went to a path ending in `path_suffix` (query string aside)."""
        return sum(1 for _, path in self.requests if path.split("?")[0].endswith(path_suffix))

    async def until_count(self, path_suffix: str, count: int) -> None:
        """Until `count` requests to `path_suffix` have been noted (answered or not)."""
        while self.count(path_suffix) < count:
            self._noted.clear()
            await self._noted.wait()

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        requests: _RequestLines | None = None,
    ) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                if requests is not None:
                    requests.feed(data)
                await self._flowing.wait()
                writer.write(data)
                await writer.drain()


@contextlib.asynccontextmanager
async def started_proxy(target_url: str) -> AsyncIterator[TcpProxy]:
    """A proxy to `target_url`, listening for the block."""
    proxy = TcpProxy(target_url)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.go_down()


@pytest.fixture
async def proxy(es_url: str) -> AsyncIterator[TcpProxy]:
    """A proxy to the test ES-API server, for one test."""
    async with started_proxy(es_url) as tcp_proxy:
        yield tcp_proxy


@contextlib.contextmanager
def unreachable_url() -> Iterator[str]:
    """An http URL on a loopback port held by a socket that never listens: every
    connection is refused for as long as the block lasts (an Elasticsearch that is down)."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{held.getsockname()[1]}"
