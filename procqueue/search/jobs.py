"""The search slice's jobs: `<entity>:drain` for the entity's waiting changes
(procqueue.sync_changes, procqueue/search/drain.py), one at a time (its lock: its
task name); `<entity>:create|update|delete`
for one row, locked on `<entity>:<id>`; `<entity>:bulk` for a chunk of ids, never
locked; and `<entity>:truncate` after a TRUNCATE, coalesced on its task name."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from procqueue.entities import Entity
from procqueue.queue.jobs import JobSpec
from procqueue.queue.maintenance import MAINTENANCE_QUEUE
from procqueue.settings import SchemaConfig

#: The service these jobs write to: its outages open one circuit (queue/circuit.py).
SINK = "elasticsearch"
#: The row jobs, by the trigger event that makes them.
ROW_OPERATIONS = {"INSERT": "create", "UPDATE": "update", "DELETE": "delete"}


#: The periodic reconciliation of every entity (procqueue/search/reconcile.py).
RECONCILE = JobSpec("search:reconcile", MAINTENANCE_QUEUE, sink=SINK, leaves_when_succeeded=True)


def row_job(entity: Entity, operation: str) -> JobSpec:
    """A one-row sync job: args {"id": "<id>"}, lock `<entity>:<id>`."""
    return JobSpec(
        f"{entity.name}:{operation}", entity.queue, lock_prefix=f"{entity.name}:", sink=SINK
    )


def drain_job(entity: Entity) -> JobSpec:
    """The entity's drain: args {}; its task name is its lock. One per batch of synced
    changes: a success leaves for the log at once."""
    return JobSpec(f"{entity.name}:drain", entity.queue, sink=SINK, leaves_when_succeeded=True)


def bulk_job(entity: Entity) -> JobSpec:
    """A chunk of ids: args {"ids": [...]} (and "attempt" on a retry)."""
    return JobSpec(f"{entity.name}:bulk", entity.queue, sink=SINK, keys_arg="ids")


def truncate_job(entity: Entity) -> JobSpec:
    """After a TRUNCATE of the entity's table: args {}, one waiting job at most."""
    return JobSpec(f"{entity.name}:truncate", entity.queue, sink=SINK)


def row_args(entity_id: str) -> dict[str, Any]:
    return {"id": entity_id}


def bulk_args(ids: Sequence[str], attempt: int = 0) -> dict[str, Any]:
    return {"ids": list(ids), **({"attempt": attempt} if attempt else {})}


def job_specs(schema: SchemaConfig) -> list[JobSpec]:
    return [
        spec
        for entity in schema.entities
        for spec in (
            *(row_job(entity, op) for op in ROW_OPERATIONS.values()),
            drain_job(entity),
            bulk_job(entity),
            truncate_job(entity),
        )
    ] + [RECONCILE]
