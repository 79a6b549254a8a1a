"""A Supabase-like database on plain PostgreSQL (supabase_platform.sql): tests run
as `pq_postgres`, which plays Supabase's non-superuser `postgres` role, on the
sample schema with row-level security on."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from procqueue.local import database_dsn, install_sample_schema

PLATFORM_SQL = Path(__file__).with_name("supabase_platform.sql")
OWNER_ROLE = "pq_postgres"
#: Cluster-wide roles are created under this advisory lock: test runs may overlap.
ROLES_LOCK = 0x73757061  # "supa"


def as_role(dsn: str, role: str) -> str:
    """The same database, logged in as `role` (trust authentication)."""
    params = {key: value for key, value in conninfo_to_dict(dsn).items() if value is not None}
    params.pop("password", None)
    params["user"] = role
    return make_conninfo("", **params)


@contextlib.contextmanager
def supabase_database(admin_dsn: str, name: str, *, sample_schema: bool = True) -> Iterator[str]:
    """A new Supabase-like database, with the sample schema installed by its owner
    unless told otherwise; yields the owner's DSN and drops the database afterwards."""
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        with psycopg.connect(database_dsn(admin_dsn, name), autocommit=True) as platform:
            platform.execute("SELECT pg_advisory_lock(%s)", [ROLES_LOCK])
            platform.execute(PLATFORM_SQL.read_text(encoding="utf-8").encode())
        owner_dsn = as_role(database_dsn(admin_dsn, name), OWNER_ROLE)
        if sample_schema:
            install_sample_schema(owner_dsn)
        yield owner_dsn
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def act_as_api_user(
    conn: psycopg.AsyncConnection[Any], role: str, user_id: str | None, *, local: bool = False
) -> None:
    """Become an API role as PostgREST does: the role, and the JWT's claims that
    auth.uid() reads (`local`: for the current transaction only)."""
    claims = json.dumps({"role": role, **({"sub": user_id} if user_id else {})})
    scope = "LOCAL " if local else ""
    await conn.execute(
        sql.SQL("SET {scope}ROLE {role}").format(scope=sql.SQL(scope), role=sql.Identifier(role))
    )
    await conn.execute("SELECT set_config('request.jwt.claims', %s, %s)", [claims, local])
