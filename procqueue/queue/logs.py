"""Logging setup: plain text, or one JSON object per line (PROCQUEUE_LOG_FORMAT=json).

JSON lines carry the job fields our middlewares put in `extra` (job_id, task,
queue, attempt, duration, outcome) and Procrastinate's `action`. Messages and
tracebacks are redacted with the settings' secret values.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from procqueue.errors import ConfigError
from procqueue.queue.failures import redact
from procqueue.settings import get_settings

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
JOB_FIELDS = ("job_id", "task", "queue", "attempt", "duration", "outcome", "action")


class RedactingFormatter(logging.Formatter):
    """Plain text lines, with secrets removed from the message and the traceback."""

    def __init__(self, secrets: tuple[str, ...] = ()) -> None:
        super().__init__(TEXT_FORMAT)
        self.secrets = secrets

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record), self.secrets)


class JsonFormatter(logging.Formatter):
    def __init__(self, secrets: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.secrets = secrets

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage(), self.secrets),
        }
        for name in JOB_FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                entry[name] = value
        job = record.__dict__.get("job")
        if "job_id" not in entry and isinstance(job, dict) and job.get("id") is not None:
            entry.update(job_id=job["id"], task=job.get("task_name"), queue=job.get("queue"))
        if record.exc_info:
            entry["error"] = redact(self.formatException(record.exc_info), self.secrets)
        return json.dumps(entry, default=str)


def configure_logging(*, verbose: bool = False) -> None:
    """Root logging for the CLI: text by default, JSON when the settings say so."""
    level = logging.DEBUG if verbose else logging.INFO
    try:
        settings = get_settings()
        log_format, secrets = settings.log_format, settings.secret_values()
    except ConfigError:
        log_format, secrets = "text", ()  # the command itself reports the setting
    handler = logging.StreamHandler()
    handler.setFormatter(
        JsonFormatter(secrets) if log_format == "json" else RedactingFormatter(secrets)
    )
    logging.basicConfig(level=level, handlers=[handler], force=True)
