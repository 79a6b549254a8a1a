"""Hostile values are data (invariant 10): every value Postgres accepts in a
synced column is indexed, or fails its own row with a reason; it never fails a
chunk of other rows, nor crashes `verify` or `reindex` (docs/bulk.md, "What a
document holds")."""

from __future__ import annotations

import dataclasses
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from procqueue.engine.app import ProcqueueApp
from procqueue.entities import DEFAULT_MAX_DOCUMENT_BYTES, LISTING, Entity, load_entities
from procqueue.errors import ConfigError, PermanentError
from procqueue.features import Settings
from procqueue.search.bulk import sync_chunk
from procqueue.search.client import search_index
from procqueue.search.document import (
    DOCUMENT_COLUMN,
    Unindexable,
    document_from_row,
    document_json,
)
from procqueue.search.reindex import live_indexes, reindex_entity
from procqueue.search.sync import entity_query, sync_entity
from tests.conftest import make_settings
from tests.support.history import run_cli
from tests.support.repo import REPO_DIR
from tests.support.supabase import act_as_api_user
from tests.support.worker import (
    SELLER_ID,
    app_with,
    drain,
    eventually,
    indexed_documents,
    running_worker,
    sink_circuit,
)

#: Larger than the default max_document_bytes, the description of a listing.
HUGE = DEFAULT_MAX_DOCUMENT_BYTES + 1024


@pytest.fixture(scope="module", autouse=True)
async def unconstrained_budget(db: psycopg.AsyncConnection[Any]) -> None:
    """`budget numeric` with no precision, as many schemas have it: it also takes
    'Infinity' (numeric(12, 2) takes 'NaN' only)."""
    await db.execute("ALTER TABLE listings ALTER COLUMN budget TYPE numeric")


async def insert_listings(
    db: psycopg.AsyncConnection[Any], count: int, tag: str, **values: Any
) -> list[str]:
    """`count` listings in one statement (a bulk job above the threshold of 50)."""
    columns = ", ".join(["user_id", "title", "category", *values])
    placeholders = ", ".join(["%s", "'row ' || g", "%s", *(["%s"] * len(values))])
    cursor = await db.execute(
        f"INSERT INTO listings ({columns}) SELECT {placeholders} "
        "FROM generate_series(1, %s) AS g RETURNING id::text",
        [SELLER_ID, tag, *values.values(), count],
    )
    return [row[0] for row in await cursor.fetchall()]


async def failed_jobs(db: psycopg.AsyncConnection[Any], ids: list[str]) -> list[tuple[str, str]]:
    """(task, last error message) of the failed jobs of these rows (per-row or bulk)."""
    cursor = await db.execute(
        "SELECT j.task_name, (SELECT x.message FROM procqueue.job_errors AS x "
        "  WHERE x.job_id = j.id ORDER BY x.id DESC LIMIT 1) "
        "FROM procrastinate.procrastinate_jobs AS j WHERE j.status = 'failed' "
        "AND (j.args ->> 'id' = ANY(%s) OR j.args -> 'ids' ?| %s)",
        [ids, ids],
    )
    return [(row[0], row[1]) for row in await cursor.fetchall()]


async def expected_documents(database: str, ids: list[str]) -> dict[str, Any]:
    """The documents these rows should have (None: none, they are too large)."""
    async with await psycopg.AsyncConnection.connect(database) as conn:
        cursor = conn.cursor(row_factory=psycopg.rows.dict_row)
        await cursor.execute(entity_query("read_entity_chunk", LISTING), {"ids": ids})
        rows = await cursor.fetchall()
    documents: dict[str, Any] = {}
    for row in rows:
        try:
            documents[row["id"]] = document_from_row(LISTING, row)
        except Unindexable:
            documents[row["id"]] = None
    return documents


async def item_errors(db: psycopg.AsyncConnection[Any], ids: list[str]) -> list[tuple[Any, ...]]:
    cursor = await db.execute(
        "SELECT entity_id, status, reason, job_id FROM procqueue.sync_item_errors "
        "WHERE entity_id = ANY(%s) ORDER BY id",
        [ids],
    )
    return await cursor.fetchall()


