"""Every Postgres connection procqueue opens: one place, so no site can forget the
transaction pooler.

Through a transaction pooler (Supavisor or pgbouncer in transaction mode, Supabase's
port 6543) consecutive transactions of one client run on different server
connections, and one server connection serves many clients. So nothing may live
in the session: no prepared statements (psycopg prepares a query it ran five times,
as `_pg3_0`, `_pg3_1`...: the next psycopg client of that server connection then
fails with `prepared statement "_pg3_0" already exists`), no session `SET`, no
LISTEN. These helpers take the DSN and the pooler flag explicitly
(`Settings.dsn`, `Settings.uses_transaction_pooler`) and turn preparing off when
the flag is set. None of them sets any session state: Procrastinate's schema is
reached by schema-qualified names (procqueue/engine/qualified.py), never a `search_path`.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import AsyncConnectionPool

from procqueue.errors import DatabaseUnreachable, NotMigrated

#: Seconds the first connection of a pool may take before it counts as refused.
FIRST_CONNECT_TIMEOUT = 10
#: What to check, by what Postgres (or the network) said when refusing to connect.
_CONNECT_ADVICE = (
    ("password authentication failed", "check the user name and password in DATABASE_URL"),
    ("no password supplied", "check the user name and password in DATABASE_URL"),
    ("role ", "check the user name in DATABASE_URL"),
    ("database ", "check the database name in DATABASE_URL"),
    ("pg_hba.conf", "check the user, database and sslmode in DATABASE_URL"),
)
_CONNECT_FALLBACK = "check the host and port in DATABASE_URL and that Postgres runs there"
#: Errors meaning the queue's schema lacks something (and which object).
_MISSING_OBJECT = (
    psycopg.errors.UndefinedTable,
    psycopg.errors.UndefinedFunction,
    psycopg.errors.InvalidSchemaName,
)
_QUEUE_SCHEMAS = re.compile(r"\b(?:procrastinate|procqueue)\b")


def connection_kwargs(*, transaction_pooler: bool, application_name: str) -> dict[str, Any]:
    """Keyword arguments for psycopg's connect (and a pool's `kwargs`)."""
    kwargs: dict[str, Any] = {"application_name": application_name}
    if transaction_pooler:
        # None: never prepare (psycopg's default prepares after 5 runs of a query).
        kwargs["prepare_threshold"] = None
    return kwargs


def connect(
    dsn: str,
    *,
    transaction_pooler: bool,
    application_name: str = "procqueue-cli",
    autocommit: bool = False,
    **options: Any,
) -> psycopg.Connection[Any]:
    """A blocking connection (CLI, migrate)."""
    kwargs = connection_kwargs(
        transaction_pooler=transaction_pooler, application_name=application_name
    )
    return psycopg.connect(dsn, autocommit=autocommit, **kwargs, **options)


async def connect_async(
    dsn: str,
    *,
    transaction_pooler: bool,
    application_name: str = "procqueue-cli",
    autocommit: bool = False,
    **options: Any,
) -> psycopg.AsyncConnection[Any]:
    """An asyncio connection (health, verify, reindex, image orphans)."""
    kwargs = connection_kwargs(
        transaction_pooler=transaction_pooler, application_name=application_name
    )
    return await psycopg.AsyncConnection.connect(dsn, autocommit=autocommit, **kwargs, **options)


def pool_arguments(
    dsn: str,
    *,
    transaction_pooler: bool,
    application_name: str,
    autocommit: bool = False,
    **pool_options: Any,
) -> dict[str, Any]:
    """The arguments of a psycopg_pool.AsyncConnectionPool (also Procrastinate's connector,
    which passes them on to its pool)."""
    kwargs = connection_kwargs(
        transaction_pooler=transaction_pooler, application_name=application_name
    )
    if autocommit:
        kwargs["autocommit"] = True
    return {"conninfo": dsn, "kwargs": kwargs, **pool_options}


def async_pool(
    dsn: str,
    *,
    transaction_pooler: bool,
    application_name: str,
    autocommit: bool = False,
    **pool_options: Any,
) -> AsyncConnectionPool[Any]:
    """A closed pool (open it with `await pool.open()`): dashboard, metrics server."""
    arguments = pool_arguments(
        dsn,
        transaction_pooler=transaction_pooler,
        application_name=application_name,
        autocommit=autocommit,
        **pool_options,
    )
    return AsyncConnectionPool(**arguments, open=False)


def pool_lifespan(
    pool: AsyncConnectionPool[Any],
) -> Callable[[Any], AbstractAsyncContextManager[None]]:
    """A Starlette lifespan that opens `pool` at start-up and closes it at shutdown."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        await pool.open()
        try:
            yield
        finally:
            await pool.close()

    return lifespan


