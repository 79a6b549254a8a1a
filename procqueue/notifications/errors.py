"""How a channel reports the outcome of one send."""

from __future__ import annotations

from procqueue.errors import PermanentError


class TargetGone(PermanentError):
    """The target no longer exists (an unregistered device token): forget it, skip it."""


class ChannelUnavailable(Exception):
    """The channel is not configured in this deployment: recorded as skipped."""
