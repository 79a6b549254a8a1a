"""`procqueue images orphans`: a dry run of the Cloudinary cleanup."""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from procqueue.commands.output import table
from procqueue.entities import load_entities
from procqueue.errors import ConfigError
from procqueue.images.orphans import find_orphans
from procqueue.images.urls import DeliveryConfig
from procqueue.settings import get_settings


def show_orphans(args: argparse.Namespace) -> int:
    settings = get_settings()
    if not settings.cloudinary_cloud_name:
        raise ConfigError(
            "set CLOUDINARY_URL (or CLOUDINARY_CLOUD_NAME) so that image URLs can be told apart"
        )
    delivery = DeliveryConfig.of(settings.cloudinary_cloud_name, settings.cloudinary_domain_list)
    entities = load_entities(settings.entities_file)
    orphans = asyncio.run(
        find_orphans(
            settings.dsn, entities, delivery, transaction_pooler=settings.uses_transaction_pooler
        )
    )
    if args.pending:
        orphans = [orphan for orphan in orphans if orphan.job_status != "succeeded"]
    rows = [
        (o.asset.resource_type, o.asset.delivery_type, o.asset.public_id, o.job_id, o.job_status)
        for o in orphans
    ]
    if args.json:
        keys = ("resource_type", "type", "public_id", "job_id", "job_status")
        print(json.dumps([dict(zip(keys, row, strict=True)) for row in rows], indent=2))
    elif rows:
        print(table(("resource", "type", "public id", "job", "job status"), rows))
    else:
        print("no orphaned images among those the queue has seen removed")
    return 0


def register(commands: Any) -> None:
    parser = commands.add_parser("images", help="Cloudinary image cleanup")
    actions = parser.add_subparsers(dest="images_command", required=True)
    orphans = actions.add_parser(
        "orphans",
        help="list removed images no row references (dry run: deletes nothing)",
    )
    orphans.add_argument(
        "--pending", action="store_true", help="only those whose cleanup job has not succeeded"
    )
    orphans.add_argument("--json", action="store_true", help="JSON instead of a table")
    orphans.set_defaults(handler=show_orphans)
