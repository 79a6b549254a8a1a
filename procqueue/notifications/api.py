"""Send a notification from application code, without a notifications row."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from uuid import UUID

from psycopg import AsyncConnection

from procqueue.notifications import store


async def notify(
    conn: AsyncConnection[Any],
    recipient: UUID | str,
    notification_type: str,
    data: Mapping[str, Any] | None = None,
    *,
    notification_id: UUID | str | None = None,
    channels: Sequence[str] | None = None,
) -> str:
    """Enqueue `notification:<channel>` jobs for one notification, in `conn`'s
    transaction (nothing is enqueued if it rolls back); returns the notification id.

    The channels are those of the type's rule in procqueue.notification_rules
    unless `channels` names them. Calling again with the same `notification_id`
    never delivers twice what was delivered. The SQL twin is procqueue.notify().

        async with app.pool.connection() as conn:
            await notify(conn, user_id, "NEW_OFFER", {"listing_title": "Masa"})
    """
    return await store.enqueue(
        conn,
        str(recipient),
        notification_type,
        data or {},
        str(notification_id) if notification_id is not None else None,
        list(channels) if channels is not None else None,
    )
