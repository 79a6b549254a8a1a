"""The email channel: one message to the address auth.users holds for the user."""

from __future__ import annotations

from collections.abc import Sequence
from email.utils import parseaddr
from typing import Any

from psycopg import AsyncConnection

from procqueue.errors import PermanentError
from procqueue.notifications.channel import Channel, UnconfiguredChannel
from procqueue.notifications.model import Message, Notification, Recipient, Target
from procqueue.notifications.settings import NotificationSettings, SmtpConfig
from procqueue.notifications.smtp import build_message, masked, send_email, valid_address
from procqueue.settings import CoreSettings


def email_channel(settings: CoreSettings) -> Channel:
    """The email channel the settings describe (CHANNELS, procqueue/notifications/jobs.py)."""
    config = settings.section(NotificationSettings).smtp
    if config is None:
        return UnconfiguredChannel("email", "email is not configured (PROCQUEUE_SMTP_HOST unset)")
    return EmailChannel(config)


class EmailChannel:
    name = "email"

    def __init__(self, config: SmtpConfig) -> None:
        self.config = config

    async def targets(self, conn: AsyncConnection[Any], recipient: Recipient) -> Sequence[Target]:
        address = (recipient.email or "").strip()
        if not address:
            raise PermanentError(
                f"user {recipient.user_id} has no email address in auth.users: nothing sent"
            )
        if not valid_address(address):
            raise PermanentError(
                f"user {recipient.user_id} has an invalid email address ({masked(address)!r}) "
                "in auth.users: nothing sent"
            )
        return [Target(key=recipient.user_id, address=address, label=masked(address))]

    async def send(self, target: Target, message: Message, notification: Notification) -> None:
        domain = parseaddr(self.config.sender)[1].rpartition("@")[2] or "procqueue.invalid"
        email = build_message(
            sender=self.config.sender,
            recipient=target.address,
            subject=message.part("subject"),
            text=message.part("text"),
            html=message.part("html"),
            # The same notification always has the same Message-ID: mail clients
            # collapse the copy of a send whose record was lost.
            message_id=f"<notification.{notification.id}@{domain}>",
        )
        await send_email(self.config, email)

    async def discard(self, conn: AsyncConnection[Any], target: Target) -> None:
        """An address is never removed: a bad one is the account owner's to fix."""

    async def aclose(self) -> None:
        """Nothing held: a connection per message."""
