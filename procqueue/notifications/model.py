"""What a notification job works on: the notification, its recipient, the
targets a channel sends to and the message rendered for the recipient."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Notification:
    """One notification: a row of the notifications table, or a procqueue.notify() call."""

    id: str
    recipient: str  # auth.users id
    type: str
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Recipient:
    """The user a notification goes to, as auth.users knows them."""

    user_id: str
    email: str | None = None
    phone: str | None = None
    locale: str | None = None


@dataclass(frozen=True)
class Target:
    """One place a channel delivers to.

    `key` names the delivery record (the user id for a channel with one address
    per user, a hash of the device token for push); `address` is where to send
    and never appears in a log or an error; `label` is what messages show.
    """

    key: str
    address: str
    label: str


@dataclass(frozen=True)
class Message:
    """A notification rendered in one locale: every part its template has
    (subject, text, html for email; title, body for push)."""

    type: str
    locale: str
    parts: Mapping[str, str]

    def part(self, name: str) -> str:
        return self.parts.get(name, "")