def shown_dsn(dsn: str) -> str:
    """`dsn` as user@host:port/database: never its password."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "DATABASE_URL"
    user = params.get("user") or ""
    return (
        f"postgresql://{user}{'@' if user else ''}{params.get('host') or 'localhost'}:"
        f"{params.get('port') or 5432}/{params.get('dbname') or user}"
    )


def unreachable(error: psycopg.OperationalError, dsn: str) -> DatabaseUnreachable:
    """One line for a connection Postgres refused: its reason, and what to check."""
    reason = " ".join(str(error).split("\n")[0].split()) or type(error).__name__
    advice = next((tip for cue, tip in _CONNECT_ADVICE if cue in reason), _CONNECT_FALLBACK)
    return DatabaseUnreachable(
        f"cannot connect to the database (DATABASE_URL={shown_dsn(dsn)}): {reason}; {advice}"
    )


def _chain(error: BaseException) -> Iterator[BaseException]:
    """`error` and what it wraps (Procrastinate's connector wraps psycopg's errors)."""
    current: BaseException | None = error
    for _ in range(5):
        if current is None:
            return
        yield current
        current = current.__cause__


def not_migrated(error: BaseException) -> NotMigrated | None:
    """A NotMigrated when `error` says an object of the queue's schemas does not exist."""
    for current in _chain(error):
        if isinstance(current, _MISSING_OBJECT):
            message = current.diag.message_primary or str(current)
            if _QUEUE_SCHEMAS.search(message):
                return NotMigrated(
                    f"the queue is not installed in this database, or is older than this "
                    f"procqueue ({message}): {NotMigrated.ADVICE}"
                )
    return None


def database_error(error: BaseException, dsn: str) -> NotMigrated | DatabaseUnreachable | None:
    """The one-line error a command-line user gets for a database error, if any."""
    missing = not_migrated(error)
    if missing is not None:
        return missing
    for current in _chain(error):
        if isinstance(current, psycopg.OperationalError):
            return unreachable(current, dsn)
    return None


async def check_reachable(dsn: str, kwargs: dict[str, Any]) -> None:
    """Open and close one connection; DatabaseUnreachable (one line) if refused."""
    options = dict(kwargs)
    if "connect_timeout" not in conninfo_to_dict(dsn):
        options.setdefault("connect_timeout", FIRST_CONNECT_TIMEOUT)
    refused: DatabaseUnreachable | None = None
    try:
        conn = await psycopg.AsyncConnection.connect(dsn, **options)
    except psycopg.OperationalError as error:
        refused = unreachable(error, dsn)
    else:
        await conn.close()
    if refused is not None:
        # Raised outside the handler, chained to nothing: Procrastinate's command
        # prints every error of a chain, one per line.
        raise refused


#: A request replaces connections that fail their check at once, up to this many times
#: the pool's size in a row (beyond: the database itself is in trouble; it waits).
REPLACED_AT_ONCE = 2
#: Seconds between further replacements once REPLACED_AT_ONCE is spent.
REPLACE_WAIT = 1.0


class FailFastPool(AsyncConnectionPool[Any]):
    """The worker's pool (Procrastinate's connector builds it).

    - Its waiting `open` fails at once, saying why, when Postgres refuses the first
      connection (a wrong password, no such database), instead of retrying in the
      background until its timeout (30 s) and raising a bare PoolTimeout.
    - A connection that fails the check before use (`check`: Procrastinate passes
      psycopg_pool's `check_connection`) is closed and the next one is checked at
      once. psycopg_pool itself waits 1 s, then 2 s, 4 s... after each failed check:
      after a restart or a mass `pg_terminate_backend`, every idle connection of the
      pool is dead, and each request met one stalled for seconds."""

    def __init__(
        self,
        *args: Any,
        check: Callable[[psycopg.AsyncConnection[Any]], Awaitable[None]] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._check_before_use = check

    async def open(self, wait: bool = False, timeout: float = 30.0) -> None:
        if wait and self.closed and isinstance(self.conninfo, str) and not callable(self.kwargs):
            await check_reachable(self.conninfo, self.kwargs or {})
        await super().open(wait=wait, timeout=timeout)

    async def getconn(self, timeout: float | None = None) -> psycopg.AsyncConnection[Any]:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        failed = 0
        while True:
            conn: psycopg.AsyncConnection[Any] = await super().getconn(
                max(deadline - time.monotonic(), 0.0)
            )
            if self._check_before_use is None:
                return conn
            try:
                await self._check_before_use(conn)
            except Exception:
                await conn.close()  # the pool discards a closed connection
                await self.putconn(conn)
            except BaseException:
                await self.putconn(conn)
                raise
            else:
                return conn
            failed += 1
            if failed > REPLACED_AT_ONCE * self.max_size:
                await asyncio.sleep(min(REPLACE_WAIT, max(deadline - time.monotonic(), 0.0)))
