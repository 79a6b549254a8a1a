"""Sentry alerts: one event per *final* job failure, and lost workers.

`init_sentry(settings)` turns the SDK on when SENTRY_DSN is set (and does
nothing otherwise). Logging integration events are off: retried attempts are
logs, never alerts; what reaches Sentry is what `capture_final_failure` and
`capture_lost_worker` send, plus an exception that crashes the process
(the SDK's excepthook). Every string of every event goes through `redact`
with the settings' secret values before it leaves the process.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import sentry_sdk
from procrastinate.jobs import Job
from sentry_sdk.integrations.logging import LoggingIntegration

from procqueue import __version__
from procqueue.queue.failures import MAX_MESSAGE
from procqueue.redaction import clip, redact
from procqueue.settings import CoreSettings

Event = dict[str, Any]


def scrub(value: Any, secrets: tuple[str, ...]) -> Any:
    """`value` with every string clipped (procqueue.queue.failures.clip) and redacted."""
    if isinstance(value, str):
        return redact(clip(value, MAX_MESSAGE, secrets), secrets)
    if isinstance(value, dict):
        return {key: scrub(item, secrets) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(scrub(item, secrets) for item in value)
    return value


def scrubber(secrets: tuple[str, ...]) -> Callable[[Event, Any], Event]:
    def before_send(event: Event, hint: Any) -> Event:
        scrubbed: Event = scrub(event, secrets)
        return scrubbed

    return before_send


def init_sentry(settings: CoreSettings) -> bool:
    """Start the Sentry SDK if SENTRY_DSN is set; True when it is on. The worker calls
    it when it starts; calling it again with the same DSN changes nothing."""
    if settings.sentry_dsn is None or not settings.sentry_dsn.get_secret_value():
        return False
    dsn = settings.sentry_dsn.get_secret_value()
    client = sentry_sdk.get_client()
    if client.is_active() and client.dsn == dsn:
        return True
    secrets = settings.secret_values()
    sentry_sdk.init(
        dsn=dsn,
        environment=settings.environment,
        release=f"procqueue@{__version__}",
        before_send=scrubber(secrets),  # type: ignore[arg-type]
        before_breadcrumb=scrubber(secrets),
        integrations=[LoggingIntegration(level=logging.INFO, event_level=None)],
        auto_enabling_integrations=False,
        include_local_variables=False,
    )
    return True


def sentry_enabled() -> bool:
    return sentry_sdk.get_client().is_active()


def capture_final_failure(error: BaseException, job: Job) -> None:
    """One event for a job that failed for good (in its attempt `job.attempts + 1`),
    grouped by task and exception type."""
    task, queue, job_id, attempts = job.task_name, job.queue, job.id, job.attempts + 1
    error_type = f"{type(error).__module__}.{type(error).__qualname__}"
    with sentry_sdk.new_scope() as scope:
        scope.set_tag("task", task)
        scope.set_tag("queue", queue)
        scope.set_tag("job_id", str(job_id))
        scope.set_tag("attempts", str(attempts))
        scope.set_context("job", {"id": job_id, "task": task, "queue": queue, "attempts": attempts})
        scope.fingerprint = ["procqueue-final-failure", task, error_type]
        sentry_sdk.capture_exception(error)


def capture_lost_worker(worker_id: int | None, job_ids: Sequence[int], timeout: float) -> None:
    """One event for a worker that stopped heartbeating (killed, OOM, lost host)."""
    name = "an already pruned worker" if worker_id is None else f"worker {worker_id}"
    with sentry_sdk.new_scope() as scope:
        scope.set_tag("worker_id", str(worker_id))
        scope.set_context("lost_worker", {"worker_id": worker_id, "job_ids": list(job_ids)})
        scope.fingerprint = ["procqueue-lost-worker"]
        sentry_sdk.capture_message(
            f"{name} stopped heartbeating for more than {timeout:g} s with "
            f"{len(job_ids)} job(s) in hand; they were rescued",
            level="error",
        )


def flush_sentry(timeout: float = 5.0) -> None:
    """Send what is queued (blocking, up to `timeout` seconds)."""
    sentry_sdk.flush(timeout=timeout)


def shutdown_sentry() -> None:
    """Send what is queued and turn the SDK off for this process."""
    client = sentry_sdk.get_client()
    if client.is_active():
        client.close(timeout=5.0)
    sentry_sdk.get_global_scope().set_client(None)