HOSTILE_VALUES = [
    ("created_at", "infinity"),
    ("created_at", "-infinity"),
    ("created_at", "0044-03-15 BC"),
    ("created_at", "20000-01-01"),
    ("budget", "NaN"),
    ("budget", "Infinity"),
    ("budget", "-Infinity"),
    ("budget", "1e400"),  # a numeric beyond any double
]


@pytest.mark.parametrize(("column", "value"), HOSTILE_VALUES)
async def test_a_value_python_cannot_hold_is_indexed_as_null_by_its_row_job(
    app: ProcqueueApp, db: psycopg.AsyncConnection[Any], column: str, value: str
) -> None:
    [listing_id] = await insert_listings(db, 1, "hostile-row", **{column: value})
    await drain(app, concurrency=4)
    assert await failed_jobs(db, [listing_id]) == []
    document = (await indexed_documents(app, LISTING))[listing_id]
    assert document[column] is None and document["title"] == "row 1"


@pytest.mark.parametrize(
    ("column", "value", "indexed"),
    [
        ("created_at", "0001-01-01 00:00:00+00", "0001-01-01T00:00:00+00:00"),
        ("created_at", "9999-12-31 23:59:59.5+00", "9999-12-31T23:59:59.5+00:00"),
        ("budget", "-1e300", -1e300),
        ("budget", "1e-400", 0.0),  # too small for a double: Elasticsearch would store 0
        ("budget", "123456789012.25", 123456789012.25),
    ],
)
async def test_the_far_values_elasticsearch_takes_are_indexed_as_they_are(
    app: ProcqueueApp, db: psycopg.AsyncConnection[Any], column: str, value: str, indexed: Any
) -> None:
    [listing_id] = await insert_listings(db, 1, "far-row", **{column: value})
    await drain(app, concurrency=4)
    assert (await indexed_documents(app, LISTING))[listing_id][column] == indexed


async def test_hostile_rows_in_a_120_row_update_fail_no_row_of_the_chunk(
    app: ProcqueueApp, db: psycopg.AsyncConnection[Any], database: str
) -> None:
    tag = f"chunk{uuid.uuid4().hex[:6]}"
    ids = await insert_listings(db, 120, tag)
    await drain(app, concurrency=4)
    for (column, value), listing_id in zip(HOSTILE_VALUES, ids, strict=False):
        await db.execute(f"UPDATE listings SET {column} = %s WHERE id = %s", [value, listing_id])
    await db.execute("UPDATE listings SET title = 'after' WHERE category = %s", [tag])  # bulk
    await drain(app, concurrency=4)
    assert await failed_jobs(db, ids) == [] and await item_errors(db, ids) == []
    documents = await indexed_documents(app, LISTING)
    assert all(documents[listing_id]["title"] == "after" for listing_id in ids)
    for (column, _), listing_id in zip(HOSTILE_VALUES, ids, strict=False):
        assert documents[listing_id][column] is None
    assert {i: documents[i] for i in ids} == await expected_documents(database, ids)


async def test_a_document_over_the_limit_fails_its_own_job_with_the_reason(
    app: ProcqueueApp, db: psycopg.AsyncConnection[Any]
) -> None:
    [big, small] = await insert_listings(db, 2, "huge-row")
    await drain(app, concurrency=4)
    await db.execute("UPDATE listings SET description = repeat('x', %s) WHERE id = %s", [HUGE, big])
    await drain(app, concurrency=4)
    [(task, reason)] = await failed_jobs(db, [big])
    assert task == "listing:update"
    assert f"listing {big}: its search document (about {HUGE // 1000}" in reason
    assert f"is over the limit of {DEFAULT_MAX_DOCUMENT_BYTES} bytes (max_document_bytes)" in reason
    documents = await indexed_documents(app, LISTING)
    assert big not in documents and small in documents  # no stale copy stays searchable
    await db.execute("UPDATE listings SET description = 'short again' WHERE id = %s", [big])
    await drain(app, concurrency=4)
    assert (await indexed_documents(app, LISTING))[big]["description"] == "short again"


