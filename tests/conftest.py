"""Test servers: real Postgres and an Elasticsearch-API server.

- Postgres: PROCQUEUE_TEST_DATABASE_URL (an admin DSN), else the server on
  127.0.0.1:5432, else a throwaway pgserver. Each test module gets a fresh
  Supabase-like database (tests/support/supabase.py): the sample schema with
  row-level security on, installed and migrated by a non-superuser owner role that
  plays Supabase's `postgres`; `database` is that role's DSN.
- Elasticsearch: ELASTICSEARCH_URL if set (a real cluster works), else the
  noida-db ES-API server on a free loopback port. Each module gets its own
  index prefix.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
import pytest

from procqueue.app import build_app
from procqueue.engine.app import ProcqueueApp
from procqueue.features import Settings, load_settings
from procqueue.local import local_postgres, local_search
from procqueue.migrate import migrate
from tests.support.supabase import supabase_database
from tests.support.worker import SELLER_ID

#: Fixtures of loopback services: SMTP and FCM (notifications), Cloudinary (images),
#: pgbouncer in transaction mode (the transaction pooler), a proxy to the ES-API server.
pytest_plugins = [
    "tests.support.notifications",
    "tests.support.cloudinary_server",
    "tests.support.pgbouncer",
    "tests.support.proxy",
]


@pytest.fixture(scope="session")
def admin_dsn() -> Iterator[str]:
    with local_postgres(os.environ.get("PROCQUEUE_TEST_DATABASE_URL")) as dsn:
        yield dsn


@pytest.fixture(scope="session")
def es_url() -> Iterator[str]:
    with local_search(os.environ.get("ELASTICSEARCH_URL")) as url:
        yield url


def _module_slug(request: pytest.FixtureRequest) -> str:
    name = re.sub(r"[^a-z0-9]+", "_", request.module.__name__.rsplit(".", 1)[-1].lower())
    return f"pq_{name[:30]}_{uuid.uuid4().hex[:6]}"


@pytest.fixture(scope="module")
def database(admin_dsn: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh Supabase-like database for this module: sample schema, then
    `procqueue migrate`, both as the non-superuser owner."""
    with supabase_database(admin_dsn, _module_slug(request)) as dsn:
        migrate(dsn)
        yield dsn


@pytest.fixture
def fresh_database(admin_dsn: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """The same as `database`, for one test: for tests that change what others count."""
    with supabase_database(admin_dsn, _module_slug(request)) as dsn:
        migrate(dsn)
        yield dsn


def make_settings(database: str, es_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database,
        "elasticsearch_url": es_url,
        "index_prefix": f"t{uuid.uuid4().hex[:8]}_",
        "retry_backoff": 0,
        "polling_interval": 0.5,
        # No periodic maintenance jobs in job counts; tests that need them turn them on.
        "maintenance_tasks": False,
    }
    values.update(overrides)
    return load_settings(**values)


@pytest.fixture(scope="module")
def settings(database: str, es_url: str) -> Settings:
    return make_settings(database, es_url)


@pytest.fixture(scope="module")
async def db(database: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """An autocommit connection to the module's database, with SELLER_ID as a user."""
    conn = await psycopg.AsyncConnection.connect(database, autocommit=True)
    await conn.execute(
        "INSERT INTO auth.users (id, email) VALUES (%s, 'seller@example.com')", [SELLER_ID]
    )
    yield conn
    await conn.close()


@pytest.fixture(scope="module")
async def app(settings: Settings) -> AsyncIterator[ProcqueueApp]:
    application = build_app(settings)
    async with application.open_async():
        yield application
    await application.services.aclose()
