"""The sample schema's rule end to end: a moderator approves (or rejects) a
listing, its owner gets the email and the push."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg

from procqueue.engine.app import ProcqueueApp
from tests.support.fcm_server import FcmState
from tests.support.notifications import (
    add_user,
    deliver,
)
from tests.support.smtp_server import SmtpRecorder


async def new_listing(db: psycopg.AsyncConnection[Any], owner: str, title: str) -> str:
    listing_id = str(uuid.uuid4())
    await db.execute(
        "INSERT INTO listings (id, user_id, title, budget) VALUES (%s, %s, %s, 100)",
        [listing_id, owner, title],
    )
    return listing_id


async def review(db: psycopg.AsyncConnection[Any], listing_id: str, status: str) -> None:
    await db.execute("UPDATE listings SET status = %s WHERE id = %s", [status, listing_id])


async def test_approving_a_listing_delivers_the_owners_email_and_push(
    notify_app: ProcqueueApp,
    db: psycopg.AsyncConnection[Any],
    smtp: SmtpRecorder,
    fcm: FcmState,
) -> None:
    owner = await add_user(db, "satici@example.com", tokens=("satici-telefon",))
    listing_id = await new_listing(db, owner, "Ahşap yemek masası")
    await review(db, listing_id, "active")
    await deliver(notify_app)

    (email,) = smtp.to("satici@example.com")
    assert email["Subject"] == "İlanınız onaylandı: Ahşap yemek masası"
    (push,) = fcm.sent_to("satici-telefon")
    assert push.message["notification"]["title"] == "İlanınız onaylandı"
    assert push.message["data"]["type"] == "LISTING_APPROVED"
    assert push.message["data"]["listing_id"] == listing_id


async def test_rejecting_a_listing_notifies_in_the_owners_language(
    notify_app: ProcqueueApp,
    db: psycopg.AsyncConnection[Any],
    smtp: SmtpRecorder,
    fcm: FcmState,
) -> None:
    owner = await add_user(db, "seller@example.com", locale="en", tokens=("seller-phone",))
    listing_id = await new_listing(db, owner, "Old bike")
    await review(db, listing_id, "rejected")
    await deliver(notify_app)

    (email,) = smtp.to("seller@example.com")
    assert email["Subject"] == "Your listing was not approved: Old bike"
    (push,) = fcm.sent_to("seller-phone")
    assert push.message["data"]["type"] == "LISTING_REJECTED"


async def test_other_status_changes_notify_nobody(
    notify_app: ProcqueueApp,
    db: psycopg.AsyncConnection[Any],
    smtp: SmtpRecorder,
    fcm: FcmState,
) -> None:
    owner = await add_user(db, "calm@example.com", tokens=("calm-phone",))
    listing_id = await new_listing(db, owner, "Lamba")
    await db.execute("UPDATE listings SET title = 'Masa lambası' WHERE id = %s", [listing_id])
    await review(db, listing_id, "inactive")
    await review(db, listing_id, "active")  # inactive -> active is no review
    await deliver(notify_app)

    assert smtp.to("calm@example.com") == []
    assert fcm.sent_to("calm-phone") == []
    cursor = await db.execute(
        "SELECT count(*) FROM notifications WHERE recipient_user_id = %s", [owner]
    )
    assert await cursor.fetchone() == (0,)
