"""Logging setup: plain text, or one JSON object per line (PROCQUEUE_LOG_FORMAT=json).

JSON lines carry the job fields our middlewares put in `extra` (job_id, task,
queue, attempt, duration, outcome) and Procrastinate's `action`. Messages and
tracebacks are clipped (failures.clip: head and tail around a marker) and then
redacted with the settings' secret values, so a line costs little to write
whatever a job's args hold (Procrastinate logs every job's args on "Starting job").

By default (no -v) the output is what an operator reads: one line per job attempt
(the middleware's, with its outcome), no line per HTTP request and no traceback of a
client's own retry (each failure reaches our code, which says it once), and nothing
from routine maintenance that found nothing to do (`RoutineFilter`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from procqueue.errors import ConfigError
from procqueue.queue.failures import MAX_MESSAGE, MAX_TRACEBACK
from procqueue.queue.maintenance import MAINTENANCE_QUEUE
from procqueue.redaction import clip, redact
from procqueue.settings import CoreSettings

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
JOB_FIELDS = ("job_id", "task", "queue", "attempt", "duration", "outcome", "action")
#: Longest value of an `extra` field a JSON line carries.
MAX_FIELD = 1024
#: Client libraries' loggers and their level unless verbose. elastic_transport logs
#: each request at INFO and each failed one at WARNING with a traceback; the errors
#: reach our code, which logs them once, in one line.
CLIENT_LOGGERS = {"elastic_transport": logging.ERROR, "httpx": logging.WARNING}
#: Procrastinate's own line before and after each attempt: the middleware's one line
#: per attempt says the same with the outcome (a final failure's traceback is kept).
_ATTEMPT_ACTIONS = frozenset({"start_job", "job_success", "job_error_retry", "job_aborted_retry"})
_ROUTINE_ACTIONS = frozenset({"periodic_task_deferred", "registering_periodic_task"})


def _bounded(text: str, limit: int, secrets: tuple[str, ...]) -> str:
    return redact(clip(text, limit, secrets), secrets)


def _field(value: Any, secrets: tuple[str, ...]) -> Any:
    if value is None or isinstance(value, int | float | bool):
        return value
    return _bounded(str(value), MAX_FIELD, secrets)


class RedactingFormatter(logging.Formatter):
    """Plain text lines, with secrets removed from the message and the traceback."""

    def __init__(self, secrets: tuple[str, ...] = ()) -> None:
        super().__init__(TEXT_FORMAT)
        self.secrets = secrets

    def format(self, record: logging.LogRecord) -> str:
        # A copy: the record's own message and cached traceback stay whole for
        # other handlers.
        clipped = logging.makeLogRecord(record.__dict__)
        clipped.msg = clip(record.getMessage(), MAX_MESSAGE, self.secrets)
        clipped.args = None
        if record.exc_info:
            trace = self.formatException(record.exc_info)
            clipped.exc_info, clipped.exc_text = None, clip(trace, MAX_TRACEBACK, self.secrets)
        elif record.exc_text:
            clipped.exc_text = clip(record.exc_text, MAX_TRACEBACK, self.secrets)
        if record.stack_info:
            clipped.stack_info = clip(record.stack_info, MAX_TRACEBACK, self.secrets)
        return redact(super().format(clipped), self.secrets)


class JsonFormatter(logging.Formatter):
    def __init__(self, secrets: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.secrets = secrets

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": _bounded(record.getMessage(), MAX_MESSAGE, self.secrets),
        }
        for name in JOB_FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                entry[name] = _field(value, self.secrets)
        job = record.__dict__.get("job")
        if "job_id" not in entry and isinstance(job, dict) and job.get("id") is not None:
            fields = {"job_id": job["id"], "task": job.get("task_name"), "queue": job.get("queue")}
            entry.update({name: _field(value, self.secrets) for name, value in fields.items()})
        if record.exc_info:
            trace = self.formatException(record.exc_info)
            entry["error"] = _bounded(trace, MAX_TRACEBACK, self.secrets)
        return json.dumps(entry, default=str)


class RoutineFilter(logging.Filter):
    """Leaves out lines that repeat another one or report routine work: Procrastinate's
    start/end line of each attempt, its periodic deferrals, and a maintenance job's
    attempt that succeeded (rescue and prune log themselves when they do something)."""

    def filter(self, record: logging.LogRecord) -> bool:
        action = record.__dict__.get("action")
        if record.name.startswith("procrastinate.worker") and action in _ATTEMPT_ACTIONS:
            return False
        if record.name.startswith("procrastinate.periodic") and action in _ROUTINE_ACTIONS:
            return False
        routine = record.__dict__.get("queue") == MAINTENANCE_QUEUE
        return not (routine and record.__dict__.get("outcome") == "succeeded")


def configure_logging(
    settings_of: Callable[[], CoreSettings], *, verbose: bool = False, quiet: bool = False
) -> None:
    """Root logging for the CLI: text by default, JSON when the settings say so (read
    with `settings_of`: procqueue.features.get_settings, whose secret values every
    line is redacted with); `verbose` shows debug lines and everything RoutineFilter
    and CLIENT_LOGGERS hide; `quiet` (and not `verbose`) only warnings and errors."""
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    try:
        settings = settings_of()
        log_format, secrets = settings.log_format, settings.secret_values()
    except ConfigError:
        log_format, secrets = "text", ()  # the command itself reports the setting
    handler = logging.StreamHandler()
    handler.setFormatter(
        JsonFormatter(secrets) if log_format == "json" else RedactingFormatter(secrets)
    )
    if not verbose:
        handler.addFilter(RoutineFilter())
    for name, client_level in CLIENT_LOGGERS.items():
        logging.getLogger(name).setLevel(logging.NOTSET if verbose else client_level)
    logging.basicConfig(level=level, handlers=[handler], force=True)
