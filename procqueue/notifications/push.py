"""The push channel: one FCM message to every device token of the user."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from psycopg import AsyncConnection

from procqueue.notifications.channel import Channel, UnconfiguredChannel
from procqueue.notifications.errors import TargetGone
from procqueue.notifications.fcm import FcmClient, UnregisteredToken
from procqueue.notifications.model import Message, Notification, Recipient, Target
from procqueue.notifications.queries import query_with
from procqueue.notifications.settings import NotificationSettings
from procqueue.notifications.store import split_table
from procqueue.settings import CoreSettings


def push_channel(settings: CoreSettings) -> Channel:
    """The push channel the settings describe (CHANNELS, procqueue/notifications/jobs.py)."""
    config = settings.section(NotificationSettings).fcm
    if config is None:
        return UnconfiguredChannel(
            "push", "push is not configured (PROCQUEUE_FCM_SERVICE_ACCOUNT_FILE unset)"
        )
    return PushChannel(FcmClient(config), settings.push_tokens_table)


def token_key(token: str) -> str:
    """The delivery record's name for a token: its hash, never the token itself."""
    return "fcm:" + hashlib.sha256(token.encode()).hexdigest()[:32]


class PushChannel:
    name = "push"

    def __init__(self, client: FcmClient, tokens_table: str) -> None:
        self.client = client
        self.tokens_table = split_table(tokens_table)

    async def targets(self, conn: AsyncConnection[Any], recipient: Recipient) -> Sequence[Target]:
        params = {"user_id": recipient.user_id}
        cursor = await conn.execute(query_with("push_tokens_of_user", **self.tokens_table), params)
        targets = []
        for (token,) in await cursor.fetchall():
            key = token_key(token)
            targets.append(Target(key=key, address=token, label=f"device token {key[4:12]}"))
        return targets

    async def send(self, target: Target, message: Message, notification: Notification) -> None:
        data = {**notification.data, "type": notification.type, "notification_id": notification.id}
        try:
            await self.client.send(
                target.address, message.part("title"), message.part("body"), data, target.label
            )
        except UnregisteredToken as gone:
            raise TargetGone(str(gone)) from gone

    async def discard(self, conn: AsyncConnection[Any], target: Target) -> None:
        await conn.execute(
            query_with("delete_push_token", **self.tokens_table), {"token": target.address}
        )

    async def aclose(self) -> None:
        await self.client.aclose()
