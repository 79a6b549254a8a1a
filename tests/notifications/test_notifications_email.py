"""Email: a real SMTP server on loopback receives the rendered message; 4xx
and connection failures retry, 5xx and bad addresses fail at once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from procqueue.app import build_app
from procqueue.engine.app import ProcqueueApp
from procqueue.local import free_port
from tests.support.fcm_server import FcmState
from tests.support.notifications import (
    SENDER,
    add_user,
    deliver,
    deliveries,
    insert_notification,
    job_errors,
    jobs,
    notification_settings,
)
from tests.support.smtp_server import SmtpRecorder
from tests.support.worker import sink_circuit


def email_jobs(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [job for job in found if job["task_name"] == "notification:email"]


async def email_job(db: psycopg.AsyncConnection[Any], notification_id: str) -> dict[str, Any]:
    (job,) = [
        job for job in await jobs(db, notification_id) if job["task_name"] == "notification:email"
    ]
    return job


async def test_message_reaches_the_recipient_in_turkish_by_default(
    notify_app: ProcqueueApp, db: psycopg.AsyncConnection[Any], smtp: SmtpRecorder
) -> None:
    user = await add_user(db, "ayse@example.com")
    nid = await insert_notification(db, user, "LISTING_APPROVED", listing_title="Kırmızı bisiklet")
    await deliver(notify_app)

    (message,) = smtp.to("ayse@example.com")
    assert message["To"] == "ayse@example.com"
    assert message["From"] == SENDER
    assert message["Subject"] == "İlanınız onaylandı: Kırmızı bisiklet"
    assert message["Message-ID"].strip() == f"<notification.{nid}@pazaryeri.example>"
    assert message.get_content_type() == "multipart/alternative"
    text = message.get_body(preferencelist=("plain",))
    html = message.get_body(preferencelist=("html",))
    assert text is not None and html is not None
    assert "“Kırmızı bisiklet” başlıklı ilanınız incelendi ve onaylandı" in text.get_content()
    assert "<strong>Kırmızı bisiklet</strong> başlıklı ilanınız" in html.get_content()
    assert ("email", user, "delivered") in await deliveries(db, nid)


async def test_user_locale_picks_the_english_template_and_html_is_escaped(
    notify_app: ProcqueueApp, db: psycopg.AsyncConnection[Any], smtp: SmtpRecorder
) -> None:
    user = await add_user(db, "john@example.com", locale="en-GB")
    await insert_notification(db, user, "LISTING_REJECTED", listing_title="<b>Desk</b> & chair")
    await deliver(notify_app)

    (message,) = smtp.to("john@example.com")
    assert message["Subject"] == "Your listing was not approved: <b>Desk</b> & chair"
    text = message.get_body(preferencelist=("plain",))
    html = message.get_body(preferencelist=("html",))
    assert text is not None and html is not None
    assert "Your listing “<b>Desk</b> & chair” has been reviewed" in text.get_content()
    assert "<strong>&lt;b&gt;Desk&lt;/b&gt; &amp; chair</strong>" in html.get_content()


async def test_421_once_then_accepted_is_delivered_exactly_once(
    notify_app: ProcqueueApp, database: str, db: psycopg.AsyncConnection[Any], smtp: SmtpRecorder
) -> None:
    """421: the server, not the message, is unavailable: the job is postponed (the
    same job waits again, no retry spent, no error recorded) and the message is
    delivered once."""
    user = await add_user(db, "busy@example.com")
    smtp.answer_next("DATA", "421 4.3.2 Service not available, try again later")
    nid = await insert_notification(db, user, "LISTING_APPROVED", listing_title="Masa")
    await deliver(notify_app)

    assert len(smtp.to("busy@example.com")) == 1
    (delivered,) = email_jobs(await jobs(db, nid))
    assert (delivered["status"], delivered["attempts"], delivered["postponed"]) == (
        "succeeded", 1, 1,
    )  # fmt: skip
    assert await job_errors(db, delivered["id"]) == []
    circuit = await sink_circuit(database, "smtp")
    assert circuit is not None and not circuit[0] and "421" in circuit[1]


async def test_550_fails_at_once_with_the_reason(
    notify_app: ProcqueueApp, db: psycopg.AsyncConnection[Any], smtp: SmtpRecorder
) -> None:
    user = await add_user(db, "gone@example.com")
    smtp.answer_next("RCPT", "550 5.1.1 <gone@example.com>: mailbox unavailable")
    nid = await insert_notification(db, user, "LISTING_APPROVED", listing_title="Masa")
    await deliver(notify_app)

    assert smtp.to("gone@example.com") == []
    job = await email_job(db, nid)
    assert (job["status"], job["attempts"]) == ("failed", 1)
    (error,) = await job_errors(db, job["id"])
    assert not error["transient"] and error["final"]
    assert "550 5.1.1" in error["message"] and "mailbox unavailable" in error["message"]
    assert "gone@example.com" not in error["message"]  # the address is masked
    assert [row for row in await deliveries(db, nid) if row[0] == "email"] == []


@pytest.mark.parametrize(
    ("email", "reason"),
    [("", "has no email address"), ("not-an-address", "has an invalid email address")],
)
async def test_missing_or_invalid_address_fails_at_once(
    notify_app: ProcqueueApp,
    db: psycopg.AsyncConnection[Any],
    smtp: SmtpRecorder,
    email: str,
    reason: str,
) -> None:
    user = await add_user(db, email)
    attempts_before = smtp.attempts
    nid = await insert_notification(db, user, "LISTING_APPROVED", listing_title="Masa")
    await deliver(notify_app)

    job = await email_job(db, nid)
    assert (job["status"], job["attempts"]) == ("failed", 1)
    (error,) = await job_errors(db, job["id"])
    assert reason in error["message"] and not error["transient"]
    assert smtp.attempts == attempts_before


async def test_unreachable_server_postpones_the_job_without_spending_retries(
    database: str,
    es_url: str,
    db: psycopg.AsyncConnection[Any],
    smtp: SmtpRecorder,
    fcm: FcmState,
    fcm_account: tuple[dict[str, Any], bytes],
) -> None:
    settings = notification_settings(
        database, es_url, smtp, fcm, fcm_account[0], smtp_port=free_port(), max_retries=0,
        retry_backoff=60,
    )  # fmt: skip
    app = build_app(settings)
    user = await add_user(db, "later@example.com")
    nid = await insert_notification(db, user, "LISTING_APPROVED", listing_title="Masa")
    async with app.open_async():
        await deliver(app)

    (waiting,) = email_jobs(await jobs(db, nid))
    assert await job_errors(db, waiting["id"]) == []
    assert (waiting["status"], waiting["attempts"], waiting["postponed"]) == ("todo", 0, 1)
    # The first wait is PROCQUEUE_RETRY_BACKOFF (60 s) capped at PROCQUEUE_CIRCUIT_MAX_WAIT.
    assert waiting["scheduled_at"] > datetime.now(UTC) + timedelta(seconds=25)
    circuit = await sink_circuit(database, "smtp")
    assert circuit is not None and circuit[0] and "unreachable" in circuit[1]
    await db.execute("DELETE FROM procrastinate.procrastinate_jobs WHERE id = %s", [waiting["id"]])
    await db.execute("DELETE FROM procqueue.sink_circuits WHERE sink = 'smtp'")


async def test_unconfigured_email_is_skipped_and_misconfigured_email_fails(
    database: str,
    es_url: str,
    db: psycopg.AsyncConnection[Any],
    smtp: SmtpRecorder,
    fcm: FcmState,
    fcm_account: tuple[dict[str, Any], bytes],
) -> None:
    user = await add_user(db, "unconfigured@example.com")
    for overrides, expected in (
        ({"smtp_host": None}, "succeeded"),  # no SMTP at all: skipped, recorded
        ({"smtp_sender": None}, "failed"),  # SMTP without a sender: fix the settings
    ):
        settings = notification_settings(database, es_url, smtp, fcm, fcm_account[0], **overrides)
        nid = await insert_notification(db, user, "LISTING_APPROVED", listing_title="Masa")
        async with build_app(settings).open_async() as app:
            await deliver(app)  # type: ignore[arg-type]
        job = await email_job(db, nid)
        assert job["status"] == expected
    assert smtp.to("unconfigured@example.com") == []
    cursor = await db.execute(
        "SELECT detail FROM procqueue.notification_deliveries WHERE channel = 'email' "
        "AND recipient_user_id = %s",
        [user],
    )
    assert await cursor.fetchall() == [("email is not configured (PROCQUEUE_SMTP_HOST unset)",)]
    (error,) = await job_errors(db, job["id"])
    assert "PROCQUEUE_SMTP_SENDER" in error["message"] and error["final"]
