"""The notifications slice's schema: its channels' jobs (procqueue.notification_jobs,
read by sql/triggers/notifications.sql) and its trigger on the notifications table."""

from __future__ import annotations

import psycopg
from psycopg import sql

from procqueue.engine.queries import query
from procqueue.errors import MigrationError
from procqueue.feature import Step
from procqueue.notifications.jobs import CHANNELS
from procqueue.settings import SchemaConfig

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


def notification_jobs_step() -> Step:
    """Describe every channel's job to the SQL that enqueues them."""
    rows = [
        sql.SQL("({})").format(
            sql.SQL(", ").join(
                sql.Literal(value)
                for value in (name, spec.job.task_name, spec.job.queue, spec.job.lock_prefix)
            )
        )
        for name, spec in CHANNELS.items()
    ]
    statement = sql.SQL(
        "DELETE FROM procqueue.notification_jobs;\n"
        "INSERT INTO procqueue.notification_jobs (channel, task_name, queue_name, lock_prefix)\n"
        "VALUES {rows};\n"
    ).format(rows=sql.SQL(", ").join(rows))
    return Step("notification channels' jobs", statement.as_string(None))


def schema_steps(schema: SchemaConfig, conn: psycopg.Connection | None = None) -> list[Step]:
    return [
        notification_jobs_step(),
        *notification_trigger_steps(schema.notifications_table, conn),
    ]
