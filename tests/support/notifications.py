"""Fixtures (a pytest plugin, see tests/conftest.py) and helpers of the
notification tests: a loopback SMTP server, a
loopback FCM (token + send endpoints) with a throwaway service account, an app
configured for both, and small readers of what the jobs left behind."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from procqueue.app import build_app
from procqueue.engine.app import ProcqueueApp
from procqueue.features import Settings
from tests.conftest import make_settings
from tests.support.fcm_server import FcmState, fcm_server, service_account
from tests.support.smtp_server import SmtpRecorder, smtp_server
from tests.support.worker import drain

PROJECT_ID = "pazaryeri-test"
CLIENT_EMAIL = f"push-sender@{PROJECT_ID}.iam.gserviceaccount.com"
SENDER = "Pazaryeri <bildirim@pazaryeri.example>"


@pytest.fixture(scope="module")
def smtp() -> Iterator[SmtpRecorder]:
    with smtp_server() as recorder:
        yield recorder


@pytest.fixture(scope="module")
def fcm_account() -> tuple[dict[str, Any], bytes]:
    return service_account(PROJECT_ID, CLIENT_EMAIL)


@pytest.fixture(scope="module")
def fcm(fcm_account: tuple[dict[str, Any], bytes]) -> Iterator[FcmState]:
    _, public_pem = fcm_account
    state = FcmState(PROJECT_ID, public_pem, CLIENT_EMAIL)
    with fcm_server(state):
        yield state


def notification_settings(
    database: str,
    es_url: str,
    smtp: SmtpRecorder,
    fcm: FcmState,
    account: dict[str, Any],
    **overrides: Any,
) -> Settings:
    values: dict[str, Any] = {
        "smtp_host": smtp.host,
        "smtp_port": smtp.port,
        "smtp_security": "plain",
        "smtp_sender": SENDER,
        "smtp_timeout": 5,
        "fcm_service_account_json": json.dumps(account),
        "fcm_token_uri": f"{fcm.url}/token",
        "fcm_base_url": fcm.url,
        "fcm_timeout": 5,
    }
    values.update(overrides)
    return make_settings(database, es_url, **values)


@pytest.fixture(scope="module")
async def notify_app(
    database: str,
    es_url: str,
    smtp: SmtpRecorder,
    fcm: FcmState,
    fcm_account: tuple[dict[str, Any], bytes],
) -> AsyncIterator[ProcqueueApp]:
    settings = notification_settings(database, es_url, smtp, fcm, fcm_account[0])
    application = build_app(settings)
    async with application.open_async():
        yield application
    await application.services.aclose()


async def deliver(app: ProcqueueApp) -> None:
    """Run the notification jobs that are due, and their retries that are due,
    until none is left (a job retried in the future is left waiting)."""
    for _ in range(50):
        await drain(app, queues=["notifications"])
        async with app.pool.connection() as conn:
            cursor = await conn.execute(DUE_NOTIFICATION_JOBS)
            row = await cursor.fetchone()
        if row is None or not row[0]:
            return
    raise AssertionError("notification jobs still due after 50 worker runs")


DUE_NOTIFICATION_JOBS = """
SELECT count(*) FROM procrastinate.procrastinate_jobs
WHERE queue_name = 'notifications' AND status IN ('todo', 'doing')
  AND (scheduled_at IS NULL OR scheduled_at <= now())
"""


async def add_user(
    db: psycopg.AsyncConnection[Any],
    email: str | None = None,
    *,
    locale: str | None = None,
    tokens: tuple[str, ...] = (),
) -> str:
    user_id = str(uuid.uuid4())
    if email == "":
        email = None
    elif email is None:
        email = f"u{user_id[:8]}@example.com"
    meta = {"locale": locale} if locale else {}
    await db.execute(
        "INSERT INTO auth.users (id, email, raw_user_meta_data) VALUES (%s, %s, %s)",
        [user_id, email, Jsonb(meta)],
    )
    for token in tokens:
        await db.execute(
            "INSERT INTO push_tokens (user_id, token, platform) VALUES (%s, %s, 'android')",
            [user_id, token],
        )
    return user_id


async def insert_notification(
    db: psycopg.AsyncConnection[Any], user_id: str, notification_type: str, **data: Any
) -> str:
    cursor = await db.execute(
        "INSERT INTO notifications (recipient_user_id, type, data) VALUES (%s, %s, %s) "
        "RETURNING id::text",
        [user_id, notification_type, Jsonb(data)],
    )
    row = await cursor.fetchone()
    assert row is not None
    return str(row[0])


async def deliveries(
    db: psycopg.AsyncConnection[Any], notification_id: str
) -> list[tuple[str, str, str]]:
    """(channel, target, status) of every delivery record of a notification."""
    cursor = await db.execute(
        "SELECT channel, target, status FROM procqueue.notification_deliveries "
        "WHERE notification_id = %s ORDER BY channel, target",
        [notification_id],
    )
    return [(channel, target, status) for channel, target, status in await cursor.fetchall()]


async def jobs(db: psycopg.AsyncConnection[Any], notification_id: str) -> list[dict[str, Any]]:
    """The notification's jobs: task, status, attempts, scheduled_at, and how many
    times each was postponed (the same job waiting again: migration 0018)."""
    cursor = db.cursor(row_factory=psycopg.rows.dict_row)
    await cursor.execute(
        "SELECT j.id, j.task_name, j.status::text AS status, j.attempts, j.scheduled_at, "
        "j.args, coalesce(p.times, 0) AS postponed "
        "FROM procrastinate.procrastinate_jobs AS j "
        "LEFT JOIN procqueue.job_postponements AS p ON p.job_id = j.id "
        "WHERE j.args ->> 'notification_id' = %s ORDER BY j.id",
        [notification_id],
    )
    return await cursor.fetchall()


async def job_errors(db: psycopg.AsyncConnection[Any], job_id: int) -> list[dict[str, Any]]:
    cursor = db.cursor(row_factory=psycopg.rows.dict_row)
    await cursor.execute(
        "SELECT attempt, message, transient, final FROM procqueue.job_errors "
        "WHERE job_id = %s ORDER BY attempt",
        [job_id],
    )
    return await cursor.fetchall()


async def tokens_of(db: psycopg.AsyncConnection[Any], user_id: str) -> list[str]:
    cursor = await db.execute(
        "SELECT token FROM push_tokens WHERE user_id = %s ORDER BY token", [user_id]
    )
    return [token for (token,) in await cursor.fetchall()]
