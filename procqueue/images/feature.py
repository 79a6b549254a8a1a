"""The images slice as the composition roots see it."""

from __future__ import annotations

from procqueue.feature import Feature
from procqueue.images import jobs, schema, task
from procqueue.images.cloudinary import CLOUDINARY_DELETER
from procqueue.queue.retry import BackoffRetry
from procqueue.runtime import ProcqueueApp


def register(app: ProcqueueApp, retry: BackoffRetry) -> None:
    settings = app.services.settings
    # The deleter holds no connection (the SDK opens one per call): nothing to close.
    app.services.provide(CLOUDINARY_DELETER, lambda: task.make_deleter(settings.cloudinary))
    task.register(app, retry)


FEATURE = Feature(
    "images", register=register, schema_steps=schema.schema_steps, job_specs=jobs.job_specs
)
