"""Image cleanup: delete the Cloudinary assets behind removed URLs, unless some
row of some configured table still uses them.

The trigger (sql/triggers/image_cleanup.sql) enqueues `images:cleanup` with the
URLs a row lost, after a grace period, at most MAX_URLS_PER_JOB per job. The job
runs the orphan check at run time, over every image column of every entity, then
deletes the orphans in batches. Deleting an asset that is already gone is
harmless, so the job may run any number of times. A job carrying more URLs (written
by an older trigger, or by hand) does no check: it is split into jobs of
MAX_URLS_PER_JOB, so that each job's reference check and deletes stay bounded.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from procrastinate import JobContext
from psycopg_pool import AsyncConnectionPool

from procqueue.engine.app import ProcqueueApp
from procqueue.entities import Entity
from procqueue.errors import PermanentError
from procqueue.images.cloudinary import CloudinaryDeleter, cloudinary_deleter
from procqueue.images.jobs import CLEANUP
from procqueue.images.references import find_referenced
from procqueue.images.settings import CloudinaryConfig
from procqueue.images.urls import Asset, parse_delivery_url
from procqueue.queue.jobs import enqueue

logger = logging.getLogger(__name__)

#: URLs one cleanup job handles: what one Admin API call deletes (the trigger
#: enqueues jobs of at most this many; a larger job is split).
MAX_URLS_PER_JOB = 100
#: Assets one log line of a job names (the rest are counted).
LOGGED_ASSETS = 5


@dataclass
class CleanupReport:
    deleted: list[Asset] = field(default_factory=list)
    already_gone: list[Asset] = field(default_factory=list)
    kept: list[Asset] = field(default_factory=list)
    outside_folders: list[Asset] = field(default_factory=list)
    skipped_urls: int = 0

    def summary(self) -> dict[str, int]:
        return {
            "deleted": len(self.deleted),
            "already_gone": len(self.already_gone),
            "kept": len(self.kept),
            "outside_folders": len(self.outside_folders),
            "skipped_urls": self.skipped_urls,
        }


async def cleanup_images(
    pool: AsyncConnectionPool[Any],
    entities: Sequence[Entity],
    deleter: CloudinaryDeleter,
    urls: Sequence[str],
) -> CleanupReport:
    """Delete the assets behind `urls` that no row references now."""
    parsed = [parse_delivery_url(url, deleter.delivery) for url in urls]
    found = sorted({asset for asset in parsed if asset is not None})
    report = CleanupReport(skipped_urls=parsed.count(None))
    # Rows are written by API users: a URL in one may name any asset of the account
    # (another user's avatar, a logo). Only the marketplace's own folders are ever
    # deleted from.
    folders = deleter.config.folders
    assets = [asset for asset in found if in_folders(asset.public_id, folders)]
    report.outside_folders = [asset for asset in found if asset not in assets]
    if report.outside_folders:  # one line a job, however many URLs an API user wrote
        outside = report.outside_folders
        named = ", ".join(str(asset) for asset in outside[:LOGGED_ASSETS])
        more = f" and {len(outside) - LOGGED_ASSETS} more" if len(outside) > LOGGED_ASSETS else ""
        logger.warning(
            "image %s%s is outside PROCQUEUE_CLOUDINARY_FOLDERS (%s): kept, never deleted by "
            "cleanup", named, more, ", ".join(folders),
        )  # fmt: skip
    if not assets:
        return report
    referenced: set[Asset] = set()
    async with pool.connection() as conn:
        for start in range(0, len(assets), MAX_URLS_PER_JOB):  # bounded checks
            part = assets[start : start + MAX_URLS_PER_JOB]
            referenced |= await find_referenced(conn, entities, part, deleter.delivery)
    report.kept = sorted(referenced)
    for asset in report.kept:
        logger.info("image %s is still referenced by a row: kept", asset)
    orphans = [asset for asset in assets if asset not in referenced]
    if orphans:
        deletion = await deleter.delete(orphans)
        report.deleted, report.already_gone = deletion.deleted, deletion.not_found
    return report


async def split_cleanup(
    pool: AsyncConnectionPool[Any], urls: Sequence[str], entity: str | None
) -> list[int]:
    """Enqueue `urls` (without repeats) as cleanup jobs of at most MAX_URLS_PER_JOB,
    due now, in one transaction; their ids."""
    unique = list(dict.fromkeys(urls))
    extra = {} if entity is None else {"entity": entity}
    job_ids = []
    async with pool.connection() as conn, conn.transaction():
        for start in range(0, len(unique), MAX_URLS_PER_JOB):
            args = {"urls": unique[start : start + MAX_URLS_PER_JOB], **extra}
            job_id = await enqueue(conn, CLEANUP, args)
            if job_id is not None:
                job_ids.append(job_id)
    return job_ids


def in_folders(public_id: str, folders: Sequence[str]) -> bool:
    """Whether the asset lies in one of `folders` (or below it); "*" is every folder."""
    return any(folder == "*" or public_id.startswith(f"{folder}/") for folder in folders)


#: The outcome of a cleanup job when the deployment has no Cloudinary credentials (as
#: an unset SMTP host or FCM key makes notifications "skipped"): nothing can be deleted,
#: and retrying would not change that.
NOT_CONFIGURED = "skipped: Cloudinary is not configured (set CLOUDINARY_URL)"


def make_deleter(config: CloudinaryConfig | None) -> CloudinaryDeleter | None:
    """The deleter of the configured account; None when none is configured."""
    return None if config is None else CloudinaryDeleter(config)


def register(app: ProcqueueApp) -> None:
    """`images:cleanup` on the `images` queue; its deleter is the app's
    (`cloudinary_deleter(app.services)`, provided by procqueue/images/feature.py)."""

    @app.task_of(CLEANUP, pass_context=True)
    async def cleanup(
        context: JobContext, urls: list[str], entity: str | None = None
    ) -> dict[str, int] | str:
        if not isinstance(urls, list) or not all(isinstance(url, str) for url in urls):
            raise PermanentError("images:cleanup expects args {'urls': [<delivery URL>, ...]}")
        fields = {"job_id": context.job.id, "task": CLEANUP.task_name}
        if len(set(urls)) > MAX_URLS_PER_JOB:
            job_ids = await split_cleanup(app.pool, urls, entity)
            outcome = (
                f"split: {len(urls)} URLs are more than one job handles ({MAX_URLS_PER_JOB}); "
                f"enqueued as {len(job_ids)} jobs ({job_ids[0]}..{job_ids[-1]})"
            )
            logger.warning("images:cleanup for %s: %s", entity or "?", outcome, extra=fields)
            return outcome
        deleter = cloudinary_deleter(app.services)
        if deleter is None:
            logger.warning("images:cleanup for %s: %s", entity or "?", NOT_CONFIGURED, extra=fields)
            return NOT_CONFIGURED
        report = await cleanup_images(app.pool, app.services.entities.entities, deleter, urls)
        logger.info("images:cleanup for %s: %s", entity or "?", report.summary(), extra=fields)
        return report.summary()
