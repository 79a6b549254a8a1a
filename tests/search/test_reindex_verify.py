"""`procqueue reindex` (no downtime, changes during the copy kept, resumable) and
`procqueue verify` (missing, stale, extra; --repair) against real servers."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

from procqueue.engine.app import ProcqueueApp
from procqueue.entities import INVENTORY, LISTING, Entity
from procqueue.errors import PermanentError
from procqueue.features import Settings
from procqueue.search.client import SearchIndex, make_client, search_index
from procqueue.search.reindex import live_indexes, reindex_entity
from procqueue.search.settings import SearchConfig
from procqueue.search.verify import Drift, verify_entity
from tests.support.bulk_rejecting_proxy import bulk_rejecting_proxy
from tests.support.worker import drain, indexed_documents, running_worker, table_documents

USER_ID = "00000000-0000-4000-8000-0000000000b2"


async def reindex(database: str, search: SearchIndex, entity: Entity, **options: Any) -> Any:
    """`reindex_entity` with its two connections, as `procqueue reindex` opens them."""
    async with (
        await psycopg.AsyncConnection.connect(database, autocommit=True) as conn,
        await psycopg.AsyncConnection.connect(database) as reader,
    ):
        return await reindex_entity(conn, reader, search, entity, **options)


async def verify(database: str, search: SearchIndex, entity: Entity) -> Drift:
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        return await verify_entity(conn, search, entity)


@pytest.fixture(scope="module")
async def db(database: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        await conn.execute("INSERT INTO auth.users (id) VALUES (%s)", [USER_ID])
        yield conn


async def insert_listings(db: psycopg.AsyncConnection[Any], count: int, tag: str) -> None:
    await db.execute(
        "INSERT INTO listings (user_id, title, category) "
        "SELECT %s, 'r ' || g, %s FROM generate_series(1, %s) AS g",
        [USER_ID, tag, count],
    )


async def writer(dsn: str, stop: asyncio.Event, seed: int) -> int:
    rng = random.Random(seed)
    writes = 0
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        while not stop.is_set():
            choice = rng.random()
            if choice < 0.5:
                await conn.execute(
                    "UPDATE listings SET title = %s WHERE id = "
                    "(SELECT id FROM listings ORDER BY random() LIMIT 1)",
                    [f"during {seed}-{writes}"],
                )
            elif choice < 0.75:
                await conn.execute(
                    "DELETE FROM listings WHERE id = "
                    "(SELECT id FROM listings ORDER BY random() LIMIT 1)"
                )
            else:
                await conn.execute(
                    "INSERT INTO listings (user_id, title) VALUES (%s, 'born during')", [USER_ID]
                )
            writes += 1
            await asyncio.sleep(rng.random() * 0.005)
    return writes


async def test_reindex_while_writers_run_ends_with_the_new_index_equal_to_the_table(
    app: ProcqueueApp, database: str, db: psycopg.AsyncConnection[Any]
) -> None:
    await insert_listings(db, 3000, "before")
    await drain(app, concurrency=10)
    search = search_index(app.services)
    old = await live_indexes(search, LISTING)
    stop = asyncio.Event()
    async with running_worker(app, concurrency=10):
        writers = [asyncio.create_task(writer(database, stop, seed)) for seed in range(3)]
        result = await reindex(database, search, LISTING, batch_size=200)
        stop.set()
        assert sum(await asyncio.gather(*writers)) > 0
    await drain(app, concurrency=10)
    assert await live_indexes(search, LISTING) == [result.index] != old
    assert result.previous == tuple(old)
    assert await indexed_documents(app, LISTING) == await table_documents(database, LISTING)


async def test_interrupted_reindex_resumes_and_completes(
    app: ProcqueueApp, database: str, db: psycopg.AsyncConnection[Any]
) -> None:
    search = search_index(app.services)
    chunks = 0
    interrupted = asyncio.Event()

    def on_chunk(rows: int) -> None:
        nonlocal chunks
        chunks += 1
        if chunks == 3:
            interrupted.set()

    await search.ensure_index(INVENTORY)  # an alias in use: the copy goes to a new index
    await db.execute(
        "INSERT INTO inventory_items (user_id, name) "
        "SELECT %s, 'item ' || g FROM generate_series(1, 1500) AS g",
        [USER_ID],
    )
    task = asyncio.create_task(
        reindex(database, search, INVENTORY, batch_size=100, on_chunk=on_chunk)
    )
    await asyncio.wait_for(interrupted.wait(), timeout=30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    [(target, copied)] = await (
        await db.execute(
            "SELECT index_name, copied FROM procqueue.search_targets WHERE entity = 'inventory'"
        )
    ).fetchall()
    assert copied >= 300

    resumed_from: list[int] = []
    result = await reindex(
        database, search, INVENTORY, batch_size=100, drop_old=True,
        on_start=lambda total, done: resumed_from.append(done),
    )  # fmt: skip
    assert result.index == target and resumed_from == [copied]
    assert result.dropped and await live_indexes(search, INVENTORY) == [target]
    await drain(app, concurrency=10)
    assert await indexed_documents(app, INVENTORY) == await table_documents(database, INVENTORY)
    rows = await (await db.execute("SELECT count(*) FROM procqueue.search_targets")).fetchone()
    assert rows == (0,)


LATE = Entity(
    name="late", table="public.late_rows_view", index="late_rows",
    fields={"id": "keyword", "title": "keyword"},
)  # fmt: skip


async def test_a_chunk_that_cannot_be_read_while_the_one_before_is_written_abandons_the_copy(
    app: ProcqueueApp, db: psycopg.AsyncConnection[Any], database: str, es_url: str
) -> None:
    """The copy reads each chunk while the chunk before is written: a read that
    fails for good there abandons the copy only once that write was answered. A
    `_bulk` sent is applied whether or not anyone waits for it, so letting go of the
    publish key earlier would let a sync's delete come before it (here the server
    takes half a second over the first chunk: the copy still waits for it, and its
    100 documents are whole in the index the first copy fills)."""
    await db.execute(
        "CREATE FUNCTION public.late_title(key text, title text) RETURNS text STABLE "
        "LANGUAGE plpgsql AS $$ BEGIN IF key > 'r100' THEN RAISE EXCEPTION 'late rows are "
        "unreadable' USING ERRCODE = 'undefined_column'; END IF; RETURN title; END $$; "
        "CREATE TABLE public.late_rows (id text PRIMARY KEY, title text); "
        "INSERT INTO public.late_rows SELECT 'r' || lpad(g::text, 3, '0'), 'row ' || g "
        "FROM generate_series(1, 300) AS g; "
        "CREATE VIEW public.late_rows_view AS "
        "SELECT id, public.late_title(id, title) AS title FROM public.late_rows"
    )
    prefix = search_index(app.services).prefix
    async with bulk_rejecting_proxy(es_url) as proxy:
        search = SearchIndex(make_client(SearchConfig(url=proxy.url)), prefix)
        proxy.slow_down(b'"r001"', 0.5)
        try:
            with pytest.raises(PermanentError, match=r"late_rows_view abandoned: .*late rows"):
                await reindex(database, search, LATE, batch_size=100)  # fills _v1 in place
            writing = [t for t in asyncio.all_tasks() if "write_all" in repr(t.get_coro())]
            assert writing == [] and proxy.forwarded_bulks == 1
            documents = await indexed_documents(app, LATE)
            assert sorted(documents) == [f"r{n:03}" for n in range(1, 101)]
            targets = await db.execute("SELECT count(*) FROM procqueue.search_targets")
            assert await targets.fetchone() == (0,)
        finally:
            await search.aclose()
            await db.execute(
                "DROP VIEW public.late_rows_view; DROP TABLE public.late_rows; "
                "DROP FUNCTION public.late_title"
            )


NUMBERED = Entity(
    name="numbered", table="public.numbered_rows", index="numbered_rows",
    fields={"id": "long", "title": "keyword"},
)  # fmt: skip


@pytest.fixture
async def numbered_rows(db: psycopg.AsyncConnection[Any]) -> AsyncIterator[None]:
    """NUMBERED's table: 300 rows keyed 1 to 300 (integers), dropped afterwards."""
    await db.execute(
        "CREATE TABLE public.numbered_rows (id integer PRIMARY KEY, title text); "
        "INSERT INTO public.numbered_rows SELECT g, 'row ' || g FROM generate_series(1, 300) AS g"
    )
    yield
    await db.execute("DROP TABLE public.numbered_rows")


