"""`procqueue images orphans`: a dry run of the Cloudinary cleanup."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from procqueue.commands.output import print_json, table
from procqueue.entities import load_entities
from procqueue.features import get_settings
from procqueue.images.orphans import find_orphans
from procqueue.images.urls import DeliveryConfig


def show_orphans(args: argparse.Namespace) -> int:
    settings = get_settings()
    # It reads the database only: no Cloudinary credentials needed, only the cloud name
    # to tell this account's URLs from others'; without it, every cloud's are listed.
    if settings.cloudinary_cloud_name:
        delivery = DeliveryConfig.of(
            settings.cloudinary_cloud_name, settings.cloudinary_domain_list
        )
    else:
        delivery = DeliveryConfig.every_cloud()
    entities = load_entities(settings.entities_file)
    orphans = asyncio.run(
        find_orphans(
            settings.dsn, entities, delivery, transaction_pooler=settings.uses_transaction_pooler
        )
    )
    if delivery.any_cloud:
        print(
            "procqueue: note: CLOUDINARY_CLOUD_NAME (or CLOUDINARY_URL) is unset, so removed "
            "images of every Cloudinary cloud are listed, each with its cloud",
            file=sys.stderr,
        )
    if args.pending:
        orphans = [orphan for orphan in orphans if orphan.job_status != "succeeded"]
    cloud = ("cloud",) if delivery.any_cloud else ()  # whose each is, when not only ours
    rows = [
        ((o.asset.cloud_name,) if cloud else ())
        + (o.asset.resource_type, o.asset.delivery_type, o.asset.public_id, o.job_id, o.job_status)
        for o in orphans
    ]
    if args.json:
        keys = (*cloud, "resource_type", "type", "public_id", "job_id", "job_status")
        print_json([dict(zip(keys, row, strict=True)) for row in rows])
    elif rows:
        print(table((*cloud, "resource", "type", "public id", "job", "job status"), rows))
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
