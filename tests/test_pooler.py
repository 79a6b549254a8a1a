"""Through a transaction pooler (Debian's pgbouncer in transaction mode, as Supabase's
port 6543): migrate, the worker, the CLI and the dashboard leave no session state on
the pooled server connections (no prepared statement, no `SET`), and need no
role-level setting: Procrastinate's queries run schema-qualified."""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
import pytest
from procrastinate import sql as procrastinate_sql

from procqueue.app import build_app
from procqueue.dashboard.security import access_for
from procqueue.engine.app import ProcqueueApp
from procqueue.engine.qualified import (
    QUALIFIED,
    QualifiedPsycopgConnector,
    QualifiedSyncPsycopgConnector,
    qualify,
)
from procqueue.entities import LISTING
from procqueue.features import Settings
from procqueue.migrate import migrate
from procqueue.search.client import search_index
from procqueue.search.jobs import row_job
from tests.conftest import make_settings
from tests.support.dashboard import dashboard_client, sign_in
from tests.support.history import run_cli
from tests.support.pgbouncer import POOL_SIZE, Pgbouncer
from tests.support.supabase import OWNER_ROLE, supabase_database
from tests.support.worker import SELLER_ID, drain

SECRET = "pooler-secret-" + uuid.uuid4().hex
#: A query a psycopg client with default settings prepares on its 6th run (as `_pg3_0`).
REPEATED = "SELECT count(*) FROM public.listings WHERE title <> %s"


@pytest.fixture(scope="module")
def pooled(pgbouncer: Pgbouncer, database: str) -> str:
    """The module's database as its owner, through the transaction pooler."""
    return pgbouncer.via(database)


@pytest.fixture(scope="module")
def settings(pooled: str, es_url: str) -> Settings:
    # Not on port 6543, so say it: PROCQUEUE_TRANSACTION_POOLER=true.
    return make_settings(pooled, es_url, transaction_pooler=True, dashboard_secret=SECRET)


async def add_seller(conn: psycopg.AsyncConnection[Any]) -> None:
    """The listings' owner, through the pooler (the `db` fixture would add it directly)."""
    await conn.execute(
        "INSERT INTO auth.users (id, email) VALUES (%s, 'seller@example.com') "
        "ON CONFLICT DO NOTHING",
        [SELLER_ID],
    )


@contextlib.asynccontextmanager
async def every_server_connection(dsn: str) -> AsyncIterator[list[psycopg.AsyncConnection[Any]]]:
    """As many clients as the pool has server connections, each inside a transaction,
    so that together they hold every server connection of the pool."""
    clients = [await psycopg.AsyncConnection.connect(dsn) for _ in range(POOL_SIZE)]
    try:
        for client in clients:
            await client.execute("SELECT 1")  # opens the transaction: the server is ours
        yield clients
    finally:
        for client in clients:
            await client.close()


async def session_state(dsn: str) -> list[tuple[str, str, int]]:
    """(search_path, jit, prepared statements) of every server connection of the pool."""
    async with every_server_connection(dsn) as clients:
        states = []
        for client in clients:
            row = await (
                await client.execute(
                    "SELECT current_setting('search_path'), current_setting('jit'), "
                    "(SELECT count(*) FROM pg_prepared_statements)::int"
                )
            ).fetchone()
            assert row is not None
            states.append((row[0], row[1], row[2]))
        return states


