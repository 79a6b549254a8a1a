"""The images slice as the composition roots see it."""

from __future__ import annotations

from procqueue.engine.app import ProcqueueApp
from procqueue.feature import Feature
from procqueue.images import jobs, schema, task
from procqueue.images.cloudinary import CLOUDINARY_DELETER
from procqueue.images.settings import ImageSettings


def register(app: ProcqueueApp) -> None:
    settings = app.services.settings.section(ImageSettings)
    # The deleter holds no connection (the SDK opens one per call): nothing to close.
    app.services.provide(CLOUDINARY_DELETER, lambda: task.make_deleter(settings.cloudinary))
    task.register(app)


FEATURE = Feature(
    "images",
    register=register,
    schema_steps=schema.schema_steps,
    job_specs=jobs.job_specs,
    settings=ImageSettings,
)
