"""`procqueue migrate`."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

import psycopg

from procqueue import migrate, resources
from procqueue.errors import MigrationError, ProcqueueError
from procqueue.feature import Step
from procqueue.features import Settings, get_settings
from procqueue.local import install_sample_schema
from procqueue.migrate import first_line
from procqueue.search.schema import create_missing_indexes
from procqueue.settings import SchemaConfig, load_schema_settings


def _sample_schema_step() -> Step:
    """examples/sample_schema.sql as the first step of a printed script."""
    return Step(
        "the sample marketplace tables (--sample-schema)",
        resources.sample_schema().read_text(encoding="utf-8"),
    )


def _create_indexes(settings: Settings, schema: SchemaConfig) -> None:
    """The first index behind each entity's alias. An unreachable Elasticsearch does not
    fail the migration: the first sync creates them as well."""
    try:
        created = asyncio.run(create_missing_indexes(settings.search, schema.entities))
    except ProcqueueError as error:
        print(
            f"procqueue: warning: the search indexes were not created ({error}): the first "
            "sync creates them, or run `procqueue reindex` once Elasticsearch answers",
            file=sys.stderr,
        )
        return
    if created:
        print(
            f"created the search indexes behind {', '.join(created)} (a table that already "
            "has rows: `procqueue reindex` fills its index)"
        )


def run(args: argparse.Namespace) -> int:
    # Every path reads the same schema settings, so they all build the same triggers.
    schema = load_schema_settings().schema_config(args.entities_file)
    if args.from_scratch:
        steps = migrate.plan_from_scratch(schema)
        if args.sample_schema:
            steps.insert(0, _sample_schema_step())
        print(migrate.render(steps), end="")
        return 0
    settings = get_settings()
    if args.sample_schema:
        try:
            install_sample_schema(settings.dsn)
        except psycopg.Error as error:
            raise MigrationError(
                f"cannot install the sample schema: {first_line(error)} "
                "(it needs CREATE on schema public, and creates auth.users only where none exists)"
            ) from None
    steps = migrate.migrate(
        settings.dsn,
        schema,
        print_only=args.print_sql,
        transaction_pooler=settings.uses_transaction_pooler,
    )
    if args.print_sql:
        print(migrate.render(steps), end="")
        return 0
    recorded = [step.record_as for step in steps if step.record_as]
    tables = ", ".join(entity.table for entity in schema.entities)
    print(f"applied: {', '.join(recorded) if recorded else 'nothing new'}; triggers on {tables}")
    _create_indexes(settings, schema)
    return 0


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "migrate", help="install the queue and attach the triggers (idempotent)"
    )
    parser.add_argument(
        "--print-sql", action="store_true", help="print the pending SQL instead of running it"
    )
    parser.add_argument(
        "--from-scratch",
        action="store_true",
        help="print the SQL for an empty database without connecting (for supabase db push)",
    )
    parser.add_argument(
        "--entities-file",
        type=Path,
        default=None,
        help="entity config (default: PROCQUEUE_ENTITIES_FILE, else the sample marketplace)",
    )
    parser.add_argument(
        "--sample-schema",
        action="store_true",
        help="first create the sample marketplace tables if missing (demo, docker compose); "
        "with --from-scratch: print their SQL first",
    )
    parser.set_defaults(handler=run)
