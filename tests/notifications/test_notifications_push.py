"""Push: the real google-auth token exchange and our FCM client against a
loopback token endpoint and FCM send endpoint."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from procqueue.app import build_app
from procqueue.engine.app import ProcqueueApp
from tests.support.fcm_server import INVALID_TOKEN, UNREGISTERED, FcmState, unavailable
from tests.support.notifications import (
    add_user,
    deliver,
    deliveries,
    insert_notification,
    job_errors,
    jobs,
    notification_settings,
    tokens_of,
)
from tests.support.smtp_server import SmtpRecorder
from tests.support.worker import sink_circuit


async def push_jobs(db: psycopg.AsyncConnection[Any], notification_id: str) -> list[dict[str, Any]]:
    return [j for j in await jobs(db, notification_id) if j["task_name"] == "notification:push"]


async def push_job(db: psycopg.AsyncConnection[Any], notification_id: str) -> dict[str, Any]:
    (job,) = await push_jobs(db, notification_id)
    return job


async def test_every_token_of_the_user_receives_the_message(
    notify_app: ProcqueueApp, db: psycopg.AsyncConnection[Any], fcm: FcmState
) -> None:
    tokens = ("phone-a", "tablet-b", "phone-c")
    user = await add_user(db, tokens=tokens)
    nid = await insert_notification(db, user, "NEW_OFFER", listing_title="Masa", amount=250)
    await deliver(notify_app)

    for token in tokens:
        (send,) = fcm.sent_to(token)
        assert send.message["notification"] == {
            "title": "Yeni bir teklifiniz var",
            "body": "“Masa” ilanınıza yeni bir teklif geldi. 250",
        }
        assert send.message["data"] == {
            "listing_title": "Masa",
            "amount": "250",
            "type": "NEW_OFFER",
            "notification_id": nid,
        }
    records = await deliveries(db, nid)
    assert [(channel, status) for channel, _, status in records] == [("push", "delivered")] * 3
    assert all(token not in target for _, target, _ in records for token in tokens)
    # NEW_OFFER goes to push only: no email job was made.
    assert [job["task_name"] for job in await jobs(db, nid)] == ["notification:push"]


async def test_access_token_is_fetched_once_and_cached(
    notify_app: ProcqueueApp, db: psycopg.AsyncConnection[Any], fcm: FcmState
) -> None:
    user = await add_user(db, tokens=("cache-1",))
    await insert_notification(db, user, "NEW_OFFER", listing_title="A")
    await deliver(notify_app)
    requests_after_first = fcm.token_requests
    assert requests_after_first >= 1
    await insert_notification(db, user, "NEW_OFFER", listing_title="B")
    await insert_notification(db, user, "NEW_OFFER", listing_title="C")
    await deliver(notify_app)
    assert len(fcm.sent_to("cache-1")) == 3
    assert fcm.token_requests == requests_after_first


async def test_rejected_access_token_is_replaced(
    notify_app: ProcqueueApp, db: psycopg.AsyncConnection[Any], fcm: FcmState
) -> None:
    user = await add_user(db, tokens=("revoked-1",))
    await insert_notification(db, user, "NEW_OFFER", listing_title="A")
    await deliver(notify_app)
    requests_before = fcm.token_requests
    fcm.revoke_access_tokens()  # the cached token now gets 401
    await insert_notification(db, user, "NEW_OFFER", listing_title="B")
    await deliver(notify_app)
    assert len(fcm.sent_to("revoked-1")) == 2
    assert fcm.token_requests == requests_before + 1


async def test_unregistered_and_invalid_tokens_are_removed(
    notify_app: ProcqueueApp, db: psycopg.AsyncConnection[Any], fcm: FcmState
) -> None:
    user = await add_user(db, tokens=("alive", "uninstalled", "garbage"))
    fcm.answer_next("uninstalled", UNREGISTERED)
    fcm.answer_next("garbage", INVALID_TOKEN)
    nid = await insert_notification(db, user, "NEW_OFFER", listing_title="Masa")
    await deliver(notify_app)

    assert len(fcm.sent_to("alive")) == 1
    assert await tokens_of(db, user) == ["alive"]
    job = await push_job(db, nid)
    assert job["status"] == "succeeded"
    statuses = sorted(status for _, _, status in await deliveries(db, nid))
    assert statuses == ["delivered", "skipped", "skipped"]


async def test_503_waits_for_retry_after_spending_no_retry_and_is_delivered_once(
    notify_app: ProcqueueApp, database: str, db: psycopg.AsyncConnection[Any], fcm: FcmState
) -> None:
    user = await add_user(db, tokens=("flaky",))
    fcm.answer_next("flaky", unavailable(retry_after=120))
    nid = await insert_notification(db, user, "NEW_OFFER", listing_title="Masa")
    await deliver(notify_app)

    # FCM is down and asked for 120 s: the same job waits that long (not the zero
    # backoff), spending no retry, and FCM's circuit is open.
    (job,) = await push_jobs(db, nid)
    assert await job_errors(db, job["id"]) == []
    assert (job["status"], job["attempts"], job["postponed"]) == ("todo", 0, 1)
    assert job["scheduled_at"] > datetime.now(UTC) + timedelta(seconds=100)
    assert fcm.sent_to("flaky") == [] and len(fcm.sent_to("flaky", 503)) == 1
    circuit = await sink_circuit(database, "fcm")
    assert circuit is not None and circuit[0] and "UNAVAILABLE" in circuit[1]

    # Two minutes later (fast-forwarded): delivered, once, and the circuit closed.
    await db.execute(
        "UPDATE procrastinate.procrastinate_jobs SET scheduled_at = now() WHERE id = %s",
        [job["id"]],
    )
    await deliver(notify_app)
    assert len(fcm.sent_to("flaky")) == 1
    assert [(job["status"], job["postponed"]) for job in await push_jobs(db, nid)] == [
        ("succeeded", 1)
    ]
    assert [status for _, _, status in await deliveries(db, nid)] == ["delivered"]
    assert await sink_circuit(database, "fcm") == (False, circuit[1])


async def test_a_misconfigured_fcm_url_removes_no_token(
    database: str,
    es_url: str,
    db: psycopg.AsyncConnection[Any],
    smtp: SmtpRecorder,
    fcm: FcmState,
    fcm_account: tuple[dict[str, Any], bytes],
) -> None:
    settings = notification_settings(
        database, es_url, smtp, fcm, fcm_account[0], fcm_base_url=f"{fcm.url}/wrong"
    )
    app = build_app(settings)
    user = await add_user(db, tokens=("precious",))
    nid = await insert_notification(db, user, "NEW_OFFER", listing_title="Masa")
    async with app.open_async():
        await deliver(app)
    job = await push_job(db, nid)
    assert job["status"] == "failed"
    (error,) = await job_errors(db, job["id"])
    assert "HTTP 404" in error["message"] and not error["transient"]
    assert await tokens_of(db, user) == ["precious"]


async def test_user_without_tokens_is_recorded_as_skipped(
    notify_app: ProcqueueApp, db: psycopg.AsyncConnection[Any]
) -> None:
    user = await add_user(db)
    nid = await insert_notification(db, user, "NEW_OFFER", listing_title="Masa")
    await deliver(notify_app)
    assert (await push_job(db, nid))["status"] == "succeeded"
    assert await deliveries(db, nid) == [("push", user, "skipped")]
