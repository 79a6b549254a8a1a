"""The images slice's job: `images:cleanup` with the removed URLs, never locked
(every removal reaches a worker; the orphan check runs when it does)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from procqueue.queue.jobs import JobSpec
from procqueue.settings import SchemaConfig

#: The service the cleanup calls: its outages open one circuit (queue/circuit.py).
SINK = "cloudinary"
CLEANUP = JobSpec("images:cleanup", "images", sink=SINK)


def cleanup_args(urls: Sequence[str], entity: str) -> dict[str, Any]:
    """What the trigger writes: {"urls": [...], "entity": "<entity name>"}."""
    return {"urls": list(urls), "entity": entity}


def job_specs(schema: SchemaConfig) -> list[JobSpec]:
    return [CLEANUP]
