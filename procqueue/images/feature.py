"""The images slice as the composition roots see it."""

from __future__ import annotations

from procqueue.feature import Feature
from procqueue.images import schema, task

FEATURE = Feature("images", register=task.register, schema_steps=schema.schema_steps)