async def a_plain_client_repeats_a_query(dsn: str, times: int = 8) -> None:
    """What any other psycopg client of the pool does: default settings (it prepares
    a query it ran five times, as `_pg3_0`), one query in a loop. It fails if a
    prepared statement of that name was left on its server connection. Then the
    statement it left itself is dropped from every server connection."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        for _ in range(times):
            await conn.execute(REPEATED, ["x"])
    async with every_server_connection(dsn) as clients:
        for client in clients:
            await client.execute("DEALLOCATE ALL")
            await client.commit()


async def fresh_server_sessions(dsn: str) -> None:
    """Every server connection of the pool back to a new session's state, as when the
    pooler replaces its server connections (server_lifetime, idle timeouts, failover):
    nothing a client set up on its own connection may be counted on."""
    async with every_server_connection(dsn) as clients:
        for client in clients:
            await client.execute("RESET ALL")
            await client.execute("DEALLOCATE ALL")
            await client.commit()


async def assert_sessions_untouched(dsn: str, role_dsn: str) -> None:
    """Every server connection of the pool has the role's own session: its
    search_path and jit, and no prepared statement; a plain client works."""
    with psycopg.connect(role_dsn) as direct:
        row = direct.execute(
            "SELECT current_setting('search_path'), current_setting('jit')"
        ).fetchone()
        assert row is not None
    for search_path, jit, prepared in await session_state(dsn):
        assert (search_path, jit, prepared) == (row[0], row[1], 0)
    await a_plain_client_repeats_a_query(dsn)


def role_settings(dsn: str) -> list[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT unnest(setconfig) FROM pg_db_role_setting "
            "WHERE setrole = (SELECT oid FROM pg_roles WHERE rolname = current_user)"
        ).fetchall()
    return [row[0] for row in rows]


@pytest.fixture(scope="module")
def fresh_database(admin_dsn: str) -> Iterator[str]:
    """A Supabase-like database with the sample schema and no queue yet."""
    with supabase_database(admin_dsn, f"pq_pooler_fresh_{uuid.uuid4().hex[:6]}") as dsn:
        yield dsn


async def test_migrate_through_the_pooler_leaves_no_prepared_statement(
    pgbouncer: Pgbouncer, fresh_database: str
) -> None:
    pooled = pgbouncer.via(fresh_database)
    steps = migrate(pooled, transaction_pooler=True)
    assert sum(1 for step in steps if step.record_as) > 5  # enough to have prepared one
    # The next psycopg client of the same pool: no `prepared statement "_pg3_0"
    # already exists`.
    await assert_sessions_untouched(pooled, fresh_database)
    assert migrate(pooled, transaction_pooler=True)  # and again: idempotent through it
    await assert_sessions_untouched(pooled, fresh_database)


async def test_the_worker_syncs_through_the_pooler_without_any_role_setting(
    app: ProcqueueApp, pooled: str, database: str
) -> None:
    assert app.services.settings.uses_transaction_pooler
    assert not app.services.settings.use_listen_notify
    assert not any("procrastinate" in setting for setting in role_settings(database))
    await fresh_server_sessions(pooled)  # the worker's pool is open: its sessions are gone
    listing_id = str(uuid.uuid4())
    async with await psycopg.AsyncConnection.connect(pooled, autocommit=True) as writer:
        await add_seller(writer)
        await writer.execute(
            "INSERT INTO listings (id, user_id, title) VALUES (%s, %s, 'Through the pooler')",
            [listing_id, SELLER_ID],
        )
    await drain(app, concurrency=2)
    search = search_index(app.services)
    found = await search.client.get(index=search.alias(LISTING), id=listing_id)
    assert found["_source"]["title"] == "Through the pooler"
    async with await psycopg.AsyncConnection.connect(database) as conn:
        statuses = await (
            await conn.execute(
                "SELECT status::text, count(*) FROM procrastinate.procrastinate_jobs"
                " WHERE task_name = 'listing:drain' GROUP BY 1"
            )
        ).fetchall()
        changes = await (
            await conn.execute("SELECT count(*) FROM procqueue.sync_changes")
        ).fetchone()
        logged = await (
            await conn.execute(
                "SELECT count(*) FROM procqueue.finished_attempts WHERE task_name = 'listing:drain'"
            )
        ).fetchone()
    # a drain that succeeded at once left for the log of finished attempts (migration 0026)
    by_status: dict[str, int] = dict(statuses)
    assert set(by_status) <= {"succeeded"} and changes == (0,)
    assert logged is not None and logged[0] + by_status.get("succeeded", 0) >= 1


async def test_after_the_worker_other_clients_keep_their_session(
    app: ProcqueueApp, pooled: str, database: str
) -> None:
    with psycopg.connect(database) as direct:
        row = direct.execute("SELECT current_setting('search_path')").fetchone()
        assert row is not None
    assert "procrastinate" not in row[0]
    # The worker runs a few hundred queries through every pooled connection ...
    for _ in range(3):
        async with await psycopg.AsyncConnection.connect(pooled, autocommit=True) as writer:
            await add_seller(writer)
            await writer.execute(
                "INSERT INTO listings (user_id, title) SELECT %s, 'burst ' || n "
                "FROM generate_series(1, 5) AS n",
                [SELLER_ID],
            )
        await asyncio.gather(drain(app, concurrency=2), drain(app, concurrency=2))
    # ... and every server connection of the pool still has the role's own session:
    # `SHOW search_path` of another client is the role's.
    await assert_sessions_untouched(pooled, database)


async def test_the_worker_pool_sets_nothing_on_its_connections(app: ProcqueueApp) -> None:
    async with app.pool.connection() as conn:
        row = await (await conn.execute("SELECT current_setting('search_path')")).fetchone()
    assert row is not None and "procrastinate" not in row[0]
    connector = app.connector
    assert isinstance(connector, QualifiedPsycopgConnector)
    assert connector._pool_args.get("configure") is None
    assert connector._pool_args["kwargs"]["prepare_threshold"] is None


async def cli(settings: Settings, *args: str) -> tuple[int, str, str]:
    """`procqueue ARGS` through the pooler, told it is one (not on port 6543)."""
    return await run_cli(
        settings.dsn, *args, transaction_pooler="true", elasticsearch_url=settings.elasticsearch_url
    )


async def test_the_cli_works_through_the_pooler(
    settings: Settings, pooled: str, database: str
) -> None:
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        await conn.execute(
            "INSERT INTO procrastinate.procrastinate_jobs (queue_name, task_name, args, status) "
            "SELECT 'pooler', 'pooler:broken', '{}', 'failed' FROM generate_series(1, 8)"
        )
    code, out, err = await cli(settings, "health")
    assert code in (0, 1, 2), err
    assert "status:" in out and "Traceback" not in err
    code, out, err = await cli(settings, "failed", "--task", "pooler:broken")
    assert code == 0, err
    assert out.count("pooler:broken") == 8
    # Eight retries: the same queries eight times over one connection, which psycopg
    # prepares unless told not to.
    code, out, err = await cli(settings, "retry", "--task", "pooler:broken")
    assert code == 0, err
    assert "retried 8 job(s)" in out
    await assert_sessions_untouched(pooled, database)
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        await conn.execute(
            "DELETE FROM procrastinate.procrastinate_jobs WHERE task_name = 'pooler:broken'"
        )


async def test_the_dashboard_pool_works_through_the_pooler(
    settings: Settings, pooled: str, database: str
) -> None:
    access = access_for(settings, "127.0.0.1", local_only=False)
    async with dashboard_client(settings, access) as client:
        signed_in = await sign_in(client, "pooler-admin", SECRET)
        assert signed_in.status_code in (200, 303), signed_in.text
        for _ in range(8):  # enough for psycopg to prepare, were it allowed to
            page = await client.get("/jobs")
            assert page.status_code == 200, page.text
        assert (await client.get("/")).status_code == 200
        assert (await client.get("/healthz")).status_code in (200, 503)
    # The dashboard's `SET jit = off` (direct connections only) stays off the pooler.
    await assert_sessions_untouched(pooled, database)


def test_procrastinates_queries_are_qualified_and_channel_names_are_not() -> None:
    unqualified = re.compile(r"(?<![\w.])procrastinate_[a-z0-9_]+")
    for name, text in procrastinate_sql.queries.items():
        without_literals = re.sub(r"'(?:[^']|'')*'", "''", QUALIFIED[text])
        assert not unqualified.search(without_literals), name
    check = QUALIFIED[procrastinate_sql.queries["check_connection"]]
    assert "to_regclass('procrastinate.procrastinate_jobs')" in check
    assert QUALIFIED[procrastinate_sql.queries["listen_queue"]] == "LISTEN {channel_name};"
    # Literals that are data stay as they are; so do quoted identifiers and comments.
    assert qualify("SELECT pg_notify('procrastinate_any_queue_v1', 'x')") == (
        "SELECT pg_notify('procrastinate_any_queue_v1', 'x')"
    )
    assert qualify('SELECT "procrastinate_jobs" -- procrastinate_jobs') == (
        'SELECT "procrastinate_jobs" -- procrastinate_jobs'
    )
    assert qualify("SELECT procrastinate.procrastinate_jobs") == (
        "SELECT procrastinate.procrastinate_jobs"
    )


def test_every_name_procrastinates_queries_use_exists_in_the_queue_schema(database: str) -> None:
    names = sorted(
        {
            found
            for text in QUALIFIED.values()
            for found in re.findall(r"\bprocrastinate\.(procrastinate_[a-z0-9_]+)", text)
        }
    )
    assert "procrastinate_fetch_job_v2" in names and "procrastinate_job_status" in names
    with psycopg.connect(database) as conn:
        missing = conn.execute(
            "SELECT name FROM unnest(%s::text[]) AS name WHERE NOT EXISTS ("
            " SELECT FROM pg_proc WHERE proname = name"
            "  AND pronamespace = 'procrastinate'::regnamespace"
            " UNION ALL SELECT FROM pg_class WHERE relname = name"
            "  AND relnamespace = 'procrastinate'::regnamespace"
            " UNION ALL SELECT FROM pg_type WHERE typname = name"
            "  AND typnamespace = 'procrastinate'::regnamespace)",
            [names],
        ).fetchall()
    assert missing == []


def test_the_owner_role_is_the_supabase_like_one(database: str) -> None:
    with psycopg.connect(database) as conn:
        row = conn.execute(
            "SELECT current_user, rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user"
        ).fetchone()
    assert row == (OWNER_ROLE, False, True)


def test_a_synchronous_defer_before_the_app_is_opened_is_qualified_too(
    settings: Settings, database: str
) -> None:
    """Procrastinate's sync connector (a web app deferring from plain Python)."""
    application = build_app(settings)
    entity_id = str(uuid.uuid4())
    with application.open():
        connector = application.connector.get_sync_connector()
        assert isinstance(connector, QualifiedSyncPsycopgConnector)
        job_id = application.configure_task(row_job(LISTING, "update").task_name).defer(
            id=entity_id
        )
    with psycopg.connect(database, autocommit=True) as conn:
        row = conn.execute(
            "DELETE FROM procrastinate.procrastinate_jobs WHERE id = %s RETURNING args ->> 'id'",
            [job_id],
        ).fetchone()
    assert row == (entity_id,)
