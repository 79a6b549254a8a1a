"""How a channel reports the outcome of one send."""

from __future__ import annotations

from procqueue.errors import PermanentError, TransientError


class RetryLater(TransientError):
    """A transient failure that says when to come back (HTTP Retry-After)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class TargetGone(PermanentError):
    """The target no longer exists (an unregistered device token): forget it, skip it."""


class ChannelUnavailable(Exception):
    """The channel is not configured in this deployment: recorded as skipped."""
