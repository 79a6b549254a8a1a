"""Which failures are worth retrying, how an error is told without secrets, and
the record of every failed attempt (procqueue.job_errors)."""

from __future__ import annotations

import logging
import traceback
from typing import Any

import psycopg
from procrastinate import exceptions as procrastinate_exceptions
from procrastinate.jobs import Job

from procqueue.errors import PermanentError, TransientError
from procqueue.queue.queries import query
from procqueue.redaction import clip, redact

logger = logging.getLogger(__name__)

#: Bounds of what an error record or a log line carries (longer ones are clipped).
MAX_MESSAGE = 8192
MAX_TRACEBACK = 32768

# Errors that go away by themselves: network, timeouts, a restarting server.
_TRANSIENT_TYPES: tuple[type[BaseException], ...] = (
    TransientError,
    TimeoutError,
    ConnectionError,
    psycopg.OperationalError,
    procrastinate_exceptions.ConnectorException,
)

def is_transient(error: BaseException) -> bool:
    if isinstance(error, PermanentError):
        return False
    return isinstance(error, _TRANSIENT_TYPES)


def describe(error: BaseException, secrets: tuple[str, ...] = ()) -> tuple[str, str]:
    """(type, message) of an error, with secrets removed, the message at most about
    MAX_MESSAGE characters."""
    error_type = f"{type(error).__module__}.{type(error).__qualname__}"
    message = redact(clip(str(error) or type(error).__name__, MAX_MESSAGE, secrets), secrets)
    return error_type, message


def traceback_text(error: BaseException, secrets: tuple[str, ...] = ()) -> str:
    """The error's traceback, with secrets removed, at most about MAX_TRACEBACK
    characters. Formatting one costs (Python 3.11 parses each frame's line), so only
    a recorded attempt pays for it, not a postponement."""
    return redact(clip("".join(traceback.format_exception(error)), MAX_TRACEBACK, secrets), secrets)


async def record_failed_attempt(
    pool: Any, job: Job, error: BaseException, *, final: bool, secrets: tuple[str, ...]
) -> None:
    """Write one failed attempt of `job` to procqueue.job_errors, secrets removed."""
    error_type, message = describe(error, secrets)
    trace = traceback_text(error, secrets)
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
