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
reached by schema-qualified names (procqueue/qualified.py), never a `search_path`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool


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
