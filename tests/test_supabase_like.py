"""The test database looks like a Supabase project, and the sample schema (what
`docker-compose.yml` runs) works there without widening Supabase's grants."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.support.supabase import OWNER_ROLE, supabase_database

SAMPLE_TABLES = ("inventory_items", "listings", "notifications", "push_tokens")
AUTH_ACLS = """
SELECT (SELECT nspacl::text FROM pg_namespace WHERE nspname = 'auth'),
       (SELECT relacl::text FROM pg_class WHERE oid = 'auth.users'::regclass),
       (SELECT relowner::regrole::text FROM pg_class WHERE oid = 'auth.users'::regclass)
"""


@pytest.fixture
def bare_project(admin_dsn: str) -> Iterator[str]:
    """A Supabase-like database with none of the marketplace's tables yet."""
    with supabase_database(
        admin_dsn, f"pq_supabase_{uuid.uuid4().hex[:8]}", sample_schema=False
    ) as dsn:
        yield dsn


def test_the_owner_is_like_supabases_postgres(bare_project: str) -> None:
    with psycopg.connect(bare_project) as conn:
        row = conn.execute(
            "SELECT current_user, rolsuper, rolbypassrls, has_schema_privilege('auth', 'CREATE'),"
            " has_schema_privilege('auth', 'USAGE'), has_table_privilege('auth.users', 'SELECT')"
            " FROM pg_roles WHERE rolname = current_user"
        ).fetchone()
    assert row == (OWNER_ROLE, False, True, False, True, True)


def test_sample_schema_through_the_cli_leaves_auth_alone(
    bare_project: str, es_url: str, tmp_path: Path
) -> None:
    with psycopg.connect(bare_project) as conn:
        before = conn.execute(AUTH_ACLS).fetchone()
    environment = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PROCQUEUE_")},
        "DATABASE_URL": bare_project,
        "ELASTICSEARCH_URL": es_url,
    }
    for _ in range(2):  # idempotent, as `docker compose up` re-runs it
        result = subprocess.run(
            [sys.executable, "-m", "procqueue.cli", "migrate", "--sample-schema"],
            capture_output=True, text=True, env=environment, cwd=tmp_path,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""
    with psycopg.connect(bare_project) as conn:
        assert conn.execute(AUTH_ACLS).fetchone() == before
        grants = conn.execute(
            "SELECT has_table_privilege(role, 'auth.users', 'SELECT') FROM "
            "unnest(ARRAY['anon', 'authenticated']) AS role"
        ).fetchall()
        assert grants == [(False,), (False,)]
        security = conn.execute(
            "SELECT relname, relrowsecurity FROM pg_class WHERE relname = ANY(%s)"
            " AND relnamespace = 'public'::regnamespace ORDER BY relname",
            [list(SAMPLE_TABLES)],
        ).fetchall()
    assert security == [(name, True) for name in sorted(SAMPLE_TABLES)]


def test_sample_schema_failure_is_one_line(bare_project: str, tmp_path: Path) -> None:
    with psycopg.connect(bare_project, autocommit=True) as conn:
        conn.execute("CREATE TABLE public.listings (id int)")  # not the sample's listings
    result = subprocess.run(
        [sys.executable, "-m", "procqueue.cli", "migrate", "--sample-schema"],
        capture_output=True, text=True, cwd=tmp_path,
        env={**os.environ, "DATABASE_URL": bare_project},
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.startswith("procqueue: error: ")
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
