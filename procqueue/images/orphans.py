"""The dry run: assets the queue has seen removed that no row references now.

Read from the `images:cleanup` jobs still in Procrastinate's table (any status),
checked with the same orphan check the job runs. Nothing is deleted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from procqueue.engine.connections import connect_async
from procqueue.entities import Entity
from procqueue.images.jobs import CLEANUP
from procqueue.images.queries import query
from procqueue.images.references import find_referenced
from procqueue.images.urls import Asset, DeliveryConfig, explain

#: Assets per reference check (one query with three needles each).
CHECK_BATCH = 1000


@dataclass(frozen=True)
class Orphan:
    asset: Asset
    job_id: int  # the latest cleanup job that carried it
    job_status: str  # todo: not yet handled; succeeded: deleted (or already gone)


async def find_orphans(
    dsn: str,
    entities: Sequence[Entity],
    delivery: DeliveryConfig,
    *,
    transaction_pooler: bool = False,
) -> list[Orphan]:
    async with await connect_async(dsn, transaction_pooler=transaction_pooler) as conn:
        cursor = await conn.execute(query("image_cleanup_jobs"), {"task_name": CLEANUP.task_name})
        latest: dict[Asset, tuple[int, str]] = {}
        for job_id, status, url in await cursor.fetchall():
            found = explain(url, delivery)
            if isinstance(found, Asset):
                latest[found] = (int(job_id), str(status))
        assets = sorted(latest)
        referenced: set[Asset] = set()
        for start in range(0, len(assets), CHECK_BATCH):  # bounded reference checks
            part = assets[start : start + CHECK_BATCH]
            referenced |= await find_referenced(conn, entities, part, delivery)
    return [Orphan(asset, *latest[asset]) for asset in sorted(latest) if asset not in referenced]
