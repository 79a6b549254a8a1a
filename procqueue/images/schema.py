"""The images slice's trigger: image cleanup (sql/triggers/image_cleanup.sql) on each
entity's table that has image columns."""

from __future__ import annotations

import psycopg
from psycopg import sql

from procqueue.entities import Entity
from procqueue.feature import Step
from procqueue.images import DEFAULT_GRACE_SECONDS
from procqueue.images.jobs import CLEANUP
from procqueue.settings import SchemaConfig


def attach_image_trigger_sql(entity: Entity, grace_seconds: float = DEFAULT_GRACE_SECONDS) -> str:
    """The image cleanup triggers (sql/triggers/image_cleanup.sql) on an entity's table,
    row and TRUNCATE, or their removal when the entity has no image columns (any more)."""
    table = sql.SQL("{schema}.{table}").format(
        schema=sql.Identifier(entity.schema_name), table=sql.Identifier(entity.table_name)
    )
    if not entity.image_columns:
        statement = sql.SQL(
            "DROP TRIGGER IF EXISTS procqueue_image_cleanup ON {table};\n"
            "DROP TRIGGER IF EXISTS procqueue_image_cleanup_truncate ON {table};\n"
        )
        return statement.format(table=table).as_string(None)
    # In the order sql/triggers/image_cleanup.sql reads them.
    arguments = [
        entity.name, CLEANUP.queue, CLEANUP.task_name, f"{grace_seconds:.3f}",
        *entity.image_columns,
    ]  # fmt: skip
    return (
        sql.SQL(
            "CREATE OR REPLACE TRIGGER procqueue_image_cleanup\n"
            "    AFTER UPDATE OF {columns} OR DELETE ON {table}\n"
            "    FOR EACH ROW EXECUTE FUNCTION procqueue.enqueue_image_cleanup({arguments});\n"
            "CREATE OR REPLACE TRIGGER procqueue_image_cleanup_truncate\n"
            "    BEFORE TRUNCATE ON {table}\n"
            "    FOR EACH STATEMENT\n"
            "    EXECUTE FUNCTION procqueue.enqueue_image_cleanup({arguments});\n"
        )
        .format(
            columns=sql.SQL(", ").join(sql.Identifier(column) for column in entity.image_columns),
            table=table,
            arguments=sql.SQL(", ").join(sql.Literal(argument) for argument in arguments),
        )
        .as_string(None)
    )


def schema_steps(schema: SchemaConfig, conn: psycopg.Connection | None = None) -> list[Step]:
    return [
        Step(
            f"image cleanup trigger on {entity.table}",
            attach_image_trigger_sql(entity, schema.image_cleanup_grace),
        )
        for entity in schema.entities
    ]
