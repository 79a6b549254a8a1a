"""`procqueue migrate`: install Procrastinate's schema in its own Postgres
schema, apply our numbered migrations, re-create the trigger functions and
attach the triggers to the configured tables. All in one transaction, under an
advisory lock so that two concurrent runs do not interleave.

The plan is a list of steps computed from what the database already has; the
same steps are either executed or printed (`--print-sql`).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable

import procrastinate
import psycopg
from procrastinate import schema as procrastinate_schema
from psycopg import sql

from procqueue import connections
from procqueue import resources as shipped
from procqueue.entities import Entity
from procqueue.errors import MigrationError
from procqueue.images import DEFAULT_GRACE_SECONDS, IMAGES_QUEUE
from procqueue.queries import query
from procqueue.settings import SchemaConfig

PROCRASTINATE_SCHEMA = "procrastinate"
PROCRASTINATE_RECORD = "procrastinate"
MIGRATE_LOCK_KEY = 0x70726F63  # "proc"
DEFAULT_SCHEMA = SchemaConfig()
DEFAULT_BULK_THRESHOLD = DEFAULT_SCHEMA.bulk_threshold
DEFAULT_BULK_CHUNK_SIZE = DEFAULT_SCHEMA.bulk_chunk_size
#: (trigger name, event, transition tables) of the statement-level sync triggers.
SYNC_TRIGGERS = (
    ("procqueue_sync", "INSERT", "NEW TABLE AS procqueue_new"),
    ("procqueue_sync_update", "UPDATE", "OLD TABLE AS procqueue_old NEW TABLE AS procqueue_new"),
    ("procqueue_sync_delete", "DELETE", "OLD TABLE AS procqueue_old"),
)

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


@dataclass(frozen=True)
class Step:
    """One piece of SQL, and the name to record once it ran (None: not recorded)."""

    description: str
    sql: str
    record_as: str | None = None
    checksum: str = ""


def checksum(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:3])


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
    if _version_key(installed) >= _version_key(current):
        return []
    steps = []
    migrations = resources.files("procrastinate.sql") / "migrations"
    for item in sorted(migrations.iterdir(), key=lambda entry: entry.name):
        if not item.name.endswith(".sql"):
            continue
        version = item.name.split("_", 1)[0]
        if _version_key(installed) < _version_key(version) <= _version_key(current):
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


def migration_files(directory: Traversable | None = None) -> list[Traversable]:
    """The numbered migrations, in order (see procqueue.resources for where they are)."""
    files = shipped.sql_files(shipped.migrations() if directory is None else directory)
    names = [file.name for file in files]
    if not all(re.match(r"^\d{4}_[a-z0-9_]+\.sql$", name) for name in names):
        raise MigrationError(f"migration files must be named NNNN_description.sql: {names}")
    return files


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


def attach_trigger_sql(
    entity: Entity,
    bulk_threshold: int = DEFAULT_BULK_THRESHOLD,
    bulk_chunk_size: int = DEFAULT_BULK_CHUNK_SIZE,
) -> str:
    """The sync trigger (sql/triggers/entity_sync.sql), once per event: PostgreSQL
    allows transition tables only on single-event triggers."""
    arguments = [
        entity.name, entity.primary_key, entity.queue, str(bulk_threshold), str(bulk_chunk_size),
        *entity.ignored_columns,
    ]  # fmt: skip
    statements = [
        sql.SQL(
            "CREATE OR REPLACE TRIGGER {name}\n"
            "    AFTER {event} ON {schema}.{table} REFERENCING {tables}\n"
            "    FOR EACH STATEMENT EXECUTE FUNCTION procqueue.enqueue_entity_sync({arguments});\n"
        ).format(
            name=sql.SQL(name),
            event=sql.SQL(event),
            tables=sql.SQL(tables),
            schema=sql.Identifier(entity.schema_name),
            table=sql.Identifier(entity.table_name),
            arguments=sql.SQL(", ").join(sql.Literal(argument) for argument in arguments),
        )
        for name, event, tables in SYNC_TRIGGERS
    ]
    return "".join(statement.as_string(None) for statement in statements)


def attach_image_trigger_sql(entity: Entity, grace_seconds: float = DEFAULT_GRACE_SECONDS) -> str:
    """The image cleanup trigger (sql/triggers/image_cleanup.sql) on an entity's table,
    or its removal when the entity has no image columns (any more)."""
    table = sql.SQL("{schema}.{table}").format(
        schema=sql.Identifier(entity.schema_name), table=sql.Identifier(entity.table_name)
    )
    if not entity.image_columns:
        statement = sql.SQL("DROP TRIGGER IF EXISTS procqueue_image_cleanup ON {table};\n")
        return statement.format(table=table).as_string(None)
    arguments = [entity.name, IMAGES_QUEUE, f"{grace_seconds:.3f}", *entity.image_columns]
    return (
        sql.SQL(
            "CREATE OR REPLACE TRIGGER procqueue_image_cleanup\n"
            "    AFTER UPDATE OF {columns} OR DELETE ON {table}\n"
            "    FOR EACH ROW EXECUTE FUNCTION procqueue.enqueue_image_cleanup({arguments});\n"
        )
        .format(
            columns=sql.SQL(", ").join(sql.Identifier(column) for column in entity.image_columns),
            table=table,
            arguments=sql.SQL(", ").join(sql.Literal(argument) for argument in arguments),
        )
        .as_string(None)
    )


def attach_steps(
    entities: Sequence[Entity],
    image_grace_seconds: float = DEFAULT_GRACE_SECONDS,
    bulk: tuple[int, int] = (DEFAULT_BULK_THRESHOLD, DEFAULT_BULK_CHUNK_SIZE),
) -> list[Step]:
    return [
        Step(
            f"triggers on {entity.table}",
            attach_trigger_sql(entity, *bulk)
            + attach_image_trigger_sql(entity, image_grace_seconds),
        )
        for entity in entities
    ]


NOTIFICATION_COLUMNS = ("id", "recipient_user_id", "type", "data")


def notification_trigger_steps(
    table: str | None, conn: psycopg.Connection | None = None
) -> list[Step]:
    """Attach the notification trigger to `table` ("": notifications off). With a
    connection, a missing table is skipped (the schema has no notifications) and
    a table without the expected columns is an error."""
    if not table:
        return []
    if conn is not None:
        row = conn.execute(query("missing_table"), {"table": table}).fetchone()
        if row is None or row[0]:
            return [Step(f"no table {table}: no notification trigger attached", "")]
        existing = {name for (name,) in conn.execute(query("table_columns"), {"table": table})}
        missing = [column for column in NOTIFICATION_COLUMNS if column not in existing]
        if missing:
            raise MigrationError(
                f"notifications table {table} has no column(s) {', '.join(missing)}: add "
                "them or point PROCQUEUE_NOTIFICATIONS_TABLE at the right table"
            )
    schema_name, table_name = table.split(".", 1) if "." in table else ("public", table)
    statement = sql.SQL(
        "CREATE OR REPLACE TRIGGER procqueue_notify\n"
        "    AFTER INSERT ON {schema}.{table}\n"
        "    FOR EACH ROW EXECUTE FUNCTION procqueue.enqueue_notification_delivery();\n"
    ).format(schema=sql.Identifier(schema_name), table=sql.Identifier(table_name))
    return [Step(f"notification trigger on {table}", statement.as_string(None))]


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
    """The triggers `schema` asks for; with a connection, checked against the tables."""
    return [
        *attach_steps(
            schema.entities,
            schema.image_cleanup_grace,
            (schema.bulk_threshold, schema.bulk_chunk_size),
        ),
        *notification_trigger_steps(schema.notifications_table, conn),
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
