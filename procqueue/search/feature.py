"""The search slice as the composition roots see it."""

from __future__ import annotations

from procqueue.engine.app import ProcqueueApp
from procqueue.feature import Feature
from procqueue.search import batched, bulk, drain, jobs, reconcile, schema, truncate
from procqueue.search.client import SEARCH_INDEX, SearchIndex
from procqueue.search.settings import SearchSettings


def register(app: ProcqueueApp) -> None:
    config = app.services.settings.section(SearchSettings).search
    app.services.provide(SEARCH_INDEX, lambda: SearchIndex.from_config(config), SearchIndex.aclose)
    batched.register(app)
    drain.register(app)
    bulk.register(app)
    reconcile.register(app)
    truncate.register(app)


FEATURE = Feature(
    "search",
    register=register,
    schema_steps=schema.schema_steps,
    job_specs=jobs.job_specs,
    settings=SearchSettings,
)
