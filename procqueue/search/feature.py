"""The search slice as the composition roots see it."""

from __future__ import annotations

from procqueue.feature import Feature
from procqueue.queue.retry import BackoffRetry
from procqueue.runtime import ProcqueueApp
from procqueue.search import batched, bulk, jobs, reconcile, schema, truncate
from procqueue.search.client import SEARCH_INDEX, SearchIndex


def register(app: ProcqueueApp, retry: BackoffRetry) -> None:
    config = app.services.settings.search
    app.services.provide(SEARCH_INDEX, lambda: SearchIndex.from_config(config), SearchIndex.aclose)
    batched.register(app, retry)
    bulk.register(app, retry)
    reconcile.register(app, retry)
    truncate.register(app, retry)


FEATURE = Feature(
    "search", register=register, schema_steps=schema.schema_steps, job_specs=jobs.job_specs
)
