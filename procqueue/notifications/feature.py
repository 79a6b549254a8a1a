"""The notifications slice as the composition roots see it."""

from __future__ import annotations

from procqueue.feature import Feature
from procqueue.notifications import schema, tasks

FEATURE = Feature("notifications", register=tasks.register, schema_steps=schema.schema_steps)