@pytest.mark.usefixtures("numbered_rows")
async def test_an_interrupted_reindex_of_an_integer_key_resumes_in_integer_order(
    app: ProcqueueApp, db: psycopg.AsyncConnection[Any], database: str
) -> None:
    """The copy walks the key in its own order, not its text's ('1', '10', '100', '2'
    ...), so resuming after the last copied key leaves no row out."""
    search = search_index(app.services)
    interrupted = asyncio.Event()
    task = asyncio.create_task(
        reindex(database, search, NUMBERED, batch_size=10,
                on_chunk=lambda rows: interrupted.set())
    )  # fmt: skip
    await asyncio.wait_for(interrupted.wait(), timeout=30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    copied = await db.execute("SELECT copied FROM procqueue.search_targets")
    assert 10 <= (await copied.fetchone() or (0,))[0] < 300
    await reindex(database, search, NUMBERED, batch_size=10)
    assert await indexed_documents(app, NUMBERED) == await table_documents(database, NUMBERED)


@pytest.mark.usefixtures("numbered_rows")
async def test_a_reindex_under_backpressure_sends_the_refused_documents_again_and_completes(
    app: ProcqueueApp, database: str, es_url: str
) -> None:
    """Documents refused with 429 wait out the index's pause and go again (no more
    chunks are read under the publish key while the index is paused); once the
    pressure ends the copy completes with every row."""
    prefix = search_index(app.services).prefix
    async with bulk_rejecting_proxy(es_url) as proxy:
        search = SearchIndex(make_client(SearchConfig(url=proxy.url)), prefix)
        try:
            proxy.reject()
            copy = asyncio.create_task(reindex(database, search, NUMBERED, batch_size=50))
            await asyncio.wait_for(proxy.until_rejected(3), timeout=30)
            proxy.stop_rejecting()
            result = await asyncio.wait_for(copy, timeout=60)
            assert (result.copied, result.failed) == (300, 0)
            indexed = await indexed_documents(app, NUMBERED)
            assert indexed == await table_documents(database, NUMBERED)
        finally:
            await search.aclose()


def cli(
    settings: Settings, *args: str, prefix: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "DATABASE_URL": settings.dsn,
        "ELASTICSEARCH_URL": settings.elasticsearch_url,
        "PROCQUEUE_INDEX_PREFIX": settings.index_prefix if prefix is None else prefix,
    }
    return subprocess.run(
        [sys.executable, "-m", "procqueue.cli", *args],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


async def test_verify_finds_missing_stale_and_extra_and_repair_fixes_them(
    app: ProcqueueApp, settings: Settings, database: str, db: psycopg.AsyncConnection[Any]
) -> None:
    await insert_listings(db, 120, "verify")
    await drain(app, concurrency=10)
    assert not (await verify(database, search_index(app.services), LISTING)).drifted

    ids = [
        str(row[0])
        for row in await (
            await db.execute(
                "SELECT id FROM listings WHERE category = 'verify' ORDER BY id LIMIT 2"
            )
        ).fetchall()
    ]
    search = search_index(app.services)
    client, alias = search.client, search.alias(LISTING)
    extra = str(uuid.uuid4())
    await client.delete(index=alias, id=ids[0])  # deleted behind its back
    await client.update(index=alias, id=ids[1], doc={"title": "changed behind its back"})
    await client.index(index=alias, id=extra, document={"id": extra, "title": "no such row"})

    checked = cli(settings, "verify", "listings")
    assert checked.returncode == 1, checked.stderr
    assert f"listing\tmissing\t{ids[0]}" in checked.stdout
    assert f"listing\tstale\t{ids[1]}" in checked.stdout
    assert f"listing\textra\t{extra}" in checked.stdout
    assert "1 missing, 1 stale, 1 extra" in checked.stdout

    repaired = cli(settings, "verify", "listings", "--repair")
    assert "enqueued 3 sync job(s) for 3 ids" in repaired.stdout, repaired.stderr
    await drain(app, concurrency=10)
    again = cli(settings, "verify", "listings")
    assert again.returncode == 0, again.stdout + again.stderr
    assert await indexed_documents(app, LISTING) == await table_documents(database, LISTING)


async def test_verify_creates_no_index_and_reports_a_missing_one_as_every_row_missing(
    app: ProcqueueApp, settings: Settings, db: psycopg.AsyncConnection[Any]
) -> None:
    """`verify` only reads: with a prefix nothing was ever synced under, it creates no
    index and no alias, says to reindex, and exits 1 (drift)."""
    await insert_listings(db, 2, "no-index")
    rows = await (await db.execute("SELECT count(*) FROM listings")).fetchone()
    assert rows is not None
    prefix = f"zz{uuid.uuid4().hex[:6]}_"
    checked = cli(settings, "verify", "listings", prefix=prefix)
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert f"{rows[0]} missing, 0 stale, 0 extra" in checked.stdout
    assert (
        f"public.listings: the alias {prefix}listings does not exist, so every row is missing: "
        "run `procqueue reindex listings` to build it"
    ) in checked.stdout
    client = search_index(app.services).client
    assert not await client.indices.exists(index=f"{prefix}listings_v1")
    assert not await client.indices.exists_alias(name=f"{prefix}listings")


async def versioned(search: SearchIndex, entity: Entity) -> list[str]:
    """Every `<alias>_v<N>` index of the entity, behind the alias or not."""
    found = await search.client.indices.get(index=f"{search.alias(entity)}_v*")
    return sorted(found.keys())


async def test_reindex_on_an_empty_cluster_leaves_one_index_behind_the_alias(
    app: ProcqueueApp, database: str, db: psycopg.AsyncConnection[Any]
) -> None:
    """No alias yet (a new cluster, or a table that had rows before `migrate`): the
    copy fills `_v1` itself; no empty index is left beside it."""
    await insert_listings(db, 30, "empty-cluster")
    search = SearchIndex(search_index(app.services).client, f"e{uuid.uuid4().hex[:8]}_")
    result = await reindex(database, search, LISTING, batch_size=7)
    alias = search.alias(LISTING)
    assert result.index == f"{alias}_v1" and result.previous == ()
    assert await versioned(search, LISTING) == [result.index]
    assert await live_indexes(search, LISTING) == [result.index]
    await search.client.indices.refresh(index=alias)
    rows = await (await db.execute("SELECT count(*) FROM listings")).fetchone()
    assert rows is not None and (await search.client.count(index=alias))["count"] == rows[0]
    targets = await (await db.execute("SELECT count(*) FROM procqueue.search_targets")).fetchone()
    assert targets == (0,)


async def test_drop_old_drops_every_older_index_not_behind_the_alias(
    app: ProcqueueApp, database: str, db: psycopg.AsyncConnection[Any]
) -> None:
    await insert_listings(db, 5, "drop-old")
    search = SearchIndex(search_index(app.services).client, f"d{uuid.uuid4().hex[:8]}_")
    alias = search.alias(LISTING)
    await reindex(database, search, LISTING)
    await reindex(database, search, LISTING)  # v2; v1 is kept without --drop-old
    assert await versioned(search, LISTING) == [f"{alias}_v1", f"{alias}_v2"]
    result = await reindex(database, search, LISTING, drop_old=True)
    assert result.index == f"{alias}_v3" and result.dropped
    assert result.deleted == (f"{alias}_v1", f"{alias}_v2")
    assert await versioned(search, LISTING) == [f"{alias}_v3"]
    assert await live_indexes(search, LISTING) == [f"{alias}_v3"]


@pytest.mark.parametrize("raised_by", [3, 50_000_000])
async def test_repair_replaces_a_document_whose_version_was_raised_outside_procqueue(
    app: ProcqueueApp, settings: Settings, database: str, db: psycopg.AsyncConnection[Any],
    raised_by: int,
) -> None:
    """A document changed by hand (an `_update` adds one to its version; an external
    write can set any) holds a version procqueue's next stamps may not pass: a write at
    a lower one reads as "newer already there" (409), and the repair changed nothing
    (a flaky CI run). The repair stamps its writes above the highest stale version:
    a small gap stamp by stamp, a large one in one jump."""
    await insert_listings(db, 3, "raised")
    await drain(app, concurrency=2)
    (entity_id,) = await (
        await db.execute("SELECT id::text FROM listings WHERE category = 'raised' LIMIT 1")
    ).fetchone() or ("",)
    search = search_index(app.services)
    alias = search.alias(LISTING)
    current = (await search.client.get(index=alias, id=entity_id))["_version"]
    await search.client.index(
        index=alias, id=entity_id, document={"id": entity_id, "title": "edited by hand"},
        version=current + raised_by, version_type="external",
    )  # fmt: skip

    drift = await verify(database, search, LISTING)
    assert drift.stale == [entity_id] and drift.stale_version == current + raised_by
    repaired = cli(settings, "verify", "listings", "--repair")
    assert "enqueued 1 sync job(s) for 1 ids" in repaired.stdout, repaired.stderr
    await drain(app, concurrency=2)
    assert not (await verify(database, search, LISTING)).drifted
    assert (await search.client.get(index=alias, id=entity_id))["_version"] > current + raised_by
