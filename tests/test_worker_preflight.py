"""A worker that cannot work (correctly) says why in one line and exits non-zero:
no queue in the database, a queue older than the worker, a role without the
privileges, or a role that row-level security hides rows from. The least-privilege
worker role of sql/roles/worker_role.sql passes, syncs, and reads auth.users only
through procqueue.notification_recipient()."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from procqueue.app import build_app
from procqueue.engine.app import ProcqueueApp
from procqueue.engine.preflight import PreflightError
from procqueue.engine.worker import WorkerStopped
from procqueue.entities import LISTING
from procqueue.features import Settings
from procqueue.migrate import migrate
from procqueue.search.client import search_index
from tests.conftest import make_settings
from tests.support.supabase import as_role, supabase_database
from tests.support.worker import QUIET, drain, eventually

WORKER_ROLE_SQL = Path(__file__).resolve().parents[1] / "sql" / "roles" / "worker_role.sql"
TIMEOUT = 60


def run_worker(dsn: str, es_url: str, *command: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "DATABASE_URL": dsn,
        "ELASTICSEARCH_URL": es_url,
        "PROCQUEUE_MAINTENANCE_TASKS": "false",
    }
    return subprocess.run(
        [sys.executable, "-m", *(command or ("procqueue.cli", "worker"))],
        env=env, capture_output=True, text=True, timeout=TIMEOUT,
    )  # fmt: skip


#: A log line of the CLI's text format ("2026-01-01 10:00:00,000 INFO name: ...").
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [A-Z]+ ")


def error_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    """What the command printed on stderr besides its INFO start-up log lines."""
    return [
        line
        for line in result.stderr.splitlines()
        if line.strip() and not (LOG_LINE.match(line) and " INFO " in line[:40])
    ]


@pytest.fixture(scope="module")
def unmigrated(admin_dsn: str) -> Iterator[str]:
    """A Supabase-like database with the sample tables and no queue."""
    with supabase_database(admin_dsn, f"pq_preflight_bare_{uuid.uuid4().hex[:6]}") as dsn:
        yield dsn


def test_a_worker_on_an_unmigrated_database_exits_non_zero_with_one_line(
    unmigrated: str, es_url: str
) -> None:
    result = run_worker(unmigrated, es_url)
    assert result.returncode != 0
    lines = error_lines(result)
    assert len(lines) == 1 and lines[0].startswith("procqueue: error: "), result.stderr
    assert "not installed" in lines[0] and "run `procqueue migrate`" in lines[0]
    assert "Traceback" not in result.stderr


def test_procrastinates_own_worker_command_refuses_too(unmigrated: str, es_url: str) -> None:
    result = run_worker(unmigrated, es_url, "procrastinate", "--app=procqueue.app.app", "worker")
    assert result.returncode != 0
    assert "run `procqueue migrate`" in error_lines(result)[-1]


@contextlib.asynccontextmanager
async def opened(settings: Settings) -> AsyncIterator[ProcqueueApp]:
    app = build_app(settings)
    async with app.open_async():
        try:
            yield app
        finally:
            await app.services.aclose()


async def test_a_queue_older_than_the_worker_is_refused(database: str, es_url: str) -> None:
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        recorded = "SELECT checksum FROM procqueue.schema_migrations WHERE name = 'procrastinate'"
        row = await (await conn.execute(recorded)).fetchone()
        assert row is not None
        await conn.execute(
            "UPDATE procqueue.schema_migrations SET checksum = '3.0.0' WHERE name = 'procrastinate'"
        )
        try:
            async with opened(make_settings(database, es_url)) as app:
                with pytest.raises(PreflightError, match=r"at Procrastinate 3\.0\.0 .* migrate"):
                    await app.run_worker_async(wait=False, **QUIET)
        finally:
            await conn.execute(
                "UPDATE procqueue.schema_migrations SET checksum = %s WHERE name = 'procrastinate'",
                [row[0]],
            )


def worker_role_sql(name: str) -> str:
    """sql/roles/worker_role.sql for a role of another name (roles are cluster-wide:
    each test run gets its own)."""
    return WORKER_ROLE_SQL.read_text(encoding="utf-8").replace("procqueue_worker", name)


@contextlib.contextmanager
def dropped_afterwards(admin_here: str, role: str) -> Iterator[None]:
    """Drop `role` (and its privileges in this database) at the end."""
    try:
        yield
    finally:
        with psycopg.connect(admin_here, autocommit=True) as admin:
            name = sql.Identifier(role)
            admin.execute(sql.SQL("DROP OWNED BY {}").format(name))
            admin.execute(sql.SQL("DROP ROLE {}").format(name))


@pytest.fixture(scope="module")
def admin_here(admin_dsn: str, database: str) -> str:
    """The superuser, in the module's database."""
    return as_role(database, str(psycopg.conninfo.conninfo_to_dict(admin_dsn)["user"]))


@pytest.fixture(scope="module")
def worker_role(admin_here: str, database: str) -> Iterator[str]:
    """A role made by sql/roles/worker_role.sql: created by the superuser (on plain
    PostgreSQL 15 only a superuser may create a BYPASSRLS role; Supabase lets its
    `postgres` do it), then the same file run again by the owner, as on Supabase."""
    role = f"pq_worker_{uuid.uuid4().hex[:8]}"
    with dropped_afterwards(admin_here, role):
        with psycopg.connect(admin_here, autocommit=True) as admin:
            admin.execute(worker_role_sql(role).encode())
        with psycopg.connect(database, autocommit=True) as owner:
            owner.execute(worker_role_sql(role).encode())
        yield role


