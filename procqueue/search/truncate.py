"""`<entity>:truncate`: after a TRUNCATE of the entity's table (which fires no row
trigger, sql/triggers/entity_sync.sql), delete every document whose row is gone.

The job scans the index's ids as the reconciliation's end of pass does and enqueues
sync jobs for the ids without a row that no sync job covers yet; those jobs delete
the documents with the usual external-version guard. So a row written after the
TRUNCATE, even in its own transaction, keeps its document: its id has a row (or a
pending sync job, which indexes it), and an older delete never beats a newer write.
"""

from __future__ import annotations

import logging

from procqueue.engine.app import ProcqueueApp
from procqueue.entities import Entity
from procqueue.search.client import search_index, translate_errors
from procqueue.search.jobs import truncate_job
from procqueue.search.reconcile import without_pending_sync
from procqueue.search.settings import SearchSettings
from procqueue.search.verify import Drift, check_documents, repair

logger = logging.getLogger(__name__)


def register(app: ProcqueueApp) -> None:
    for entity in app.services.entities.entities:
        _register_entity(app, entity)


def _register_entity(app: ProcqueueApp, entity: Entity) -> None:
    settings = app.services.settings
    batch_size = settings.section(SearchSettings).reconcile_batch
    spec = truncate_job(entity)

    async def after_truncate() -> int:
        search = search_index(app.services)
        async with app.pool.connection() as conn:
            await conn.set_autocommit(True)
            try:
                with translate_errors(f"looking for {search.alias(entity)}"):
                    if not await search.client.indices.exists_alias(name=search.alias(entity)):
                        return 0
                drift = Drift(entity.name)
                await check_documents(conn, search, entity, drift, batch_size)
                gone = await without_pending_sync(
                    conn, entity, drift.extra, settings.overrun_after
                )
                await repair(conn, entity, gone, settings.bulk_threshold, settings.bulk_chunk_size)
            finally:
                await conn.set_autocommit(False)
        logger.info(
            "%s was truncated: %d document(s) without a row get a sync job", entity.table, len(gone)
        )
        return len(gone)

    app.task_of(spec)(after_truncate)
