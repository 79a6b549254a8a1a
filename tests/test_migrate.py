"""`procqueue migrate`: idempotent, recorded, printable, and clear about what is missing."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import replace

import psycopg
import pytest

from procqueue import migrate as migrations
from procqueue.entities import DEFAULT_ENTITIES, LISTING
from procqueue.errors import MigrationError
from procqueue.local import scratch_database


@pytest.fixture
def empty_database(admin_dsn: str) -> Iterator[str]:
    """A database with the sample tables and no queue yet."""
    with scratch_database(admin_dsn, f"pq_migrate_{uuid.uuid4().hex[:8]}") as dsn:
        yield dsn


def applied_names(dsn: str) -> list[str]:
    with psycopg.connect(dsn) as conn:
        return [name for (name,) in conn.execute("SELECT name FROM procqueue.schema_migrations")]


def test_migrate_installs_everything_once_and_records_it(empty_database: str) -> None:
    first = migrations.migrate(empty_database, DEFAULT_ENTITIES)
    recorded = [step.record_as for step in first if step.record_as]
    assert recorded[0] == "procrastinate"
    assert "0001_queue_api.sql" in recorded
    assert sorted(applied_names(empty_database)) == sorted(recorded)

    second = migrations.migrate(empty_database, DEFAULT_ENTITIES)
    assert [step.record_as for step in second if step.record_as] == []
    with psycopg.connect(empty_database) as conn:
        triggers = conn.execute(
            "SELECT tgrelid::regclass::text FROM pg_trigger WHERE tgname = 'procqueue_sync'"
        ).fetchall()
        schema = conn.execute(
            "SELECT relnamespace::regnamespace::text FROM pg_class "
            "WHERE relname = 'procrastinate_jobs'"
        ).fetchone()
    assert sorted(table for (table,) in triggers) == ["inventory_items", "listings"]
    assert schema == ("procrastinate",)


def test_print_sql_changes_nothing(empty_database: str) -> None:
    steps = migrations.migrate(empty_database, DEFAULT_ENTITIES, print_only=True)
    script = migrations.render(steps)
    assert "CREATE TABLE procrastinate_jobs" in script
    assert "CREATE OR REPLACE TRIGGER procqueue_sync" in script
    with psycopg.connect(empty_database) as conn:
        assert conn.execute("SELECT to_regnamespace('procrastinate')").fetchone() == (None,)


def test_from_scratch_script_applies_as_one_file_and_matches_migrate(empty_database: str) -> None:
    """The printed script is what `supabase db push` would run."""
    script = subprocess.run(
        [sys.executable, "-m", "procqueue.cli", "migrate", "--from-scratch"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    # As a migration tool would: the whole file, one simple-query call.
    with psycopg.connect(empty_database, autocommit=True) as conn:
        conn.execute(script)  # type: ignore[arg-type]
    rerun = migrations.migrate(empty_database, DEFAULT_ENTITIES)
    assert [step.record_as for step in rerun if step.record_as] == []


def test_missing_table_fails_with_a_clear_message(empty_database: str) -> None:
    ghost = replace(LISTING, name="ghost", table="public.ghosts", index="ghosts")
    with pytest.raises(MigrationError, match=r"table public\.ghosts .* does not exist"):
        migrations.migrate(empty_database, [*DEFAULT_ENTITIES, ghost])
    with psycopg.connect(empty_database) as conn:
        # Nothing half-applied: the whole run is one transaction.
        assert conn.execute("SELECT to_regnamespace('procrastinate')").fetchone() == (None,)


def test_missing_column_fails_with_a_clear_message(empty_database: str) -> None:
    broken = replace(LISTING, fields={**LISTING.fields, "colour": "keyword"})
    with pytest.raises(MigrationError, match=r"public\.listings .* no column\(s\) colour"):
        migrations.migrate(empty_database, [broken])


def test_edited_migration_is_refused(empty_database: str) -> None:
    migrations.migrate(empty_database, DEFAULT_ENTITIES)
    with psycopg.connect(empty_database) as conn:
        conn.execute(
            "UPDATE procqueue.schema_migrations SET checksum = 'edited' "
            "WHERE name = '0001_queue_api.sql'"
        )
    with pytest.raises(MigrationError, match="append-only"):
        migrations.migrate(empty_database, DEFAULT_ENTITIES)


def test_procrastinate_upgrade_applies_its_own_migrations_in_order() -> None:
    steps = migrations.procrastinate_steps("3.0.0")
    names = [step.description.removeprefix("Procrastinate migration ") for step in steps[:-1]]
    assert names, "an older Procrastinate must get its migrations"
    assert names == sorted(names)
    assert all(not name.startswith(("02.", "03.00.")) for name in names)
    assert steps[-1].record_as == "procrastinate"
    assert migrations.procrastinate_steps(migrations.procrastinate.__version__) == []


def test_unreachable_database_is_a_clear_error() -> None:
    with pytest.raises(MigrationError, match="cannot connect to the database") as error:
        migrations.migrate(
            "postgresql://someone:hunter2secret@127.0.0.1:1/nowhere", DEFAULT_ENTITIES
        )
    assert "hunter2secret" not in str(error.value)
