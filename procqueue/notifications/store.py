"""The notification tables, as the dispatcher reads and writes them.

`load_notification`, the job's first read, turns row security off for the rest of the
job's transaction (`SET LOCAL`, transaction-local: safe behind a transaction pooler),
so that the notification row and the recipient's push tokens, if row-level security
came to hide them from the worker after it started, raise instead of reading as
missing (a notification skipped as deleted, a user without devices): the job fails
with RowsHidden (procqueue/errors.py)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import psycopg
from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from procqueue.errors import PermanentError, RowsHidden, is_row_security_refusal
from procqueue.notifications.model import Notification, Recipient
from procqueue.notifications.queries import query, query_with

#: For the rest of the transaction: a read row-level security would filter raises.
ROW_SECURITY_OFF = "SET LOCAL row_security = off"


def split_table(table: str) -> dict[str, str]:
    schema, name = table.split(".", 1)
    return {"schema": schema, "table": name}


async def load_notification(
    conn: AsyncConnection[Any], args: Mapping[str, Any], table: str
) -> Notification | None:
    """The job's notification: from its args (procqueue.notify) or its row
    (trigger). None when the row was deleted before the job ran."""
    notification_id = str(args["notification_id"])
    if not conn.autocommit:  # the job's transaction, until the dispatcher's block ends
        await conn.execute(ROW_SECURITY_OFF)
    if "recipient" in args:
        return Notification(
            id=notification_id,
            recipient=str(args["recipient"]),
            type=str(args.get("type") or ""),
            data=args.get("data") or {},
        )
    cursor = conn.cursor(row_factory=dict_row)
    try:
        async with conn.transaction():  # a savepoint, or the read's own transaction
            await conn.execute(ROW_SECURITY_OFF)
            await cursor.execute(
                query_with("notification_row", **split_table(table)), {"id": notification_id}
            )
            row = await cursor.fetchone()
    except psycopg.errors.InsufficientPrivilege as err:
        if not is_row_security_refusal(err):
            raise
        role = conn.info.parameter_status("session_authorization") or conn.info.user
        what = f"the delivery of notification {notification_id}"
        raise RowsHidden(table, role, what) from err
    except (psycopg.errors.DataError, psycopg.errors.SyntaxErrorOrAccessRuleViolation) as err:
        raise PermanentError(
            f"cannot read notification {notification_id!r} from {table}: "
            f"{err.diag.message_primary} (is PROCQUEUE_NOTIFICATIONS_TABLE right?)"
        ) from err
    if row is None or row["recipient"] is None:
        return None
    data = row["data"] if isinstance(row["data"], dict) else {}
    return Notification(
        id=notification_id, recipient=row["recipient"], type=row["type"] or "", data=data
    )


async def load_recipient(conn: AsyncConnection[Any], user_id: str) -> Recipient:
    cursor = conn.cursor(row_factory=dict_row)
    try:
        await cursor.execute(query("notification_recipient"), {"user_id": user_id})
    except psycopg.errors.DataError as err:
        raise PermanentError(f"recipient {user_id!r} is not a user id: {err}") from err
    row = await cursor.fetchone()
    if row is None:
        raise PermanentError(
            f"recipient {user_id} is not in auth.users (deleted account?): nothing to send"
        )
    return Recipient(**row)


async def channel_enabled(
    conn: AsyncConnection[Any], user_id: str, channel: str, notification_type: str
) -> bool:
    params = {"user_id": user_id, "channel": channel, "type": notification_type}
    row = await (await conn.execute(query("notification_channel_enabled"), params)).fetchone()
    return bool(row and row[0])


async def done_targets(conn: AsyncConnection[Any], notification_id: str, channel: str) -> set[str]:
    params = {"notification_id": notification_id, "channel": channel}
    rows = await (await conn.execute(query("notification_done_targets"), params)).fetchall()
    return {target for (target,) in rows}


async def record(
    conn: AsyncConnection[Any],
    notification: Notification,
    channel: str,
    target: str,
    *,
    status: str,
    detail: str | None = None,
    job_id: int | None = None,
) -> None:
    """Write one delivery record (idempotent: an existing record is kept)."""
    await conn.execute(
        query("record_notification_delivery"),
        {
            "notification_id": notification.id,
            "channel": channel,
            "target": target,
            "status": status,
            "recipient": notification.recipient,
            "type": notification.type,
            "detail": detail,
            "job_id": job_id,
        },
    )


async def enqueue(
    conn: AsyncConnection[Any],
    recipient: str,
    notification_type: str,
    data: Mapping[str, Any],
    notification_id: str | None,
    channels: list[str] | None,
) -> str:
    params = {
        "recipient": recipient,
        "type": notification_type,
        "data": Jsonb(dict(data)),
        "notification_id": notification_id,
        "channels": channels,
    }
    row = await (await conn.execute(query("notify"), params)).fetchone()
    assert row is not None
    return str(row[0])
