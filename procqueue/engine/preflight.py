"""What a worker checks before it takes a job: that it can work, and work correctly.

A worker that cannot work must say why in one line and exit non-zero (so that a
restart-on-failure supervisor shows it), rather than die on its first query. So,
before the first job, on one connection of the worker's pool:

1. the queue is installed and up to date: schemas `procrastinate` and `procqueue`
   exist and this role may use them, every function, table and type Procrastinate's
   queries name exists, and `procqueue migrate` recorded the installed Procrastinate
   version and every migration file;
2. this role has the privileges the worker uses on Procrastinate's functions and
   tables;
3. this role sees every row of each table the worker reads (the synced entity
   tables, the notifications and push token tables): a row hidden by row-level
   security would read as missing, and a missing row means "delete its document".
   Seeing every row: superuser, BYPASSRLS, no RLS on the table, or owner of a table
   whose RLS is not FORCEd (`row_security_active()` answers exactly this).

Each failed check raises PreflightError with one line naming the problem and the fix.
`ProcqueueApp.run_worker_async` runs these checks, so both `procqueue worker` and
`procrastinate --app=procqueue.app.app worker` refuse to start.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import procrastinate
import psycopg
from psycopg.rows import dict_row

from procqueue.engine.qualified import QUALIFIED
from procqueue.engine.queries import query
from procqueue.engine.schema import (
    PROCRASTINATE_RECORD,
    PROCRASTINATE_SCHEMA,
    QUEUE_SCHEMA,
    migration_files,
    version_key,
)
from procqueue.entities import Entity
from procqueue.errors import WORKER_ROLE_FILE, NotMigrated, ProcqueueError

RUN_MIGRATE = NotMigrated.ADVICE


class PreflightError(ProcqueueError):
    """The worker cannot work (correctly) with this database and role."""


def procrastinate_names() -> list[str]:
    """Every function, table and type Procrastinate's queries name."""
    found = re.compile(rf"\b{PROCRASTINATE_SCHEMA}\.(procrastinate_[a-z0-9_]+)")
    return sorted({name for text in QUALIFIED.values() for name in found.findall(text)})


async def _rows(
    conn: psycopg.AsyncConnection[Any], name: str, params: dict[str, Any]
) -> list[dict[str, Any]]:
    cursor = conn.cursor(row_factory=dict_row)
    await cursor.execute(query(name), params)
    return await cursor.fetchall()


async def check_installed(conn: psycopg.AsyncConnection[Any]) -> list[dict[str, Any]]:
    """The queue's schemas exist (also before `procqueue verify` and `reindex`); their
    rows of the `preflight_schemas` query."""
    schemas = await _rows(
        conn, "preflight_schemas", {"schemas": [PROCRASTINATE_SCHEMA, QUEUE_SCHEMA]}
    )
    for schema in schemas:
        if not schema["present"]:
            raise PreflightError(
                f"the queue is not installed in this database (no schema {schema['name']}): "
                f"{RUN_MIGRATE}"
            )
    return schemas


