"""What a feature slice (search, images, notifications) hands the composition roots:
`app.py` registers its tasks, `migrate.py` attaches its triggers, and the dashboard
reads its job specs (procqueue/queue/jobs.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import psycopg

from procqueue.settings import SchemaConfig

if TYPE_CHECKING:
    from procqueue.queue.jobs import JobSpec
    from procqueue.queue.retry import BackoffRetry
    from procqueue.runtime import ProcqueueApp


@dataclass(frozen=True)
class Step:
    """One piece of SQL, and the name to record once it ran (None: not recorded)."""

    description: str
    sql: str
    record_as: str | None = None
    checksum: str = ""


SchemaSteps = Callable[[SchemaConfig, "psycopg.Connection | None"], list[Step]]


@dataclass(frozen=True)
class Feature:
    """A feature slice: its name, how it registers its tasks, which triggers it needs."""

    name: str
    register: Callable[[ProcqueueApp, BackoffRetry], None]
    schema_steps: SchemaSteps
    job_specs: Callable[[SchemaConfig], list[JobSpec]]