async def test_a_document_over_the_limit_in_a_bulk_chunk_is_recorded_and_119_are_written(
    app: ProcqueueApp, db: psycopg.AsyncConnection[Any]
) -> None:
    tag = f"hugechunk{uuid.uuid4().hex[:6]}"
    ids = await insert_listings(db, 120, tag)
    await drain(app, concurrency=4)
    await db.execute(
        "UPDATE listings SET description = repeat('y', %s) WHERE id = %s", [HUGE, ids[7]]
    )
    await drain(app, concurrency=4)
    await db.execute("UPDATE listings SET title = 'after' WHERE category = %s", [tag])  # bulk
    await drain(app, concurrency=4)
    documents = await indexed_documents(app, LISTING)
    assert ids[7] not in documents
    assert all(documents[i]["title"] == "after" for i in ids if i != ids[7])
    [(entity_id, status, reason, job_id)] = await item_errors(db, ids)
    assert (entity_id, status, job_id is not None) == (ids[7], 413, True)
    assert "over the limit" in reason
    assert [task for task, _ in await failed_jobs(db, ids)] == ["listing:update"]


AMOUNTS = Entity(
    name="amount", table="public.hostile_amounts", index="hostile_amounts",
    fields={"id": "keyword", "amount": "double"},
)  # fmt: skip


@pytest.fixture(scope="module")
async def amounts(db: psycopg.AsyncConnection[Any]) -> AsyncIterator[list[str]]:
    """A table whose `json` column, a number field, holds one number no numeric can
    hold: reading that row fails in Postgres ('value overflows numeric format')."""
    await db.execute(
        "CREATE TABLE public.hostile_amounts (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), "
        "amount json)"
    )
    cursor = await db.execute(
        "INSERT INTO hostile_amounts (amount) SELECT CASE WHEN g = 60 THEN '1e1000000' "
        "ELSE to_json(g * 1.5) END FROM generate_series(1, 120) AS g RETURNING id::text"
    )
    yield [row[0] for row in await cursor.fetchall()]
    await db.execute("DROP TABLE public.hostile_amounts")


async def test_a_row_whose_read_fails_is_one_failure_and_the_chunk_is_written(
    app: ProcqueueApp, database: str, amounts: list[str]
) -> None:
    search = search_index(app.services)
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        result = await sync_chunk(conn, search, AMOUNTS, amounts)
    assert (result.indexed, result.deleted) == (119, 0)
    [failure] = result.failures
    assert (failure.write.entity_id, failure.status) == (amounts[59], 422)
    assert "value overflows numeric format" in failure.reason
    await search.client.indices.refresh(index=search.alias(AMOUNTS))
    assert (await search.client.count(index=search.alias(AMOUNTS)))["count"] == 119
    unreadable = r"cannot read public\.hostile_amounts row .*overflows"
    with pytest.raises(PermanentError, match=unreadable):
        await sync_entity(app.pool, search, AMOUNTS, amounts[59])


async def test_verify_and_reindex_take_every_hostile_row(
    app: ProcqueueApp, db: psycopg.AsyncConnection[Any], database: str, settings: Settings
) -> None:
    tag = f"verify{uuid.uuid4().hex[:6]}"
    ids = [(await insert_listings(db, 1, tag, **{c: v}))[0] for c, v in HOSTILE_VALUES]
    [huge] = await insert_listings(db, 1, tag, description="z" * HUGE)
    await drain(app, concurrency=4)
    env = {"elasticsearch_url": settings.elasticsearch_url, "index_prefix": settings.index_prefix}

    code, out, err = await run_cli(database, "verify", "listings", **env)
    assert (code, "Traceback" in err) == (0, False), out + err
    assert f"listing\tunindexable\t{huge}" in out and "0 missing, 0 stale, 0 extra" in out

    search = search_index(app.services)
    before = await live_indexes(search, LISTING)
    for _ in range(2):  # and again: nothing about these rows makes a re-run crash
        async with (
            await psycopg.AsyncConnection.connect(database, autocommit=True) as conn,
            await psycopg.AsyncConnection.connect(database) as reader,
        ):
            result = await reindex_entity(conn, reader, search, LISTING, batch_size=7)
        assert result.failed >= 1
    assert await live_indexes(search, LISTING) == [result.index] != before
    targets = await (await db.execute("SELECT count(*) FROM procqueue.search_targets")).fetchone()
    assert targets == (0,)
    errors = await item_errors(db, [huge])
    assert errors[-1][1] == 413 and errors[-1][3] is None  # recorded by the reindex
    documents = await indexed_documents(app, LISTING)
    for (column, _), listing_id in zip(HOSTILE_VALUES, ids, strict=True):
        assert documents[listing_id][column] is None
    expected = await expected_documents(database, [*ids, huge])
    assert {i: documents.get(i) for i in [*ids, huge]} == expected
    code, out, err = await run_cli(database, "verify", "listings", **env)
    assert code == 0, out + err


