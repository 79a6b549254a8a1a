"""Where the queue lives in the database and which migrations make it: what
`procqueue migrate` writes and the worker's start checks read back."""

from __future__ import annotations

import re
from importlib.resources.abc import Traversable

from procqueue import resources as shipped
from procqueue.errors import MigrationError

#: Procrastinate's tables, functions and types live in this schema, never `public`.
PROCRASTINATE_SCHEMA = "procrastinate"
#: procqueue's own tables (failure records, health, dashboard, migrations).
QUEUE_SCHEMA = "procqueue"
#: The name under which procqueue.schema_migrations records Procrastinate's version.
PROCRASTINATE_RECORD = "procrastinate"


def version_key(version: str) -> tuple[int, ...]:
    """A version's first three numbers, for comparing '3.10.0' with '3.9.1'."""
    return tuple(int(part) for part in re.findall(r"\d+", version)[:3])


def migration_files(directory: Traversable | None = None) -> list[Traversable]:
    """The numbered migrations, in order (see procqueue.resources for where they are)."""
    files = shipped.sql_files(shipped.migrations() if directory is None else directory)
    names = [file.name for file in files]
    if not all(re.match(r"^\d{4}_[a-z0-9_]+\.sql$", name) for name in names):
        raise MigrationError(f"migration files must be named NNNN_description.sql: {names}")
    return files
