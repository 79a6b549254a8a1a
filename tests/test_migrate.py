"""`procqueue migrate`: idempotent, recorded, printable, and clear about what is missing."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import procrastinate
import psycopg
import pytest

from procqueue import migrate as migrations
from procqueue.entities import DEFAULT_ENTITIES, LISTING
from procqueue.errors import MigrationError
from procqueue.settings import SchemaConfig
from tests.support.supabase import supabase_database


@pytest.fixture
def empty_database(admin_dsn: str) -> Iterator[str]:
    """A database with the sample tables and no queue yet."""
    with supabase_database(admin_dsn, f"pq_migrate_{uuid.uuid4().hex[:8]}") as dsn:
        yield dsn


def applied_names(dsn: str) -> list[str]:
    with psycopg.connect(dsn) as conn:
        return [name for (name,) in conn.execute("SELECT name FROM procqueue.schema_migrations")]


def test_migrate_installs_everything_once_and_records_it(empty_database: str) -> None:
    first = migrations.migrate(empty_database)
    recorded = [step.record_as for step in first if step.record_as]
    assert recorded[0] == "procrastinate"
    assert "0001_queue_api.sql" in recorded
    assert sorted(applied_names(empty_database)) == sorted(recorded)

    second = migrations.migrate(empty_database)
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
    steps = migrations.migrate(empty_database, print_only=True)
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
        conn.execute(script)
    rerun = migrations.migrate(empty_database)
    assert [step.record_as for step in rerun if step.record_as] == []


def test_missing_table_fails_with_a_clear_message(empty_database: str) -> None:
    ghost = replace(LISTING, name="ghost", table="public.ghosts", index="ghosts")
    with pytest.raises(MigrationError, match=r"table public\.ghosts .* does not exist"):
        migrations.migrate(empty_database, SchemaConfig(entities=(*DEFAULT_ENTITIES, ghost)))
    with psycopg.connect(empty_database) as conn:
        # Nothing half-applied: the whole run is one transaction.
        assert conn.execute("SELECT to_regnamespace('procrastinate')").fetchone() == (None,)


def test_missing_column_fails_with_a_clear_message(empty_database: str) -> None:
    broken = replace(LISTING, fields={**LISTING.fields, "colour": "keyword"})
    with pytest.raises(MigrationError, match=r"public\.listings .* no column\(s\) colour"):
        migrations.migrate(empty_database, SchemaConfig(entities=(broken,)))


def test_edited_migration_is_refused(empty_database: str) -> None:
    migrations.migrate(empty_database)
    with psycopg.connect(empty_database) as conn:
        conn.execute(
            "UPDATE procqueue.schema_migrations SET checksum = 'edited' "
            "WHERE name = '0001_queue_api.sql'"
        )
    with pytest.raises(MigrationError, match="append-only"):
        migrations.migrate(empty_database)


def test_procrastinate_upgrade_applies_its_own_migrations_in_order() -> None:
    steps = migrations.procrastinate_steps("3.0.0")
    names = [step.description.removeprefix("Procrastinate migration ") for step in steps[:-1]]
    assert names, "an older Procrastinate must get its migrations"
    assert names == sorted(names)
    assert all(not name.startswith(("02.", "03.00.")) for name in names)
    assert steps[-1].record_as == "procrastinate"
    assert migrations.procrastinate_steps(procrastinate.__version__) == []


def test_unreachable_database_is_a_clear_error() -> None:
    with pytest.raises(MigrationError, match="cannot connect to the database") as error:
        migrations.migrate("postgresql://someone:hunter2secret@127.0.0.1:1/nowhere")
    assert "hunter2secret" not in str(error.value)


def _trigger_sections(script: str) -> list[str]:
    """The parts of a printed script that attach triggers, in order."""
    sections = script.split("\n-- ")
    heading = re.compile(r"[a-z ]+ triggers? on [\w.]+\n")
    return [section for section in sections if heading.match(section)]


def test_from_scratch_and_print_sql_build_the_same_triggers_from_the_same_settings(
    empty_database: str, tmp_path: Path
) -> None:
    entities_file = tmp_path / "entities.toml"
    entities_file.write_text(
        '[[entity]]\nname = "listing"\ntable = "public.listings"\nindex = "listings"\n'
        'image_columns = ["main_image_url"]\nignored_columns = ["view_count"]\n'
        '[entity.fields]\nid = "keyword"\ntitle = "text"\n'
    )
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("PROCQUEUE_") and key != "DATABASE_URL"
    }
    environment.update(
        PROCQUEUE_BULK_THRESHOLD="7",
        PROCQUEUE_BULK_CHUNK_SIZE="33",
        PROCQUEUE_IMAGE_CLEANUP_GRACE="42",
        PROCQUEUE_NOTIFICATIONS_TABLE="",
    )

    def printed(*arguments: str, **extra: str) -> str:
        return subprocess.run(
            [sys.executable, "-m", "procqueue.cli", "migrate", *arguments],
            check=True, capture_output=True, text=True, cwd=tmp_path,
            env={**environment, **extra},
        ).stdout  # fmt: skip

    from_scratch = _trigger_sections(
        printed("--from-scratch", PROCQUEUE_ENTITIES_FILE=str(entities_file))
    )
    by_setting = _trigger_sections(
        printed(
            "--print-sql",
            DATABASE_URL=empty_database,
            PROCQUEUE_ENTITIES_FILE=str(entities_file),
        )
    )
    by_flag = _trigger_sections(
        printed("--print-sql", "--entities-file", str(entities_file), DATABASE_URL=empty_database)
    )
    assert from_scratch == by_setting == by_flag
    assert [section.splitlines()[0] for section in from_scratch] == [
        "sync triggers on public.listings",
        "image cleanup trigger on public.listings",
    ]
    triggers = "".join(from_scratch)
    assert (
        "'listing', 'id', 'sync', 'listing:update', 'listing:', 'listing:bulk', '7', '33', "
        "'listing:drain', 'view_count'"
    ) in triggers
    assert "'42.000', 'main_image_url'" in triggers
