"""Periodic reconciliation: drift heals by itself.

A lost acknowledged write, a document edited behind the queue's back, a sync job an
admin cancelled: `verify --repair` would find and mend each, and this periodic job
(`search:reconcile`, on the `maintenance` queue, PROCQUEUE_RECONCILE_CRON, every 5
minutes by default) runs the same checks incrementally, so that nobody has to. Each
run checks, per entity, the next PROCQUEUE_RECONCILE_BATCH rows in key order (one
keyset SELECT and one `mget`, content hashes compared as `verify` does) from where
the last run stopped; a pass that reaches the end of the table also scans the
index's ids for documents without a row, then starts over. Drifted ids get sync
jobs (procqueue/search/verify.py `repair`).

Ids a waiting or running sync job covers are left to that job: under a backlog the
index is behind, not drifted. Cost and delay: a table of N rows is covered in
ceil(N / batch) runs, so with the defaults 60,000 rows an hour; drift is repaired
within one pass. Race: a row whose job finishes between the compare and the
pending-job check gets one more (harmless) sync job.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import psycopg
from croniter import croniter

from procqueue.engine.app import ProcqueueApp
from procqueue.entities import Entity
from procqueue.errors import ConfigError
from procqueue.search.client import SearchIndex, search_index, translate_errors
from procqueue.search.drain import ensure_drain
from procqueue.search.jobs import RECONCILE, job_specs, row_job
from procqueue.search.queries import query
from procqueue.search.settings import SearchSettings
from procqueue.search.verify import Drift, check_documents, compare_rows, read_page, repair
from procqueue.settings import SchemaConfig

logger = logging.getLogger(__name__)


@dataclass
class Reconciled:
    entity: str
    checked_rows: int = 0
    pass_ended: bool = False
    repaired: list[str] = field(default_factory=list)
    #: Changes waited with no drain job to take them (its job failed or was cancelled).
    drain_restarted: bool = False


async def reconcile_entity(
    conn: psycopg.AsyncConnection[Any], search: SearchIndex, entity: Entity, *,
    batch_size: int, threshold: int, chunk_size: int, overrun_after: float,
) -> Reconciled:  # fmt: skip
    """One step of the entity's pass; `conn` in autocommit mode."""
    result = Reconciled(entity.name)
    result.drain_restarted = await ensure_drain(conn, entity)
    alias = search.alias(entity)
    with translate_errors(f"looking for {alias}"):
        if not await search.client.indices.exists_alias(name=alias):
            return result  # nothing synced yet: the first sync creates it
    cursor = await conn.execute(query("reconcile_cursor"), {"entity": entity.name})
    row = await cursor.fetchone()
    after_key = None if row is None else row[0]
    rows = await read_page(conn, entity, after_key, batch_size)
    drift = Drift(entity.name)
    await compare_rows(search, entity, rows, drift)
    result.checked_rows = len(rows)
    result.pass_ended = len(rows) < batch_size
    if result.pass_ended:
        await check_documents(conn, search, entity, drift, batch_size)
    result.repaired = await without_pending_sync(conn, entity, drift.ids, overrun_after)
    await repair(
        conn, entity, result.repaired, threshold, chunk_size, above_version=drift.stale_version
    )
    last = None if result.pass_ended else str(rows[-1][entity.primary_key])
    await conn.execute(query("reconcile_advance"), {"entity": entity.name, "after_key": last})
    if result.repaired:
        logger.warning(
            "reconciliation of %s: %d document(s) missing, stale or extra with no sync job "
            "pending; sync jobs enqueued (first: %s)",
            entity.table, len(result.repaired), ", ".join(result.repaired[:5]),
        )  # fmt: skip
    return result


async def without_pending_sync(
    conn: psycopg.AsyncConnection[Any], entity: Entity, ids: list[str], overrun_after: float
) -> list[str]:
    """The ids no waiting or running sync job covers: the others are only behind (a
    backlog), not drifted, and their job will bring them in line. A job running for
    more than `overrun_after` seconds covers nothing: no live worker holds it."""
    if not ids:
        return []
    specs = job_specs(SchemaConfig(entities=(entity,)))
    cursor = await conn.execute(
        query("ids_without_pending_sync"),
        {
            "ids": ids,
            "tasks": [spec.task_name for spec in specs if spec.queue == entity.queue],
            "lock_prefix": row_job(entity, "update").lock_prefix,
            "entity": entity.name,
            "overrun_after": overrun_after,
        },
    )
    return [row[0] for row in await cursor.fetchall()]


def register(app: ProcqueueApp) -> None:
    """The periodic reconciliation, unless PROCQUEUE_RECONCILE_CRON is empty or the
    maintenance tasks are off."""
    settings = app.services.settings
    own = settings.section(SearchSettings)
    if not settings.maintenance_tasks or not own.reconcile_cron:
        return
    if not croniter.is_valid(own.reconcile_cron):
        raise ConfigError(
            f"PROCQUEUE_RECONCILE_CRON is not a cron expression: {own.reconcile_cron!r}: "
            "give five fields, e.g. '*/5 * * * *', or '' for no reconciliation"
        )

    async def reconcile(timestamp: int) -> dict[str, int]:
        search = search_index(app.services)
        repaired: dict[str, int] = {}
        async with app.pool.connection() as conn:
            await conn.set_autocommit(True)
            try:
                for entity in app.services.entities.entities:
                    done = await reconcile_entity(
                        conn, search, entity, batch_size=own.reconcile_batch,
                        threshold=settings.bulk_threshold, chunk_size=settings.bulk_chunk_size,
                        overrun_after=settings.overrun_after,
                    )  # fmt: skip
                    repaired[entity.name] = len(done.repaired)
            finally:
                await conn.set_autocommit(False)
        return repaired

    task = app.task_of(RECONCILE, priority=50, queueing_lock=RECONCILE.task_name)(reconcile)
    app.periodic(cron=own.reconcile_cron, periodic_id="reconcile")(task)