async def test_a_reindex_that_fails_for_good_leaves_no_index_registered(
    app: ProcqueueApp, db: psycopg.AsyncConnection[Any], database: str
) -> None:
    """A column the table does not have: every chunk fails; the copy is abandoned,
    its index forgotten and deleted, so syncs go on writing one index."""
    broken = dataclasses.replace(LISTING, fields={**LISTING.fields, "colour": "keyword"})
    await insert_listings(db, 3, "broken-reindex")
    await drain(app, concurrency=4)
    search = search_index(app.services)
    before = await live_indexes(search, LISTING)
    pattern = f"{search.alias(LISTING)}_v*"
    made_before = sorted(await search.client.indices.get(index=pattern))
    async with (
        await psycopg.AsyncConnection.connect(database, autocommit=True) as conn,
        await psycopg.AsyncConnection.connect(database) as reader,
    ):
        with pytest.raises(PermanentError, match=r"reindex of public.listings abandoned.*colour"):
            await reindex_entity(conn, reader, search, broken)
    targets = await (await db.execute("SELECT count(*) FROM procqueue.search_targets")).fetchone()
    assert targets == (0,)
    assert await live_indexes(search, LISTING) == before
    assert sorted(await search.client.indices.get(index=pattern)) == made_before


def cloudinary_urls(count: int, tag: str) -> list[str]:
    """`count` delivery URLs of assets in a folder cleanup may delete from."""
    return [
        f"https://res.cloudinary.com/demo/image/upload/listings/{tag}/p{n:05}.jpg"
        for n in range(count)
    ]


async def write_as_api_user(database: str, title: str, **values: Any) -> str:
    """One listing INSERT of its own transaction, as Supabase's `authenticated` role."""
    columns = ", ".join(["user_id", "title", *values])
    placeholders = ", ".join(["%s"] * (2 + len(values)))
    async with await psycopg.AsyncConnection.connect(database) as conn:
        await act_as_api_user(conn, "authenticated", SELLER_ID)
        cursor = await conn.execute(
            f"INSERT INTO listings ({columns}) VALUES ({placeholders}) RETURNING id::text",
            [SELLER_ID, title, *values.values()],
        )
        row = await cursor.fetchone()
        await conn.commit()
    assert row is not None
    return str(row[0])


async def settled_jobs(db: psycopg.AsyncConnection[Any], ids: list[str]) -> list[str]:
    """The statuses of the row jobs of these ids, once none waits or runs (else [])."""
    cursor = await db.execute(
        "SELECT status::text FROM procrastinate.procrastinate_jobs "
        "WHERE task_name LIKE 'listing:%%' AND args ->> 'id' = ANY(%s)",
        [ids],
    )
    statuses = [row[0] for row in await cursor.fetchall()]
    return [] if {"todo", "doing"} & set(statuses) else statuses