async def check_queue(conn: psycopg.AsyncConnection[Any], role: str) -> None:
    """The queue is installed, migrated, and usable by this role."""
    schemas = await check_installed(conn)
    for schema in schemas:
        if not schema["usable"]:
            raise PreflightError(
                f"role {role} may not use schema {schema['name']}: connect the worker as the "
                f"role that ran `procqueue migrate`, or create a worker role with "
                f"{WORKER_ROLE_FILE}"
            )
    missing = [
        row["name"]
        for row in await _rows(
            conn,
            "preflight_missing_names",
            {"names": procrastinate_names(), "schema": PROCRASTINATE_SCHEMA},
        )
    ]
    if missing:
        raise PreflightError(
            f"the queue's schema lacks {PROCRASTINATE_SCHEMA}.{missing[0]}"
            f"{f' and {len(missing) - 1} more' if len(missing) > 1 else ''} "
            f"(Procrastinate {procrastinate.__version__}): {RUN_MIGRATE}"
        )
    lacking = [
        row["missing"]
        for row in await _rows(
            conn,
            "preflight_missing_privileges",
            {"schemas": [PROCRASTINATE_SCHEMA, QUEUE_SCHEMA], "written": PROCRASTINATE_SCHEMA},
        )
    ]
    if lacking:
        raise PreflightError(
            f"role {role} lacks {lacking[0]}"
            f"{f' and {len(lacking) - 1} more privileges' if len(lacking) > 1 else ''}: "
            f"grant them with {WORKER_ROLE_FILE} (run it as the role that ran `procqueue migrate`)"
        )
    try:
        cursor = await conn.execute(query("applied_migrations"))
        applied = dict(await cursor.fetchall())
    except psycopg.errors.InsufficientPrivilege:
        raise PreflightError(
            f"role {role} may not read {QUEUE_SCHEMA}.schema_migrations: grant it with "
            f"{WORKER_ROLE_FILE}"
        ) from None
    installed = applied.get(PROCRASTINATE_RECORD)
    if installed is None or version_key(installed) < version_key(procrastinate.__version__):
        raise PreflightError(
            f"the queue's schema is at Procrastinate {installed or 'nothing'} but this worker "
            f"runs Procrastinate {procrastinate.__version__}: {RUN_MIGRATE}"
        )
    pending = [path.name for path in migration_files() if path.name not in applied]
    if pending:
        raise PreflightError(
            f"migration {pending[0]}"
            f"{f' and {len(pending) - 1} more' if len(pending) > 1 else ''} not applied: "
            f"{RUN_MIGRATE}"
        )


async def check_tables(
    conn: psycopg.AsyncConnection[Any],
    role: str,
    entities: Sequence[Entity],
    other_tables: Sequence[str] = (),
) -> None:
    """This role reads every row of each entity table (and of `other_tables`, the
    notifications and push token tables, when they exist)."""
    names = [(entity.schema_name, entity.table_name) for entity in entities]
    required = len(names)
    for table in other_tables:
        if table:
            schema_name, _, table_name = table.rpartition(".")
            names.append((schema_name or "public", table_name))
    rows = await _rows(
        conn,
        "preflight_tables",
        {"schemas": [schema for schema, _ in names], "tables": [table for _, table in names]},
    )
    for position, row in enumerate(rows):
        table = f"{row['schema_name']}.{row['table_name']}"
        if not row["present"]:
            if position < required:
                raise PreflightError(
                    f"table {table} does not exist: create it, or fix PROCQUEUE_ENTITIES_FILE"
                )
            continue
        if not row["readable"]:
            raise PreflightError(
                f"role {role} may not read table {table}: GRANT SELECT ON {table} TO {role} "
                f"(see {WORKER_ROLE_FILE})"
            )
        if row["filtered"]:
            why = "FORCE ROW LEVEL SECURITY is on" if row["forced"] else "row-level security is on"
            raise PreflightError(
                f"role {role} does not see every row of {table} ({why} and the role has no "
                "BYPASSRLS): rows hidden from the worker would read as deleted and lose their "
                f"documents; run the worker as a role with BYPASSRLS (`ALTER ROLE {role} "
                f"BYPASSRLS`, or the role of {WORKER_ROLE_FILE})"
            )


async def check_worker(
    conn: psycopg.AsyncConnection[Any],
    entities: Sequence[Entity],
    other_tables: Sequence[str] = (),
) -> None:
    """Every check, on one connection; raises PreflightError on the first failure."""
    try:
        cursor = await conn.execute("SELECT current_user")
        row = await cursor.fetchone()
        role = str(row[0]) if row else "?"
        await check_queue(conn, role)
        await check_tables(conn, role, entities, other_tables)
    except psycopg.Error as error:
        text = str(error).strip()
        first = text.splitlines()[0] if text else type(error).__name__
        raise PreflightError(f"cannot check the database before starting: {first}") from None
