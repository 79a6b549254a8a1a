"""What a feature slice (search, images, notifications) hands the composition roots:
`app.py` registers its tasks, `migrate.py` attaches its triggers, and the dashboard
reads its job specs (procqueue/queue/jobs.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import psycopg

from procqueue.settings import SchemaConfig, Section

if TYPE_CHECKING:
    from procqueue.engine.app import ProcqueueApp
    from procqueue.queue.jobs import JobSpec


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
    """A feature slice: its name, how it registers its tasks, which triggers it needs,
    and its settings section (read from `app.services.settings.section(settings)`;
    procqueue/features.py puts every feature's section into the one `Settings`)."""

    name: str
    register: Callable[[ProcqueueApp], None]
    schema_steps: SchemaSteps
    job_specs: Callable[[SchemaConfig], list[JobSpec]]
    settings: type[Section]