async def test_a_row_of_50000_image_urls_or_2_mb_of_text_holds_up_no_other_row(
    app: ProcqueueApp,
    db: psycopg.AsyncConnection[Any],
    database: str,
    es_url: str,
    settings: Settings,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Issue 22: a listing an API user wrote with 50,000 image URLs took 14 s to
    index in the ES-API server (over the 10 s timeout: the circuit opened, and every
    other row waited). Bounded before it is sent, it is indexed with its first
    `max_array_length` URLs (the default); with `max_document_bytes = 1_000_000` in
    the entities file, a 2 MB description fails its own row with the reason; the
    rows written at the same time are visible within a few seconds; no circuit opens."""
    example = (REPO_DIR / "examples" / "entities.toml").read_text(encoding="utf-8")
    entities_file = tmp_path / "entities.toml"
    entities_file.write_text(
        example.replace('name = "listing"\n', 'name = "listing"\nmax_document_bytes = 1_000_000\n'),
        encoding="utf-8",
    )
    caplog.set_level(logging.WARNING, logger="procqueue.search.document")
    urls = cloudinary_urls(50_000, uuid.uuid4().hex[:8])
    # The module's indexes: a later test compares them with the whole table.
    own = make_settings(
        database, es_url, entities_file=entities_file, index_prefix=settings.index_prefix
    )
    async with app_with(own) as bounded, running_worker(bounded):
        listing = bounded.services.entities.get("listing")
        assert (listing.max_document_bytes, listing.max_array_length) == (1_000_000, 1000)
        many = await write_as_api_user(
            database, "many images", main_image_url=urls[0], additional_image_urls=urls
        )
        long = await write_as_api_user(database, "long text", description="d" * 2_000_000)
        started = time.monotonic()
        neighbours = [await write_as_api_user(database, f"neighbour {n}") for n in range(20)]

        async def neighbours_indexed() -> bool:
            documents = await indexed_documents(bounded, LISTING)
            return all(listing_id in documents for listing_id in neighbours)

        await eventually(neighbours_indexed, timeout=5)
        visible_after = time.monotonic() - started

        async def hostile_settled() -> bool:
            return bool(await settled_jobs(db, [many, long]))

        await eventually(hostile_settled, timeout=10)
        documents = await indexed_documents(bounded, LISTING)
    assert visible_after < 5
    assert await sink_circuit(database, "elasticsearch") is None  # it never opened

    assert documents[many]["additional_image_urls"] == urls[:1000]
    assert documents[many]["main_image_url"] == urls[0]
    trimmed = [r.getMessage() for r in caplog.records if many in r.getMessage()]
    assert any(
        "additional_image_urls holds 50000 elements: the first 1000 are indexed "
        "(max_array_length" in line
        for line in trimmed
    ), trimmed
    assert await failed_jobs(db, [many]) == []

    assert long not in documents
    [(task, reason)] = await failed_jobs(db, [long])
    assert task == "listing:update"  # its change, handed by the drain to a row job
    assert f"listing {long}: its search document (about 2000" in reason
    assert "over the limit of 1000000 bytes (max_document_bytes)" in reason
    # Its rows leave with it: under the module's own bounds the long one has a document.
    await db.execute("DELETE FROM listings WHERE id = ANY(%s)", [[many, long, *neighbours]])
    await drain(app)


ARRAYS = Entity(
    name="arrays", table="public.hostile_arrays", index="hostile_arrays",
    fields={"id": "keyword", "tags": "keyword", "scores": "double", "seen": "date",
            "grid": "integer", "doc": "keyword", "raw": "long"},
    max_array_length=3,
)  # fmt: skip


async def test_every_kind_of_array_is_cut_to_max_array_length_in_sql(
    app: ProcqueueApp,
    db: psycopg.AsyncConnection[Any],
    database: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Postgres arrays of any type and dimension, odd bounds, json and jsonb arrays:
    each keeps its first `max_array_length` elements (of a number or date array,
    each element still by its type's rule), through a bulk chunk's read and write."""
    caplog.set_level(logging.WARNING, logger="procqueue.search.document")
    await db.execute(
        "CREATE TABLE public.hostile_arrays (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), "
        "tags text[], scores float8[], seen timestamptz[], grid int[], doc jsonb, raw json)"
    )
    cursor = await db.execute(
        "INSERT INTO hostile_arrays (tags, scores, seen, grid, doc, raw) VALUES "
        "('{a,b,c,d,e}', '{1.5,NaN,Infinity,4,5}', "
        " '{2024-01-01 00:00+00,infinity,2024-01-03 00:00+00,2024-01-04 00:00+00}', "
        ' \'{{1,2},{3,4},{5,6}}\', \'["a", "b", "c", "d"]\', \'[1, 2, 3, 4]\'), '
        "('[0:2]={p,q,r}', '{}', NULL, '{7}', '\"solo\"', '[]') RETURNING id::text"
    )
    [cut, kept] = [row[0] for row in await cursor.fetchall()]
    search = search_index(app.services)
    try:
        async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
            result = await sync_chunk(conn, search, ARRAYS, [cut, kept])
        assert (result.indexed, result.failures) == (2, [])
        documents = await indexed_documents(app, ARRAYS)
    finally:
        await db.execute("DROP TABLE public.hostile_arrays")
    first = documents[cut]
    assert (first["tags"], first["scores"], first["doc"], first["raw"], first["grid"]) == (
        ["a", "b", "c"], [1.5, None, None], ["a", "b", "c"], [1, 2, 3], [[1, 2]]
    )  # fmt: skip
    assert [value is None for value in first["seen"]] == [False, True, False]
    assert {key: documents[kept][key] for key in ("tags", "scores", "seen", "grid", "doc")} == {
        "tags": ["p", "q", "r"], "scores": [], "seen": None, "grid": [7], "doc": "solo"
    }  # fmt: skip
    lines = [r.getMessage() for r in caplog.records if cut in r.getMessage()]
    for column, elements in [("tags", 5), ("scores", 5), ("seen", 4), ("grid", 6),
                             ("doc", 4), ("raw", 4)]:  # fmt: skip
        assert any(f"{column} holds {elements} elements: the first 3" in line for line in lines)
    assert not any(kept in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("max_array_length = 20\nmax_document_bytes = 50_000", (20, 50_000)),
        ("", (1000, 4 * 1024 * 1024)),
        ("max_array_length = 0", "max_array_length must be between 1 and 1000000"),
        ('max_array_length = "many"', "max_array_length must be a whole number of elements"),
        (
            "max_array_lenght = 5",
            "unknown key 'max_array_lenght': did you mean 'max_array_length'?",
        ),
    ],
)
def test_the_bounds_are_set_per_entity_in_the_entities_file(
    tmp_path: Path, line: str, expected: tuple[int, int] | str
) -> None:
    config = tmp_path / "entities.toml"
    config.write_text(
        f'[[entity]]\nname = "listing"\ntable = "public.listings"\nindex = "listings"\n{line}\n'
        '[entity.fields]\nid = "keyword"\n',
        encoding="utf-8",
    )
    if isinstance(expected, str):
        with pytest.raises(ConfigError, match=re.escape(expected)):
            load_entities(config)
    else:
        [entity] = load_entities(config)
        assert (entity.max_array_length, entity.max_document_bytes) == expected


