"""The search slice as the composition roots see it."""

from __future__ import annotations

from procqueue.feature import Feature
from procqueue.queue.retry import BackoffRetry
from procqueue.runtime import ProcqueueApp
from procqueue.search import bulk, schema, sync


def register(app: ProcqueueApp, retry: BackoffRetry) -> None:
    sync.register(app, retry)
    bulk.register(app, retry)


FEATURE = Feature("search", register=register, schema_steps=schema.schema_steps)
