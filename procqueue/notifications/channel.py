"""The channel interface. A channel knows where a recipient can be reached and
how to send one rendered message there; everything else (rules, preferences,
templates, delivery records, retries) is the dispatcher's and shared by all.

Adding a channel (SMS, say) is one new module with a class like EmailChannel and
its factory (`email_channel`), its settings in procqueue/notifications/settings.py,
one entry in procqueue.notifications.jobs.CHANNELS, a template part for it and a
rule row naming it: no other code changes. The app's Services own the
channels (made on first use, closed with the app's other clients).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from psycopg import AsyncConnection

from procqueue.notifications.errors import ChannelUnavailable
from procqueue.notifications.model import Message, Notification, Recipient, Target


class Channel(Protocol):
    """One delivery channel: task `notification:<name>`."""

    @property
    def name(self) -> str: ...

    async def targets(self, conn: AsyncConnection[Any], recipient: Recipient) -> Sequence[Target]:
        """Where the recipient is reached on this channel. An empty list means
        "nowhere" (recorded as skipped); raise PermanentError when that is an error."""
        ...

    async def send(self, target: Target, message: Message, notification: Notification) -> None:
        """Deliver to one target. Raise TransientError to retry (with `retry_at` when
        the service said when), PermanentError to fail, TargetGone when the target is
        dead for good."""
        ...

    async def discard(self, conn: AsyncConnection[Any], target: Target) -> None:
        """Forget a target that is gone (TargetGone)."""
        ...

    async def aclose(self) -> None:
        """Release what the channel holds (connections of its client)."""
        ...


class UnconfiguredChannel:
    """Stands for a channel this deployment has no settings for (no SMTP host,
    no FCM key): its notifications are recorded as skipped, with the reason."""

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.reason = reason

    async def targets(self, conn: AsyncConnection[Any], recipient: Recipient) -> Sequence[Target]:
        raise ChannelUnavailable(self.reason)

    async def send(self, target: Target, message: Message, notification: Notification) -> None:
        raise ChannelUnavailable(self.reason)

    async def discard(self, conn: AsyncConnection[Any], target: Target) -> None:
        """Nothing to forget."""

    async def aclose(self) -> None:
        """Nothing held."""
