"""The search slice's schema: the statement-level sync triggers
(sql/triggers/entity_sync.sql) on each entity's table, and the first index behind
each entity's alias (`create_missing_indexes`, run by `procqueue migrate`)."""

from __future__ import annotations

from collections.abc import Iterable

import psycopg
from psycopg import sql

from procqueue.entities import Entity
from procqueue.feature import Step
from procqueue.search.client import SearchIndex
from procqueue.search.jobs import ROW_OPERATIONS, bulk_job, drain_job, row_job, truncate_job
from procqueue.search.settings import SearchConfig
from procqueue.settings import SchemaConfig

DEFAULT_BULK_THRESHOLD = SchemaConfig.bulk_threshold
DEFAULT_BULK_CHUNK_SIZE = SchemaConfig.bulk_chunk_size
#: (trigger name, event, transition tables) of the statement-level sync triggers.
SYNC_TRIGGERS = (
    ("procqueue_sync", "INSERT", "NEW TABLE AS procqueue_new"),
    ("procqueue_sync_update", "UPDATE", "OLD TABLE AS procqueue_old NEW TABLE AS procqueue_new"),
    ("procqueue_sync_delete", "DELETE", "OLD TABLE AS procqueue_old"),
)


def trigger_arguments(
    entity: Entity, event: str, bulk_threshold: int, bulk_chunk_size: int
) -> list[str]:
    """The sync trigger's arguments for one event, in the order
    sql/triggers/entity_sync.sql reads them."""
    row, bulk = row_job(entity, ROW_OPERATIONS[event]), bulk_job(entity)
    assert row.lock_prefix is not None
    return [
        entity.name, entity.primary_key, row.queue, row.task_name, row.lock_prefix,
        bulk.task_name, str(bulk_threshold), str(bulk_chunk_size), drain_job(entity).task_name,
        *entity.ignored_columns,
    ]  # fmt: skip


def attach_trigger_sql(
    entity: Entity,
    bulk_threshold: int = DEFAULT_BULK_THRESHOLD,
    bulk_chunk_size: int = DEFAULT_BULK_CHUNK_SIZE,
) -> str:
    """The sync trigger (sql/triggers/entity_sync.sql), once per event: PostgreSQL
    allows transition tables only on single-event triggers; and the truncate trigger."""
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
            arguments=sql.SQL(", ").join(
                sql.Literal(argument)
                for argument in trigger_arguments(entity, event, bulk_threshold, bulk_chunk_size)
            ),
        )
        for name, event, tables in SYNC_TRIGGERS
    ]
    truncate = truncate_job(entity)
    statements.append(
        sql.SQL(
            "CREATE OR REPLACE TRIGGER procqueue_sync_truncate\n"
            "    AFTER TRUNCATE ON {schema}.{table}\n"
            "    FOR EACH STATEMENT\n"
            "    EXECUTE FUNCTION procqueue.enqueue_entity_truncate({queue}, {task});\n"
        ).format(
            schema=sql.Identifier(entity.schema_name),
            table=sql.Identifier(entity.table_name),
            queue=sql.Literal(truncate.queue),
            task=sql.Literal(truncate.task_name),
        )
    )
    return "".join(statement.as_string(None) for statement in statements)


def schema_steps(schema: SchemaConfig, conn: psycopg.Connection | None = None) -> list[Step]:
    return [
        Step(
            f"sync triggers on {entity.table}",
            attach_trigger_sql(entity, schema.bulk_threshold, schema.bulk_chunk_size),
        )
        for entity in schema.entities
    ]


async def create_missing_indexes(config: SearchConfig, entities: Iterable[Entity]) -> list[str]:
    """Each entity's first index behind its alias, where the alias does not exist yet,
    as the first sync or `procqueue reindex` would make it: so a table that is still
    empty is searchable (no hits, not an error) right after `procqueue migrate`.
    Returns the aliases it created."""
    search = SearchIndex.from_config(config)
    try:
        return [search.alias(entity) for entity in entities if await search.ensure_index(entity)]
    finally:
        await search.aclose()
