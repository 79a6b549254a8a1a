"""The notifications slice as the composition roots see it."""

from __future__ import annotations

from procqueue.engine.app import ProcqueueApp
from procqueue.feature import Feature
from procqueue.notifications import jobs, schema, tasks
from procqueue.notifications.settings import NotificationSettings


def register(app: ProcqueueApp) -> None:
    tasks.provide_channels(app.services)
    tasks.register(app)


FEATURE = Feature(
    "notifications",
    register=register,
    schema_steps=schema.schema_steps,
    job_specs=jobs.job_specs,
    settings=NotificationSettings,
)
