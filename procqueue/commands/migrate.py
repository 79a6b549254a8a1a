"""`procqueue migrate`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from procqueue import migrate
from procqueue.entities import load_entities
from procqueue.local import install_sample_schema
from procqueue.settings import get_settings


def run(args: argparse.Namespace) -> int:
    if args.from_scratch:
        entities = load_entities(args.entities_file)
        print(migrate.render(migrate.plan_from_scratch(entities)), end="")
        return 0
    settings = get_settings()
    entities = load_entities(settings.entities_file)
    if args.sample_schema:
        install_sample_schema(settings.dsn)
    steps = migrate.migrate(
        settings.dsn,
        entities,
        print_only=args.print_sql,
        notifications_table=settings.notifications_table,
        image_grace_seconds=settings.image_cleanup_grace,
        bulk=(settings.bulk_threshold, settings.bulk_chunk_size),
    )
    if args.print_sql:
        print(migrate.render(steps), end="")
        return 0
    recorded = [step.record_as for step in steps if step.record_as]
    tables = ", ".join(entity.table for entity in entities)
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
        "--entities-file", type=Path, default=None, help="with --from-scratch: entity config"
    )
    parser.add_argument(
        "--sample-schema",
        action="store_true",
        help="first create the sample marketplace tables if missing (demo, docker compose)",
    )
    parser.set_defaults(handler=run)
