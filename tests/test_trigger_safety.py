"""The user's write never fails because of the queue, and
Supabase's API roles can enqueue through the trigger but not touch the queue."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest
from psycopg import sql

from procqueue.engine.app import ProcqueueApp
from procqueue.entities import DEFAULT_ENTITIES, INVENTORY, LISTING, Entity
from procqueue.migrate import migrate
from procqueue.settings import SchemaConfig
from tests.support.supabase import act_as_api_user
from tests.support.worker import SELLER_ID, drain, indexed_documents, job_counts, table_documents

QUEUE_TABLES = [
    "procrastinate.procrastinate_jobs",
    "procrastinate.procrastinate_events",
    "procrastinate.procrastinate_workers",
    "procqueue.job_errors",
    "procqueue.schema_migrations",
]


async def test_api_user_can_write_own_listings_and_that_enqueues(
    database: str, db: psycopg.AsyncConnection[Any]
) -> None:
    listing_id = str(uuid.uuid4())
    async with await psycopg.AsyncConnection.connect(database) as conn:
        await act_as_api_user(conn, "authenticated", SELLER_ID)
        await conn.execute(
            "INSERT INTO listings (id, user_id, title) VALUES (%s, %s, 'from the API')",
            [listing_id, SELLER_ID],
        )
        await conn.execute("UPDATE listings SET title = 'edited' WHERE id = %s", [listing_id])
        await conn.commit()
    change = await (
        await db.execute(
            "SELECT entity, changes FROM procqueue.sync_changes WHERE entity_id = %s",
            [listing_id],
        )
    ).fetchone()
    assert change == ("listing", 1)  # insert and update in one transaction: one change
    drain = await (
        await db.execute(
            "SELECT count(*) FROM procrastinate.procrastinate_jobs"
            " WHERE task_name = 'listing:drain' AND status = 'todo'"
        )
    ).fetchone()
    assert drain == (1,)


async def test_a_write_refused_by_row_level_security_enqueues_nothing(
    database: str, db: psycopg.AsyncConnection[Any]
) -> None:
    listing_id = str(uuid.uuid4())
    async with await psycopg.AsyncConnection.connect(database) as conn:
        await act_as_api_user(conn, "anon", None)
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
            await conn.execute(
                "INSERT INTO listings (id, user_id, title) VALUES (%s, %s, 'anonymous')",
                [listing_id, SELLER_ID],
            )
    jobs = await (
        await db.execute(
            "SELECT count(*) FROM procrastinate.procrastinate_jobs WHERE lock = %s",
            [f"listing:{listing_id}"],
        )
    ).fetchone()
    assert jobs == (0,)


@pytest.mark.parametrize("role", ["authenticated", "anon"])
@pytest.mark.parametrize("table", QUEUE_TABLES)
async def test_api_role_cannot_read_or_write_queue_tables(
    role: str, table: str, database: str
) -> None:
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        await conn.execute(f"SET ROLE {role}")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            await conn.execute(f"SELECT * FROM {table} LIMIT 1")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            await conn.execute(f"DELETE FROM {table}")


@pytest.mark.parametrize("role", ["authenticated", "anon"])
async def test_api_role_cannot_enqueue_directly(role: str, database: str) -> None:
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        await conn.execute(f"SET ROLE {role}")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            await conn.execute("SELECT procqueue.add_job('listing:delete', '{}'::jsonb)")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            await conn.execute(
                "INSERT INTO procrastinate.procrastinate_jobs (queue_name, task_name) "
                "VALUES ('sync', 'listing:delete')"
            )


async def test_queue_schemas_are_not_public(db: psycopg.AsyncConnection[Any]) -> None:
    rows = await (
        await db.execute(
            "SELECT DISTINCT table_schema FROM information_schema.tables "
            "WHERE table_name LIKE 'procrastinate%%' OR table_name = 'job_errors'"
        )
    ).fetchall()
    assert {schema for (schema,) in rows} == {"procrastinate", "procqueue"}


async def test_trigger_function_is_security_definer_with_fixed_search_path(
    db: psycopg.AsyncConnection[Any],
) -> None:
    row = await (
        await db.execute(
            "SELECT prosecdef, proconfig FROM pg_proc "
            "WHERE oid = 'procqueue.enqueue_entity_sync'::regproc"
        )
    ).fetchone()
    assert row is not None
    secdef, config = row
    assert secdef is True
    assert any(setting.startswith("search_path=") for setting in config)


ODD_LISTINGS: list[dict[str, Any]] = [
    {"title": "nulls", "description": None, "budget": None, "main_image_url": None},
    {"title": "empty arrays", "additional_image_urls": []},
    {
        "title": "huge array",
        "additional_image_urls": [f"https://x.test/{n}.png" for n in range(5000)],
    },
    {"title": "1 MB description", "description": "ü" * 1_000_000},
    {"title": "unicode ✓ 🚲 ğüşiöç İ ı العربية 中文", "location": "İzmir\u200b"},
    {"title": "not cloudinary", "main_image_url": "ftp://example.org/a b.png?x='1'"},
    {"title": "odd urls", "additional_image_urls": ["", " ", "res.cloudinary.com", "%%%"]},
    {"title": "quotes ' \" \\ ; --", "description": "'); DROP TABLE listings; --"},
]


@pytest.mark.parametrize("values", ODD_LISTINGS, ids=lambda values: values["title"][:16])
async def test_odd_rows_never_make_the_write_fail(
    values: dict[str, Any], database: str, db: psycopg.AsyncConnection[Any]
) -> None:
    listing_id = str(uuid.uuid4())
    columns = ["id", "user_id", *values]
    placeholders = ", ".join(["%s"] * len(columns))
    await db.execute(
        f"INSERT INTO listings ({', '.join(columns)}) VALUES ({placeholders})",
        [listing_id, SELLER_ID, *values.values()],
    )
    await db.execute(
        "UPDATE listings SET title = title || ' (edited)', additional_image_urls = '{}' "
        "WHERE id = %s",
        [listing_id],
    )
    await db.execute(
        "INSERT INTO inventory_items (user_id, name, description, additional_image_urls) "
        "VALUES (%s, %s, %s, %s)",
        [
            SELLER_ID,
            values["title"],
            values.get("description"),
            values.get("additional_image_urls", []),
        ],
    )
    await db.execute("DELETE FROM listings WHERE id = %s", [listing_id])
    assert (await job_counts(database)).get("todo", 0) >= 1


async def test_odd_rows_are_indexed_as_they_are(
    app: ProcqueueApp, database: str, db: psycopg.AsyncConnection[Any]
) -> None:
    for values in ODD_LISTINGS:
        columns = ["user_id", *values]
        placeholders = ", ".join(["%s"] * len(columns))
        await db.execute(
            f"INSERT INTO listings ({', '.join(columns)}) VALUES ({placeholders})",
            [SELLER_ID, *values.values()],
        )
    await drain(app)
    assert "failed" not in await job_counts(database)
    for entity in (INVENTORY, LISTING):
        assert await indexed_documents(app, entity) == await table_documents(database, entity)


async def test_many_row_update_of_columns_without_equality_never_fails(
    database: str, db: psycopg.AsyncConnection[Any]
) -> None:
    """A bulk statement compares columns one by one: json and point have no `=`."""
    await db.execute(
        "CREATE TABLE public.odd_things (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), "
        "title text, payload json, spot point, hits int NOT NULL DEFAULT 0)"
    )
    odd = Entity(
        name="oddthing",
        table="public.odd_things",
        index="odd_things",
        fields={"id": "keyword", "title": "text"},
        ignored_columns=("hits",),
    )
    migrate(database, SchemaConfig(entities=(*DEFAULT_ENTITIES, odd)))
    await db.execute(
        "INSERT INTO odd_things (title, payload, spot) "
        "SELECT 'thing ' || g, '{\"a\": 1}', point(g, g) FROM generate_series(1, 120) AS g"
    )

    async def bulk_ids() -> int:
        row = await (
            await db.execute(
                "SELECT coalesce(sum(jsonb_array_length(args -> 'ids')), 0) "
                "FROM procrastinate.procrastinate_jobs WHERE task_name = 'oddthing:bulk'"
            )
        ).fetchone()
        return int(row[0]) if row else 0

    before = await bulk_ids()
    await db.execute("UPDATE odd_things SET payload = '{\"a\": 2}'")
    assert await bulk_ids() == before + 120
    await db.execute("UPDATE odd_things SET spot = point(0, 0) WHERE title <> 'thing 1'")
    assert await bulk_ids() == before + 120 + 119
    await db.execute("UPDATE odd_things SET hits = hits + 1")  # ignored column only
    assert await bulk_ids() == before + 120 + 119
    # This module's app knows no `oddthing` entity: leave no job or table of it behind.
    await db.execute("DROP TABLE public.odd_things")
    await db.execute(
        "DELETE FROM procrastinate.procrastinate_jobs WHERE task_name LIKE 'oddthing:%'"
    )


@pytest.mark.parametrize(
    ("key", "key_type", "first", "second"),
    [("sku", "text", "sku-1", "sku-2"), ("id", "bigint", "41", "42")],
)
async def test_single_row_writes_record_their_key_whatever_the_key_column(
    database: str, db: psycopg.AsyncConnection[Any], key: str, key_type: str, first: str,
    second: str,
) -> None:  # fmt: skip
    """The trigger records a row's key as text whatever the key column is called and
    whatever its type, for every kind of write, and skips a change of ignored columns."""
    name, table = f"keyed{key}", f"keyed_{key}"
    await db.execute(
        sql.SQL(
            "CREATE TABLE public.{} ({} {} PRIMARY KEY, title text, hits int NOT NULL DEFAULT 0)"
        ).format(sql.Identifier(table), sql.Identifier(key), sql.SQL(key_type))
    )
    keyed = Entity(
        name=name,
        table=f"public.{table}",
        index=table,
        primary_key=key,
        fields={key: "keyword", "title": "text"},
        ignored_columns=("hits",),
    )
    migrate(database, SchemaConfig(entities=(*DEFAULT_ENTITIES, keyed)))

    async def recorded(statement: str) -> set[str]:
        await db.execute("DELETE FROM procqueue.sync_changes WHERE entity = %s", [name])
        await db.execute(sql.SQL(statement).format(sql.Identifier(table), sql.Identifier(key)))
        rows = await (
            await db.execute(
                "SELECT entity_id FROM procqueue.sync_changes WHERE entity = %s", [name]
            )
        ).fetchall()
        return {entity_id for (entity_id,) in rows}

    try:
        assert await recorded(f"INSERT INTO {{}} ({{}}, title) VALUES ('{first}', 'a')") == {first}
        assert await recorded("UPDATE {} SET hits = hits + 1") == set()  # ignored column
        assert await recorded("UPDATE {} SET title = 'b'") == {first}
        assert await recorded(f"UPDATE {{}} SET {{}} = '{second}'") == {first, second}
        assert await recorded("DELETE FROM {}") == {second}
    finally:
        await db.execute(sql.SQL("DROP TABLE public.{}").format(sql.Identifier(table)))
        await db.execute("DELETE FROM procqueue.sync_changes WHERE entity = %s", [name])
        await db.execute(
            "DELETE FROM procrastinate.procrastinate_jobs WHERE task_name LIKE %s", [f"{name}:%"]
        )
