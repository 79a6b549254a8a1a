"""The exception hierarchy. Every error a user meets says what went wrong and
what to do; none carries a secret."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Self


class ProcqueueError(Exception):
    """Base class of every error raised by procqueue."""


class ConfigError(ProcqueueError):
    """A setting or the entity configuration is missing or malformed."""


class MigrationError(ProcqueueError):
    """The database cannot be migrated as asked (missing table, edited migration...)."""


class JobError(ProcqueueError):
    """A job could not do its work. Subclasses tell whether retrying can help."""


class TransientError(JobError):
    """A failure that may go away by itself (network, timeout, 429, 5xx): retry.
    `retry_at`: the earliest time the service said it may be called again (a rate
    limit's reset, an HTTP Retry-After); the retry waits for it (queue/retry.py).
    `spends_attempt=False` (see `postpone`): not a failure but a wait: the worker
    puts the same job row back to waiting, due at `retry_at`, attempts unchanged
    (queue/outcomes.py `Postponed`), so the wait uses up none of its retries."""

    def __init__(
        self, message: str, *, retry_at: datetime | None = None, spends_attempt: bool = True
    ) -> None:
        super().__init__(message)
        self.retry_at = retry_at
        self.spends_attempt = spends_attempt

    @classmethod
    def after(cls, message: str, seconds: float | None) -> Self:
        """A transient error asking to wait `seconds` (None: no wish)."""
        when = None if seconds is None else datetime.now(UTC) + timedelta(seconds=seconds)
        return cls(message, retry_at=when)

    @classmethod
    def postpone(cls, message: str, seconds: float) -> Self:
        """Wait `seconds` and run the same job again, spending no retry (for waits that
        are not failures: another transaction holds what the job needs)."""
        when = datetime.now(UTC) + timedelta(seconds=seconds)
        return cls(message, retry_at=when, spends_attempt=False)


class SinkUnavailable(TransientError):
    """The service itself is down or overloaded (unreachable, timing out, 5xx, 429):
    a fault of the service, not of the job. It opens the service's circuit
    (queue/circuit.py): this job and the others of the same sink are postponed,
    spending no retries, until a probe gets through."""

    def __init__(self, sink: str, message: str, *, retry_at: datetime | None = None) -> None:
        super().__init__(message, retry_at=retry_at)
        self.sink = sink


class PermanentError(JobError):
    """A failure retrying cannot fix (bad data, 4xx, unknown entity): fail now."""


class NotMigrated(ConfigError):
    """The database lacks the queue's schema, or an object of it: `procqueue migrate`
    never ran there, or not since this version of procqueue."""

    ADVICE = "run `procqueue migrate` with this DATABASE_URL (as the role that owns the tables)"


class DatabaseUnreachable(ConfigError):
    """Postgres refused the connection (wrong password, no such database or role) or
    does not answer at DATABASE_URL."""


#: PostgreSQL's SQLSTATE (insufficient_privilege) and the start of its message when
#: `row_security = off` meets a table whose row-level security would filter the query.
ROW_SECURITY_SQLSTATE = "42501"
ROW_SECURITY_MESSAGE = "query would be affected by row-level security policy for table"
#: The file that creates a worker role seeing every row (as in the start check's line).
WORKER_ROLE_FILE = "sql/roles/worker_role.sql"


def is_row_security_refusal(error: BaseException) -> bool:
    """Whether `error` is PostgreSQL refusing a read that row-level security would
    filter (the reader set `row_security = off`): a psycopg error, told by its
    SQLSTATE and message without importing psycopg here."""
    sqlstate = getattr(error, "sqlstate", None)
    return sqlstate == ROW_SECURITY_SQLSTATE and ROW_SECURITY_MESSAGE in str(error)


class RowsHidden(PermanentError):
    """Row-level security filters a table the worker reads, though the start check
    found it did not: switched on, FORCEd, or the role lost BYPASSRLS while the
    worker ran. The worker reads with `row_security = off`, so PostgreSQL raised
    instead of hiding rows, which would have read as deleted (a document deleted, an
    image in use taken for an orphan, a notification skipped).

    Permanent, not transient: no retry can help before someone changes the role or
    the policy, and each would repeat the same line; the job fails at once with the
    reason (a final failure alerts), having deleted nothing. Once the role sees every
    row again, `procqueue retry --all-failed` runs these jobs again, and the periodic
    reconciliation finds any document left stale meanwhile and syncs it."""

    def __init__(self, table: str, role: str, what: str) -> None:
        super().__init__(
            f"role {role} does not see every row of {table} any more (row-level security "
            f"was switched on or FORCEd, or the role lost BYPASSRLS, after the worker "
            f"started): {what} stopped rather than read hidden rows as deleted, and nothing "
            f"was deleted; run the worker as a role with BYPASSRLS (`ALTER ROLE {role} "
            f"BYPASSRLS`, or the role of {WORKER_ROLE_FILE}), give {role} a policy that "
            f"sees every row, or turn row-level security off on {table}; then `procqueue "
            "retry --all-failed`"
        )
        self.table = table
        self.role = role
