"""Which failures are worth retrying, how an error is told without secrets, and
the record of every failed attempt (procqueue.job_errors)."""

from __future__ import annotations

import logging
import re
import traceback
from typing import Any

import psycopg
from procrastinate import exceptions as procrastinate_exceptions
from procrastinate.jobs import Job

from procqueue.errors import PermanentError, TransientError
from procqueue.queries import query

logger = logging.getLogger(__name__)

# Errors that go away by themselves: network, timeouts, a restarting server.
_TRANSIENT_TYPES: tuple[type[BaseException], ...] = (
    TransientError,
    TimeoutError,
    ConnectionError,
    psycopg.OperationalError,
    procrastinate_exceptions.ConnectorException,
)

# user:password@ in URLs, password=... in libpq strings, api keys and secrets.
_SECRET_PATTERNS = (
    re.compile(r"(?P<keep>[a-z][a-z0-9+.\-]*://[^:/@\s]+:)[^@\s]+(?P<end>@)", re.IGNORECASE),
    re.compile(
        r"(?P<keep>\b(?:password|passwd|api_secret|api_key|secret|token|apikey)\s*[=:]\s*['\"]?)"
        r"[^\s'\"&,;]+(?P<end>)",
        re.IGNORECASE,
    ),
)


def is_transient(error: BaseException) -> bool:
    if isinstance(error, PermanentError):
        return False
    return isinstance(error, _TRANSIENT_TYPES)


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """Remove credentials from a message, a traceback or a log line."""
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(r"\g<keep>***\g<end>", text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def describe(error: BaseException, secrets: tuple[str, ...] = ()) -> tuple[str, str, str]:
    """(type, message, traceback) of an error, with secrets removed."""
    error_type = f"{type(error).__module__}.{type(error).__qualname__}"
    message = redact(str(error) or type(error).__name__, secrets)
    trace = redact("".join(traceback.format_exception(error)), secrets)
    return error_type, message, trace


async def record_failed_attempt(
    pool: Any, job: Job, error: BaseException, *, final: bool, secrets: tuple[str, ...]
) -> None:
    """Write one failed attempt of `job` to procqueue.job_errors, secrets removed."""
    error_type, message, trace = describe(error, secrets)
    try:
        async with pool.connection() as conn:
            await conn.execute(
                query("insert_job_error"),
                {
                    "job_id": job.id,
                    "attempt": job.attempts + 1,
                    "task_name": job.task_name,
                    "queue_name": job.queue,
                    "error_type": error_type,
                    "message": message,
                    "traceback": trace,
                    "transient": is_transient(error),
                    "final": final,
                },
            )
    except Exception as record_error:
        # The job's own outcome matters more than its record: log and go on.
        logger.warning(
            "could not record the failure of job %s: %s", job.id, type(record_error).__name__
        )
