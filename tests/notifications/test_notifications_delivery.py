"""Delivered once: delivery records, partial retries, preferences, channel
rules, and the SQL and Python ways to notify without a row."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from procqueue.engine.app import ProcqueueApp
from procqueue.notifications import notify
from tests.support.fcm_server import FcmState, unavailable
from tests.support.notifications import (
    add_user,
    deliver,
    deliveries,
    insert_notification,
    jobs,
)
from tests.support.smtp_server import SmtpRecorder


async def test_the_same_jobs_run_again_deliver_nothing_twice(
    notify_app: ProcqueueApp,
    db: psycopg.AsyncConnection[Any],
    smtp: SmtpRecorder,
    fcm: FcmState,
) -> None:
    user = await add_user(db, "twice@example.com", tokens=("twice-1", "twice-2"))
    nid = await insert_notification(db, user, "LISTING_APPROVED", listing_title="Masa")
    await deliver(notify_app)
    first = await jobs(db, nid)
    assert [job["status"] for job in first] == ["succeeded", "succeeded"]

    # The very same jobs again (a worker that died before marking them done).
    for job in first:
        await db.execute(
            "SELECT procqueue.add_job(%s, %s, 'notifications')",
            [job["task_name"], Jsonb(job["args"])],
        )
    await deliver(notify_app)

    assert [job["status"] for job in await jobs(db, nid)] == ["succeeded"] * 4
    assert len(smtp.to("twice@example.com")) == 1
    assert len(fcm.sent_to("twice-1")) == 1 and len(fcm.sent_to("twice-2")) == 1
    assert len(await deliveries(db, nid)) == 3


async def test_a_partly_failed_job_retries_only_the_missing_deliveries(
    notify_app: ProcqueueApp, db: psycopg.AsyncConnection[Any], fcm: FcmState
) -> None:
    user = await add_user(db, tokens=("part-a", "part-b", "part-c"))
    fcm.answer_next("part-c", unavailable())
    nid = await insert_notification(db, user, "NEW_OFFER", listing_title="Masa")
    await deliver(notify_app)

    # FCM was unavailable for part-c only: the job waits and runs again, sending only
    # what is missing.
    (job,) = await jobs(db, nid)
    assert (job["status"], job["attempts"], job["postponed"]) == ("succeeded", 1, 1)
    assert len(fcm.sent_to("part-a")) == 1 and len(fcm.sent_to("part-b")) == 1
    assert len(fcm.sent_to("part-c", 503)) == 1 and len(fcm.sent_to("part-c")) == 1
    assert [status for _, _, status in await deliveries(db, nid)] == ["delivered"] * 3


async def test_an_opted_out_channel_gets_nothing_and_is_recorded_as_skipped(
    notify_app: ProcqueueApp,
    db: psycopg.AsyncConnection[Any],
    smtp: SmtpRecorder,
    fcm: FcmState,
) -> None:
    user = await add_user(db, "quiet@example.com", tokens=("quiet-phone",))
    await db.execute("SELECT procqueue.set_notification_preference(%s, 'email', false)", [user])
    nid = await insert_notification(db, user, "LISTING_APPROVED", listing_title="Masa")
    await deliver(notify_app)

    assert smtp.to("quiet@example.com") == []
    assert len(fcm.sent_to("quiet-phone")) == 1
    assert [job["status"] for job in await jobs(db, nid)] == ["succeeded", "succeeded"]
    assert ("email", user, "skipped") in await deliveries(db, nid)


async def test_a_channel_can_be_switched_off_for_one_type(
    notify_app: ProcqueueApp, db: psycopg.AsyncConnection[Any], fcm: FcmState
) -> None:
    user = await add_user(db, tokens=("picky-phone",))
    await db.execute(
        "SELECT procqueue.set_notification_preference(%s, 'push', false, 'NEW_OFFER')", [user]
    )
    offer = await insert_notification(db, user, "NEW_OFFER", listing_title="Masa")
    approval = await insert_notification(db, user, "LISTING_APPROVED", listing_title="Masa")
    await deliver(notify_app)

    (send,) = fcm.sent_to("picky-phone")
    assert send.message["data"]["notification_id"] == approval
    assert await deliveries(db, offer) == [("push", user, "skipped")]


async def test_python_notify_enqueues_in_the_callers_transaction(
    notify_app: ProcqueueApp,
    db: psycopg.AsyncConnection[Any],
    database: str,
    fcm: FcmState,
) -> None:
    user = await add_user(db, tokens=("py-phone",))
    async with await psycopg.AsyncConnection.connect(database) as conn:
        rolled_back = await notify(conn, user, "NEW_OFFER", {"listing_title": "Geri"})
        await conn.rollback()
        committed = await notify(conn, user, "NEW_OFFER", {"listing_title": "Masa"})
        await conn.commit()
    assert await jobs(db, rolled_back) == []
    await deliver(notify_app)

    (send,) = fcm.sent_to("py-phone")
    assert send.message["data"]["notification_id"] == committed
    assert send.message["notification"]["body"].startswith("“Masa”")


async def test_sql_notify_uses_the_rules_or_the_channels_it_is_given(
    notify_app: ProcqueueApp,
    db: psycopg.AsyncConnection[Any],
    smtp: SmtpRecorder,
    fcm: FcmState,
) -> None:
    user = await add_user(db, "sql@example.com", locale="en", tokens=("sql-phone",))
    cursor = await db.execute(
        "SELECT procqueue.notify(%s, 'LISTING_APPROVED', %s)",
        [user, Jsonb({"listing_title": "Desk"})],
    )
    by_rule = str((await cursor.fetchone())[0])  # type: ignore[index]
    cursor = await db.execute(
        "SELECT procqueue.notify(%s, 'NEW_OFFER', '{\"listing_title\": \"Lamp\"}', "
        "channels => '{email}')",
        [user],
    )
    email_only = str((await cursor.fetchone())[0])  # type: ignore[index]
    await deliver(notify_app)

    subjects = sorted(message["Subject"] for message in smtp.to("sql@example.com"))
    assert subjects == ["New offer: Lamp", "Your listing was approved: Desk"]
    assert len(fcm.sent_to("sql-phone")) == 1
    assert {job["task_name"] for job in await jobs(db, by_rule)} == {
        "notification:email",
        "notification:push",
    }
    assert [job["task_name"] for job in await jobs(db, email_only)] == ["notification:email"]


async def test_unknown_types_follow_the_default_rule_and_rules_are_data(
    notify_app: ProcqueueApp,
    db: psycopg.AsyncConnection[Any],
    smtp: SmtpRecorder,
    fcm: FcmState,
) -> None:
    user = await add_user(db, "rules@example.com", tokens=("rules-phone",))
    unknown = await insert_notification(db, user, "PRICE_DROP", listing_title="Masa")
    await deliver(notify_app)
    assert [job["task_name"] for job in await jobs(db, unknown)] == ["notification:push"]
    (send,) = fcm.sent_to("rules-phone")
    assert send.message["notification"]["title"] == "Yeni bir bildiriminiz var"

    await db.execute(
        "INSERT INTO procqueue.notification_rules (type, channels) VALUES ('PRICE_DROP', '{email}')"
    )
    try:
        configured = await insert_notification(db, user, "PRICE_DROP", listing_title="Masa")
        assert [job["task_name"] for job in await jobs(db, configured)] == ["notification:email"]
    finally:
        await db.execute("DELETE FROM procqueue.notification_rules WHERE type = 'PRICE_DROP'")


@pytest.mark.parametrize("recipient", [None, "missing-user"])
async def test_odd_rows_never_break_the_insert(
    notify_app: ProcqueueApp, db: psycopg.AsyncConnection[Any], recipient: str | None
) -> None:
    user_id = None
    if recipient is not None:
        user_id = await add_user(db)
    nid = await insert_notification(db, user_id, None, huge="x" * 100_000, emoji="🚲")  # type: ignore[arg-type]
    if user_id is None:
        assert await jobs(db, nid) == []  # no recipient: in-app only
    else:
        assert [job["task_name"] for job in await jobs(db, nid)] == ["notification:push"]
        await deliver(notify_app)
        assert await deliveries(db, nid) == [("push", user_id, "skipped")]  # no device


async def test_a_notification_deleted_before_its_job_runs_sends_nothing(
    notify_app: ProcqueueApp, db: psycopg.AsyncConnection[Any], smtp: SmtpRecorder
) -> None:
    user = await add_user(db, "deleted@example.com")
    nid = await insert_notification(db, user, "LISTING_APPROVED", listing_title="Masa")
    await db.execute("DELETE FROM notifications WHERE id = %s", [nid])
    await deliver(notify_app)
    assert smtp.to("deleted@example.com") == []
    assert {job["status"] for job in await jobs(db, nid)} == {"succeeded"}


async def test_api_roles_cannot_reach_the_notification_tables(
    db: psycopg.AsyncConnection[Any],
) -> None:
    for role in ("anon", "authenticated"):
        for statement in (
            "SELECT * FROM procqueue.notification_deliveries",
            "SELECT * FROM procqueue.notification_preferences",
            f"SELECT procqueue.notify('{uuid.uuid4()}', 'NEW_OFFER')",
        ):
            async with db.transaction(force_rollback=True):
                await db.execute(f"SET LOCAL ROLE {role}")
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    async with db.transaction():
                        await db.execute(statement)
