"""A worker stopped by SIGTERM closes every client its jobs opened (the
Elasticsearch client's aiohttp session, the FCM sender's token pool): no
`Unclosed client session` / `Unclosed connector` in its output, whether it runs
as `procqueue worker` or as `procrastinate --app=procqueue.app.app worker`."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.support.fcm_server import FcmState
from tests.support.notifications import add_user, insert_notification
from tests.support.worker import SELLER_ID, eventually
from tests.test_operator_logs import worker_env


async def synced(database: str, listing_id: str) -> bool:
    """The listing's change was taken by a drain job that succeeded (and left for the
    log of first-attempt successes, migration 0026)."""
    async with await psycopg.AsyncConnection.connect(database) as conn:
        cursor = await conn.execute(
            "SELECT NOT EXISTS (SELECT FROM procqueue.sync_changes WHERE entity_id = %s)"
            " AND EXISTS (SELECT FROM procqueue.finished_attempts"
            "             WHERE task_name = 'listing:drain')",
            [listing_id],
        )
        row = await cursor.fetchone()
    return bool(row and row[0])

COMMANDS = {
    "procqueue": ["-m", "procqueue.cli", "worker"],
    "procrastinate": ["-m", "procrastinate", "--app=procqueue.app.app", "worker"],
}


async def push_finished(database: str, notification_id: str) -> bool:
    async with await psycopg.AsyncConnection.connect(database) as conn:
        cursor = await conn.execute(
            "SELECT count(*) FROM procrastinate.procrastinate_jobs "
            "WHERE task_name = 'notification:push' AND args->>'notification_id' = %s "
            "AND status = 'succeeded'",
            [notification_id],
        )
        row = await cursor.fetchone()
    return bool(row and row[0] == 1)


@pytest.mark.parametrize("command", sorted(COMMANDS))
async def test_a_worker_stopped_after_its_jobs_used_the_clients_leaves_none_open(
    command: str,
    database: str,
    es_url: str,
    db: psycopg.AsyncConnection[Any],
    fcm: FcmState,
    fcm_account: tuple[dict[str, Any], bytes],
    tmp_path: Path,
) -> None:
    row = await (
        await db.execute(
            "INSERT INTO listings (user_id, title) VALUES (%s, 'stops clean') RETURNING id::text",
            [SELLER_ID],
        )
    ).fetchone()
    assert row is not None
    listing = row[0]
    device = f"phone-{command}"
    user = await add_user(db, tokens=(device,))
    notification = await insert_notification(db, user, "NEW_OFFER", listing_title="Masa", amount=1)

    async def both_done() -> bool:
        return await synced(database, listing) and await push_finished(database, notification)

    env = worker_env(
        database,
        es_url,
        fcm_service_account_json=json.dumps(fcm_account[0]),
        fcm_token_uri=f"{fcm.url}/token",
        fcm_base_url=fcm.url,
    )
    log = tmp_path / "worker.log"
    with log.open("ab") as output:
        process = await asyncio.create_subprocess_exec(
            sys.executable, *COMMANDS[command],
            env={**os.environ, **env}, stdout=output, stderr=output,
        )  # fmt: skip
    try:
        await eventually(both_done, timeout=30)
    finally:
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), timeout=30)
    text = await asyncio.to_thread(log.read_text)
    assert process.returncode == 0, text[-3000:]
    assert fcm.sent_to(device), text[-3000:]  # the jobs did use both clients
    assert "Unclosed client session" not in text, text[-3000:]
    assert "Unclosed connector" not in text, text[-3000:]
