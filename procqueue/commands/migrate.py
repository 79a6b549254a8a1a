"""`procqueue migrate`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import psycopg

from procqueue import migrate
from procqueue.errors import MigrationError
from procqueue.features import get_settings
from procqueue.local import install_sample_schema
from procqueue.migrate import first_line
from procqueue.settings import load_schema_settings


def run(args: argparse.Namespace) -> int:
    # Every path reads the same schema settings, so they all build the same triggers.
    schema = load_schema_settings().schema_config(args.entities_file)
    if args.from_scratch:
        print(migrate.render(migrate.plan_from_scratch(schema)), end="")
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
        help="first create the sample marketplace tables if missing (demo, docker compose)",
    )
    parser.set_defaults(handler=run)
