"""The notifications slice as the composition roots see it."""

from __future__ import annotations

from procqueue.feature import Feature
from procqueue.notifications import jobs, schema, tasks
from procqueue.queue.retry import BackoffRetry
from procqueue.runtime import ProcqueueApp


def register(app: ProcqueueApp, retry: BackoffRetry) -> None:
    tasks.provide_channels(app.services)
    tasks.register(app, retry)


FEATURE = Feature(
    "notifications", register=register, schema_steps=schema.schema_steps, job_specs=jobs.job_specs
)
