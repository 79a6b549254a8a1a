"""The exception hierarchy. Every error a user meets says what went wrong and
what to do; none carries a secret."""

from __future__ import annotations


class ProcqueueError(Exception):
    """Base class of every error raised by procqueue."""


class ConfigError(ProcqueueError):
    """A setting or the entity configuration is missing or malformed."""


class MigrationError(ProcqueueError):
    """The database cannot be migrated as asked (missing table, edited migration...)."""


class JobError(ProcqueueError):
    """A job could not do its work. Subclasses tell whether retrying can help."""


class TransientError(JobError):
    """A failure that may go away by itself (network, timeout, 429, 5xx): retry."""


class PermanentError(JobError):
    """A failure retrying cannot fix (bad data, 4xx, unknown entity): fail now."""
