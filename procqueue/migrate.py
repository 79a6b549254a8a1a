"""`procqueue migrate`: install Procrastinate's schema in its own Postgres
schema, apply our numbered migrations, re-create the trigger functions and
attach the triggers to the configured tables. All in one transaction, under an
advisory lock so that two concurrent runs do not interleave.

The plan is a list of steps computed from what the database already has; the
same steps are either executed or printed (`--print-sql`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from importlib import resources

import procrastinate
import psycopg
from procrastinate import schema as procrastinate_schema

from procqueue import resources as shipped
from procqueue.engine import connections
from procqueue.engine.queries import query
from procqueue.engine.schema import (
    PROCRASTINATE_RECORD,
    PROCRASTINATE_SCHEMA,
    migration_files,
    version_key,
)
from procqueue.entities import Entity
from procqueue.errors import MigrationError
from procqueue.feature import Step
from procqueue.features import features
from procqueue.queue import finished_attempts
from procqueue.settings import SchemaConfig

MIGRATE_LOCK_KEY = 0x70726F63  # "proc"
DEFAULT_SCHEMA = SchemaConfig()
BOOTSTRAP_SQL = """\
CREATE SCHEMA IF NOT EXISTS procqueue;
CREATE TABLE IF NOT EXISTS procqueue.schema_migrations (
    name text PRIMARY KEY,
    checksum text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
REVOKE ALL ON SCHEMA procqueue FROM PUBLIC;
REVOKE ALL ON procqueue.schema_migrations FROM PUBLIC;
"""


def checksum(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def procrastinate_steps(installed: str | None) -> list[Step]:
    """Install Procrastinate's schema, or upgrade it with its own migrations."""
    current = procrastinate.__version__
    record = PROCRASTINATE_RECORD
    if installed is None:
        schema_sql = procrastinate_schema.SchemaManager.get_schema()
        return [
            Step(
                f"Procrastinate {current} schema in schema {PROCRASTINATE_SCHEMA}",
                _in_procrastinate_schema(schema_sql, create=True),
                record_as=record,
                checksum=current,
            )
        ]
    if version_key(installed) >= version_key(current):
        return []
    steps = []
    migrations = resources.files("procrastinate.sql") / "migrations"
    for item in sorted(migrations.iterdir(), key=lambda entry: entry.name):
        if not item.name.endswith(".sql"):
            continue
        version = item.name.split("_", 1)[0]
        if version_key(installed) < version_key(version) <= version_key(current):
            steps.append(
                Step(
                    f"Procrastinate migration {item.name}",
                    _in_procrastinate_schema(item.read_text(encoding="utf-8"), create=False),
                )
            )
    steps.append(Step(f"Procrastinate now at {current}", "", record_as=record, checksum=current))
    return steps


def _in_procrastinate_schema(body: str, *, create: bool) -> str:
    head = f"CREATE SCHEMA IF NOT EXISTS {PROCRASTINATE_SCHEMA};\n" if create else ""
    return (
        f"{head}SET LOCAL search_path TO {PROCRASTINATE_SCHEMA};\n"
        f"{body}\nSET LOCAL search_path TO DEFAULT;\n"
    )


def our_migration_steps(applied: dict[str, str]) -> list[Step]:
    steps = []
    for path in migration_files():
        text = path.read_text(encoding="utf-8")
        digest = checksum(text)
        if path.name in applied:
            if applied[path.name] != digest:
                raise MigrationError(
                    f"migration {path.name} was edited after it was applied; migrations "
                    "are append-only: restore it and put the change in a new file"
                )
            continue
        steps.append(Step(f"migration {path.name}", text, record_as=path.name, checksum=digest))
    return steps


def repeatable_steps() -> list[Step]:
    """SQL re-applied by every run: CREATE OR REPLACE functions and fix-ups."""
    files = [
        *((file.name, file) for file in shipped.sql_files(shipped.sql())),
        *((f"triggers/{file.name}", file) for file in shipped.sql_files(shipped.triggers())),
    ]
    return [Step(name, file.read_text(encoding="utf-8")) for name, file in files]


def check_tables(conn: psycopg.Connection, entities: Sequence[Entity]) -> None:
    """Fail clearly when a configured table or column does not exist."""
    for entity in entities:
        row = conn.execute(query("missing_table"), {"table": entity.table}).fetchone()
        if row is None or row[0]:
            raise MigrationError(
                f"table {entity.table} (entity {entity.name!r}) does not exist: create it "
                "before running `procqueue migrate`, or fix PROCQUEUE_ENTITIES_FILE"
            )
        existing = {
            name for (name,) in conn.execute(query("table_columns"), {"table": entity.table})
        }
        missing = [column for column in entity.columns if column not in existing]
        if missing:
            raise MigrationError(
                f"table {entity.table} (entity {entity.name!r}) has no column(s) "
                f"{', '.join(missing)}: add them or fix PROCQUEUE_ENTITIES_FILE"
            )


def schema_steps(schema: SchemaConfig, conn: psycopg.Connection | None = None) -> list[Step]:
    """The triggers each feature attaches for `schema`; with a connection, checked
    against the tables. Then the trigger that moves the succeeded jobs of every
    feature's specs that leave at once into the log of finished attempts."""
    specs = [spec for feature in features() for spec in feature.job_specs(schema)]
    return [
        *(step for feature in features() for step in feature.schema_steps(schema, conn)),
        Step("finished-attempt log trigger", finished_attempts.attach_trigger_sql(specs)),
    ]


def plan(conn: psycopg.Connection, schema: SchemaConfig) -> list[Step]:
    """Every step still to run against this database."""
    conn.execute(BOOTSTRAP_SQL)
    applied: dict[str, str] = dict(conn.execute(query("applied_migrations")).fetchall())
    check_tables(conn, schema.entities)
    return [
        *procrastinate_steps(applied.get(PROCRASTINATE_RECORD)),
        *our_migration_steps(applied),
        *repeatable_steps(),
        *schema_steps(schema, conn),
    ]


def plan_from_scratch(schema: SchemaConfig) -> list[Step]:
    """Every step for an empty database, without connecting to one."""
    return [
        Step("bookkeeping", BOOTSTRAP_SQL),
        *procrastinate_steps(None),
        *our_migration_steps({}),
        *repeatable_steps(),
        *schema_steps(schema),
    ]


def render(steps: Sequence[Step]) -> str:
    """The steps as one SQL script, suitable for `supabase db push`."""
    parts = ["BEGIN;\n"]
    for step in steps:
        parts.append(f"\n-- {step.description}\n{step.sql}")
        if step.record_as:
            parts.append(
                "INSERT INTO procqueue.schema_migrations (name, checksum) VALUES "
                f"('{step.record_as}', '{step.checksum}') ON CONFLICT (name) DO UPDATE "
                "SET checksum = EXCLUDED.checksum, applied_at = now();\n"
            )
    parts.append("\nCOMMIT;\n")
    return "".join(parts)


def migrate(
    dsn: str,
    schema: SchemaConfig = DEFAULT_SCHEMA,
    *,
    print_only: bool = False,
    transaction_pooler: bool = False,
) -> list[Step]:
    """Apply (or, with print_only, only compute) the pending steps. Idempotent.
    `transaction_pooler`: `dsn` goes through one (no prepared statements)."""
    try:
        with connections.connect(
            dsn, transaction_pooler=transaction_pooler, application_name="procqueue-migrate"
        ) as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", [MIGRATE_LOCK_KEY])
            steps = plan(conn, schema)
            if print_only:
                conn.rollback()
                return steps
            for step in steps:
                if step.sql:
                    conn.execute(step.sql)
                if step.record_as:
                    conn.execute(
                        query("record_migration"),
                        {"name": step.record_as, "checksum": step.checksum},
                    )
        return steps
    except psycopg.OperationalError as error:
        raise MigrationError(f"cannot connect to the database: {first_line(error)}") from None
    except psycopg.Error as error:
        raise MigrationError(f"migration failed: {first_line(error)}") from None


def first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
