"""A loopback TCP proxy between the worker and Postgres that loses the answer of a
chosen statement once it committed: the statement reaches the server, its transaction
commits, then the connection is cut before the answer reaches the client — "a claim
whose answer was lost". The commit is read off the wire: the server's ReadyForQuery
message with the status "idle" (no transaction open) after the statement was sent."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from psycopg.conninfo import conninfo_to_dict, make_conninfo

#: What the worker's fetch statement carries on the wire (`fetch_jobs`,
#: procqueue/engine/queries.sql).
FETCH_MARKER = b"jobs.queue_name = ANY("
#: ReadyForQuery ('Z', length 5) with transaction status 'I': the statement's
#: transaction is over (committed), the server waits for the next one.
READY_AND_IDLE = b"Z\x00\x00\x00\x05I"
#: Any ReadyForQuery: the server answered a statement (or a pipeline's sync) whole.
READY = b"Z\x00\x00\x00\x05"


class AnswerLosingProxy:
    def __init__(self, dsn: str) -> None:
        params = conninfo_to_dict(dsn)
        self.dsn = dsn
        self.target_host = str(params.get("host") or "127.0.0.1")
        self.target_port = int(params.get("port") or 5432)
        self.server: asyncio.Server | None = None
        self.port = 0
        self._marker = b""
        self._to_lose = 0
        self._only_with_rows = False
        #: How many answers were lost so far.
        self.lost = 0

    @property
    def armed(self) -> bool:
        """Whether answers are still to be lost."""
        return self._to_lose > 0

    @property
    def proxied_dsn(self) -> str:
        """`dsn` through this proxy."""
        return make_conninfo(self.dsn, host="127.0.0.1", port=str(self.port))

    def lose_answers_to(self, marker: bytes, times: int = 1, *, with_rows: bool = False) -> None:
        """The next `times` statements whose text contains `marker` run on the server,
        and the connection that sent each is cut before its answer comes back. With
        `with_rows`, only answers of statements that changed rows count (an empty fetch
        or claim, which a polling worker may send at any moment, is let through)."""
        self._marker, self._to_lose, self._only_with_rows = marker, times, with_rows

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            writer.close()
            return
        armed = asyncio.Event()

        async def to_server() -> None:
            while data := await reader.read(65536):
                if self._to_lose and self._marker and self._marker in data:
                    armed.set()  # counted when its answer is lost: another connection's
                    # empty fetch (a poll) must not use up the loss meant for this one
                up_writer.write(data)
                await up_writer.drain()

        async def to_client() -> None:
            # The armed statement's answer is held until a ReadyForQuery: the client
            # gets none of it (no row can reach a worker that then starts its job) when
            # its transaction is committed and lost; inside an open transaction it is
            # passed on whole, and the commit's answer is the one lost.
            held, rows = b"", False
            while data := await up_reader.read(65536):
                if not armed.is_set():
                    writer.write(data)
                    await writer.drain()
                    continue
                held += data
                rows = rows or _changed_rows(held)
                if READY_AND_IDLE in held:
                    if (rows or not self._only_with_rows) and self._to_lose:
                        self._to_lose -= 1
                        self.lost += 1
                        return  # the answer goes nowhere: both sides are closed below
                    armed.clear()  # an empty answer, or none left to lose: let it through
                    rows = False
                elif READY not in held:
                    continue
                writer.write(held)
                held = b""
                await writer.drain()

        pumps = [asyncio.create_task(to_server()), asyncio.create_task(to_client())]
        with contextlib.suppress(ConnectionError, OSError):
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        for task in pumps:
            task.cancel()
        for side in (writer, up_writer):
            side.close()


def _changed_rows(answer: bytes) -> bool:
    """Whether a statement answered in `answer` changed rows: a CommandComplete ('C')
    tagged UPDATE, INSERT or DELETE with a count above 0 (a fetch or claim that took
    jobs; the SELECT before it in the same pipeline answers a row too, and does not
    count). Each message is its type byte, its length (4 bytes, itself included), then
    the rest; `answer` starts at a message: the server had answered all before it."""
    at = 0
    while at + 5 <= len(answer):
        length = int.from_bytes(answer[at + 1 : at + 5], "big")
        if answer[at : at + 1] == b"C":
            tag = answer[at + 5 : at + 1 + length].rstrip(b"\x00").split()
            if tag and tag[0] in (b"UPDATE", b"INSERT", b"DELETE") and int(tag[-1]) > 0:
                return True
        at += 1 + length
    return False


@contextlib.asynccontextmanager
async def answer_losing_proxy(dsn: str) -> AsyncIterator[AnswerLosingProxy]:
    proxy = AnswerLosingProxy(dsn)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()