def test_the_worker_role_is_least_privilege(worker_role: str, database: str) -> None:
    with psycopg.connect(as_role(database, worker_role), autocommit=True) as conn:
        attributes = conn.execute(
            "SELECT rolsuper, rolbypassrls, rolcreatedb, rolcreaterole, rolinherit "
            "FROM pg_roles WHERE rolname = current_user"
        ).fetchone()
        assert attributes == (False, True, False, False, False)
        settings = conn.execute(
            "SELECT count(*) FROM pg_db_role_setting WHERE setrole = "
            "(SELECT oid FROM pg_roles WHERE rolname = current_user)"
        ).fetchone()
        assert settings == (0,)
        assert conn.execute(
            "SELECT has_schema_privilege('auth', 'USAGE'), has_table_privilege("
            " (SELECT c.oid FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace"
            "  WHERE n.nspname = 'auth' AND c.relname = 'users'), 'SELECT'), "
            "has_table_privilege('procqueue.schema_migrations', 'INSERT'), "
            "has_table_privilege('procqueue.dashboard_actions', 'INSERT')"
        ).fetchone() == (False, False, False, False)


async def test_the_worker_role_syncs_and_reads_recipients_without_auth_privileges(
    worker_role: str, database: str, es_url: str
) -> None:
    user_id = str(uuid.uuid4())
    listing_id = str(uuid.uuid4())
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as owner:
        await owner.execute(
            "INSERT INTO auth.users (id, email, raw_user_meta_data) "
            "VALUES (%s, 'worker-role@example.com', '{\"locale\": \"en\"}')",
            [user_id],
        )
        await owner.execute(
            "INSERT INTO listings (id, user_id, title) VALUES (%s, %s, 'Seen by the worker role')",
            [listing_id, user_id],
        )
    async with opened(make_settings(as_role(database, worker_role), es_url)) as app:
        await drain(app)
        search = search_index(app.services)
        found = await search.client.get(index=search.alias(LISTING), id=listing_id)
        assert found["_source"]["title"] == "Seen by the worker role"
        async with app.pool.connection() as conn:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                await conn.execute("SELECT email FROM auth.users")
        async with app.pool.connection() as conn:
            row = await (
                await conn.execute(
                    "SELECT user_id, email, locale FROM procqueue.notification_recipient(%s)",
                    [user_id],
                )
            ).fetchone()
        assert row == (user_id, "worker-role@example.com", "en")


def test_a_worker_role_subject_to_rls_refuses_to_start(
    worker_role: str, admin_here: str, database: str, es_url: str
) -> None:
    hidden = f"{worker_role}_rls"
    with dropped_afterwards(admin_here, hidden):
        with psycopg.connect(admin_here, autocommit=True) as admin:
            admin.execute(worker_role_sql(hidden).encode())
            admin.execute(sql.SQL("ALTER ROLE {} NOBYPASSRLS").format(sql.Identifier(hidden)))
        result = run_worker(as_role(database, hidden), es_url)
    assert result.returncode != 0
    lines = error_lines(result)
    assert len(lines) == 1 and lines[0].startswith("procqueue: error: "), result.stderr
    assert "public.inventory_items" in lines[0] and "BYPASSRLS" in lines[0]
    assert "row-level security" in lines[0]


def test_a_role_without_the_grants_is_told_which_file_grants_them(
    admin_here: str, database: str, es_url: str
) -> None:
    bare = f"pq_bare_{uuid.uuid4().hex[:8]}"
    with dropped_afterwards(admin_here, bare):
        with psycopg.connect(admin_here, autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE ROLE {} LOGIN BYPASSRLS").format(sql.Identifier(bare)))
        result = run_worker(as_role(database, bare), es_url)
    assert result.returncode != 0
    lines = error_lines(result)
    assert len(lines) == 1 and lines[0].startswith("procqueue: error: "), result.stderr
    assert "may not use schema procrastinate" in lines[0]
    assert "sql/roles/worker_role.sql" in lines[0]


async def test_a_worker_stopped_by_a_failing_side_task_raises(admin_dsn: str, es_url: str) -> None:
    with supabase_database(admin_dsn, f"pq_preflight_stop_{uuid.uuid4().hex[:6]}") as dsn:
        migrate(dsn)
        settings = make_settings(dsn, es_url, heartbeat_interval=0.1)
        async with opened(settings) as app:
            worker = asyncio.create_task(app.run_worker_async(**QUIET))

            async def registered() -> bool:
                async with app.pool.connection() as conn:
                    row = await (
                        await conn.execute(
                            "SELECT count(*) FROM procrastinate.procrastinate_workers"
                        )
                    ).fetchone()
                return bool(row and row[0])

            await eventually(registered)
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as owner:
                await owner.execute(
                    "ALTER FUNCTION procrastinate.procrastinate_update_heartbeat_v1(bigint) "
                    "RENAME TO procrastinate_update_heartbeat_v1_gone"
                )
            with pytest.raises(WorkerStopped, match="update_heartbeats task failed"):
                await asyncio.wait_for(worker, timeout=TIMEOUT)
