"""Deliver one notification on one channel, at most once per target.

    1. read the notification (its row, or the job's args) and its recipient;
    2. stop if the channel was already done for this notification, or record
       "skipped" if the user switched the channel off;
    3. send to every target that has no delivery record yet, writing a record
       right after each success;
    4. if some targets failed, raise: transient failures retry the job, which
       then sends only to the targets still missing.

No database connection is held while a message is on the wire.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from psycopg_pool import AsyncConnectionPool

from procqueue.errors import PermanentError, SinkUnavailable, TransientError
from procqueue.notifications import store
from procqueue.notifications.channel import Channel
from procqueue.notifications.errors import ChannelUnavailable, TargetGone
from procqueue.notifications.model import Message, Notification, Target
from procqueue.notifications.templates import Templates
from procqueue.queue.failures import is_transient

logger = logging.getLogger(__name__)

DELIVERED = "delivered"
SKIPPED = "skipped"


@dataclass(frozen=True)
class Dispatcher:
    channel: Channel
    templates: Templates
    notifications_table: str

    async def run(
        self, pool: AsyncConnectionPool[Any], args: Mapping[str, Any], job_id: int | None
    ) -> str:
        """Deliver the job's notification; returns a one-line summary."""
        name = self.channel.name
        async with pool.connection() as conn:
            notification = await store.load_notification(conn, args, self.notifications_table)
            if notification is None:
                return f"skipped: notification {args['notification_id']} no longer exists"
            user_key = notification.recipient
            done = await store.done_targets(conn, notification.id, name)
            if user_key in done:
                return f"{name} of notification {notification.id}: already done"
            recipient = await store.load_recipient(conn, notification.recipient)
            if not await store.channel_enabled(conn, recipient.user_id, name, notification.type):
                await store.record(
                    conn, notification, name, user_key,
                    status=SKIPPED, detail="opted out", job_id=job_id,
                )  # fmt: skip
                return f"skipped: {name} is switched off by the user"
            try:
                targets = await self.channel.targets(conn, recipient)
            except ChannelUnavailable as unavailable:
                logger.warning("notification %s not sent: %s", notification.id, unavailable)
                await store.record(
                    conn, notification, name, user_key,
                    status=SKIPPED, detail=str(unavailable), job_id=job_id,
                )  # fmt: skip
                return f"skipped: {unavailable}"
            if not targets:
                await store.record(
                    conn, notification, name, user_key,
                    status=SKIPPED, detail=f"no {name} target", job_id=job_id,
                )  # fmt: skip
                return f"skipped: the user has no {name} target"
        message = self.templates.render(notification.type, recipient.locale, notification.data)
        pending = [target for target in targets if target.key not in done]
        failures = await self._send_all(pool, notification, message, pending, job_id)
        sent = len(pending) - len(failures)
        if failures:
            raise _combined(name, failures, sent, len(targets) - len(pending))
        return f"{name}: {sent} sent, {len(targets) - len(pending)} already done"

    async def _send_all(
        self,
        pool: AsyncConnectionPool[Any],
        notification: Notification,
        message: Message,
        targets: Sequence[Target],
        job_id: int | None,
    ) -> list[tuple[Target, Exception]]:
        failures: list[tuple[Target, Exception]] = []
        name = self.channel.name
        for target in targets:
            try:
                await self.channel.send(target, message, notification)
            except TargetGone as gone:
                logger.info("%s target %s is gone: %s", name, target.label, gone)
                async with pool.connection() as conn:
                    await self.channel.discard(conn, target)
                    await store.record(
                        conn, notification, name, target.key,
                        status=SKIPPED, detail=str(gone), job_id=job_id,
                    )  # fmt: skip
                continue
            except Exception as error:
                failures.append((target, error))
                continue
            async with pool.connection() as conn:
                await store.record(
                    conn, notification, name, target.key, status=DELIVERED, job_id=job_id
                )
        return failures


def _combined(
    channel: str, failures: Sequence[tuple[Target, Exception]], sent: int, before: int
) -> Exception:
    """One error for the job: transient if any failure is (the retry sends only
    what is still missing), with the longest Retry-After asked for."""
    reasons = "; ".join(f"{target.label}: {error}" for target, error in failures)
    progress = f"{sent + before} of {sent + before + len(failures)} {channel} targets done"
    if len(failures) == 1 and sent + before == 0:
        return failures[0][1]  # the one failure, as it is
    sinks = {error.sink for _, error in failures if isinstance(error, SinkUnavailable)}
    if len(sinks) == 1 and all(isinstance(error, SinkUnavailable) for _, error in failures):
        # Only the service failed: the job waits for it like every other job of its sink.
        waits = [error.retry_at for _, error in failures if isinstance(error, TransientError)]
        return SinkUnavailable(
            sinks.pop(),
            f"{progress}; the rest will be sent: {reasons}",
            retry_at=max((wait for wait in waits if wait is not None), default=None),
        )
    if any(is_transient(error) for _, error in failures):
        waits = [error.retry_at for _, error in failures if isinstance(error, TransientError)]
        retry_at = max((wait for wait in waits if wait is not None), default=None)
        return TransientError(f"{progress}; the rest will be retried: {reasons}", retry_at=retry_at)
    return PermanentError(f"{progress}; the rest failed for good: {reasons}")