RAW = Entity(
    name="raw", table="public.hostile_raw", index="hostile_raw",
    fields={"id": "keyword", "raw": "keyword"},
)  # fmt: skip


async def test_a_document_goes_out_as_postgres_wrote_it_unless_python_must_read_it(
    app: ProcqueueApp, db: psycopg.AsyncConnection[Any], database: str
) -> None:
    """A plain row's document is sent as the text Postgres made (no parse and no dump
    per row); a `json` column's own line breaks, numbers too large for a double or
    that Python writes otherwise, and surrogate escapes are read by Python first:
    every document indexed is document_from_row's."""
    await db.execute(
        "CREATE TABLE public.hostile_raw (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), raw json)"
    )
    cursor = await db.execute(
        "INSERT INTO hostile_raw (raw) VALUES ('\"plain\"'), (E'[\\n  \"a\",\\n  \"b\"\\n]'), "
        "('[1e400, 2]'), (('[1' || repeat('0', 250) || 'e60, 2]')::json), "
        "('[12.50, 0.1000000000000000055]'), ('[\"\\ud800\"]') RETURNING id::text"
    )
    ids = [row[0] for row in await cursor.fetchall()]
    search = search_index(app.services)
    try:
        reading = await db.cursor(row_factory=dict_row).execute(
            entity_query("read_entity_chunk", RAW), {"ids": ids}
        )
        rows = {row["id"]: row for row in await reading.fetchall()}
        async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
            result = await sync_chunk(conn, search, RAW, ids)
        assert (result.indexed, result.failures) == (6, [])
        documents = await indexed_documents(app, RAW)
    finally:
        await db.execute("DROP TABLE public.hostile_raw")
    plain, *read_first = ids
    assert document_json(RAW, rows[plain]) is rows[plain][DOCUMENT_COLUMN]
    for entity_id in read_first:
        assert document_json(RAW, rows[entity_id]) != rows[entity_id][DOCUMENT_COLUMN]
    lone_surrogate = read_first[4]  # indexed, as before; as what the server makes of it
    assert documents.pop(lone_surrogate)["id"] == lone_surrogate
    assert documents == {
        entity_id: document_from_row(RAW, row)
        for entity_id, row in rows.items() if entity_id != lone_surrogate
    }  # fmt: skip
    assert documents[read_first[1]]["raw"] == ["1e400", 2]
    assert documents[read_first[2]]["raw"] == ["1" + "0" * 250 + "e60", 2]
    assert documents[read_first[3]]["raw"] == [12.5, 0.1]
