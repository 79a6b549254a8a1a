"""`procqueue why <entity> <id>` (issue 24): the story of one row and its verdict, one
test per verdict, each driven through real writes, a real worker and the real ES-API
server; the command runs as a process, as support would run it."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

from procqueue.engine.app import ProcqueueApp
from procqueue.entities import DEFAULT_MAX_DOCUMENT_BYTES, LISTING
from procqueue.features import Settings
from procqueue.search.client import search_index
from tests.conftest import make_settings
from tests.search.test_rls_mid_run import hidden_from_the_worker, worker_role
from tests.support.history import run_cli
from tests.support.supabase import as_role
from tests.support.worker import (
    QUIET,
    SELLER_ID,
    app_with,
    drain,
    eventually,
    job_status,
    running_worker,
)

__all__ = ["worker_role"]  # a fixture of this module too: the role RLS hides a row from

IMAGE = "https://res.cloudinary.com/demo/image/upload/v1/listings/{}.jpg"
#: A description that takes a listing over the default max_document_bytes.
HUGE = DEFAULT_MAX_DOCUMENT_BYTES + 1024


async def why(settings: Settings, entity_id: str, *options: str) -> tuple[int, Any, str]:
    """`procqueue why listing <id> --json` as a process: (exit status, story, stderr)."""
    code, out, err = await run_cli(
        settings.dsn, "why", "listing", entity_id, "--json", *options,
        elasticsearch_url=settings.elasticsearch_url, index_prefix=settings.index_prefix,
    )  # fmt: skip
    return code, json.loads(out) if out.strip() else None, err


async def why_text(settings: Settings, entity_id: str) -> tuple[int, str]:
    """`procqueue why listing <id>` as a process, its text: (exit status, stdout)."""
    code, out, _ = await run_cli(
        settings.dsn, "why", "listing", entity_id,
        elasticsearch_url=settings.elasticsearch_url, index_prefix=settings.index_prefix,
    )  # fmt: skip
    return code, out


async def fix(settings: Settings, story: dict[str, Any]) -> tuple[int, str, str]:
    """Run the verdict's fix, as written (`procqueue …`)."""
    command = story["verdict"]["fix"].split()
    assert command[0] == "procqueue", command
    return await run_cli(
        settings.dsn, *command[1:],
        elasticsearch_url=settings.elasticsearch_url, index_prefix=settings.index_prefix,
    )  # fmt: skip


async def insert_listing(db: psycopg.AsyncConnection[Any], title: str, **columns: Any) -> str:
    listing_id = str(uuid.uuid4())
    names = ["id", "user_id", "title", *columns]
    await db.execute(
        f"INSERT INTO listings ({', '.join(names)}) VALUES ({', '.join(['%s'] * len(names))})",
        [listing_id, SELLER_ID, title, *columns.values()],
    )
    return listing_id


async def test_in_sync_exits_0_and_says_nothing_to_do(
    app: ProcqueueApp, settings: Settings, db: psycopg.AsyncConnection[Any]
) -> None:
    listing_id = await insert_listing(db, "in sync")
    await drain(app)
    code, story, err = await why(settings, listing_id)
    assert code == 0, err
    assert story["row"]["state"] == "present" and story["change"] is None
    assert story["document"]["present"] and story["document"]["differs"] == []
    assert story["document"]["version"] >= 10**9  # an external version (docs/bulk.md)
    assert story["verdict"]["kind"] == "in_sync" and story["verdict"]["fix"] is None
    code, text = await why_text(settings, listing_id)
    assert code == 0
    assert f"listing {listing_id}" in text and "in sync, nothing to do" in text


async def test_missing_with_a_waiting_change_is_queued(
    app: ProcqueueApp, settings: Settings, db: psycopg.AsyncConnection[Any]
) -> None:
    await drain(app)
    listing_id = await insert_listing(db, "not synced yet")
    code, story, err = await why(settings, listing_id)
    assert code == 1, err
    assert not story["document"]["present"]
    assert story["change"]["changes"] == 1 and not story["change"]["claim_live"]
    drains = [job for job in story["jobs"] if job["kind"] == "drain"]
    assert [job["status"] for job in drains] == ["todo"]
    assert story["verdict"]["kind"] == "queued" and story["verdict"]["fix"] is None
    assert f"listing:drain job {drains[0]['id']}" in story["verdict"]["summary"]
    await drain(app)
    assert (await why(settings, listing_id))[0] == 0


async def test_missing_with_no_work_waiting_is_repaired_by_verify_repair_of_its_id(
    app: ProcqueueApp, settings: Settings, db: psycopg.AsyncConnection[Any]
) -> None:
    listing_id = await insert_listing(db, "lost by the index")
    await drain(app)
    search = search_index(app.services)
    await search.client.delete(index=search.alias(LISTING), id=listing_id)  # behind its back
    code, story, _ = await why(settings, listing_id)
    assert code == 1 and not story["document"]["present"]
    assert story["verdict"]["kind"] == "drift"
    assert story["verdict"]["fix"] == f"procqueue verify --repair listing {listing_id}"
    code, out, err = await fix(settings, story)
    assert code == 1, err  # it found drift, and repaired it
    assert f"listing\tmissing\t{listing_id}" in out
    assert "enqueued 1 sync job(s) for 1 ids" in out
    await drain(app)
    assert (await why(settings, listing_id))[0] == 0


async def test_a_stale_document_shows_the_fields_that_differ_and_its_older_version(
    app: ProcqueueApp, settings: Settings, db: psycopg.AsyncConnection[Any]
) -> None:
    listing_id = await insert_listing(db, "stale", category="books")
    await drain(app)
    indexed = (await why(settings, listing_id))[1]["document"]
    first = indexed["version"]
    search = search_index(app.services)
    await search.client.index(  # behind its back, its version kept: no change, no job
        index=search.alias(LISTING),
        id=listing_id,
        version=first,
        version_type="external_gte",
        document={**indexed["source"], "category": "changed behind its back"},
    )
    code, story, _ = await why(settings, listing_id)
    assert code == 1
    assert story["document"]["differs"] == [
        {"field": "category", "indexed": "changed behind its back", "current": "books"}
    ]
    assert story["verdict"]["kind"] == "drift" and "category differ" in story["verdict"]["summary"]

    await db.execute("UPDATE listings SET title = 'newer' WHERE id = %s", [listing_id])
    code, story, _ = await why(settings, listing_id)
    assert code == 1 and story["verdict"]["kind"] == "queued"
    assert {d["field"] for d in story["document"]["differs"]} == {"category", "title"}
    await drain(app)
    code, story, err = await why(settings, listing_id)
    assert code == 0, story or err
    assert story["document"]["version"] > first


async def test_deleted_row_whose_document_remains_with_its_images_waiting(
    app: ProcqueueApp, settings: Settings, db: psycopg.AsyncConnection[Any], database: str
) -> None:
    image = IMAGE.format(uuid.uuid4().hex)
    listing_id = await insert_listing(db, "deleted", main_image_url=image)
    await drain(app)
    await db.execute("DELETE FROM listings WHERE id = %s", [listing_id])
    # Its change and drain job gone (an admin's cancel): the document stays.
    await db.execute("DELETE FROM procqueue.sync_changes WHERE entity_id = %s", [listing_id])
    await db.execute(
        "DELETE FROM procrastinate.procrastinate_jobs WHERE task_name = 'listing:drain'"
    )
    code, story, _ = await why(settings, listing_id)
    assert code == 1
    assert story["row"]["state"] == "deleted" and story["document"]["present"]
    assert [image] in [cleanup["urls"] for cleanup in story["images"]]
    assert story["verdict"]["kind"] == "drift" and "row is deleted" in story["verdict"]["summary"]
    code, out, err = await fix(settings, story)
    assert f"listing\textra\t{listing_id}" in out, err
    await drain(app, queues=["sync"])
    code, story, _ = await why(settings, listing_id)
    assert code == 0 and story["verdict"]["kind"] == "in_sync"
    assert story["row"]["state"] == "deleted" and not story["document"]["present"]


async def test_a_row_over_max_document_bytes_is_unindexable_before_and_after_its_sync(
    app: ProcqueueApp, settings: Settings, db: psycopg.AsyncConnection[Any]
) -> None:
    listing_id = await insert_listing(db, "grows too large")
    await drain(app)
    await db.execute(
        "UPDATE listings SET description = repeat('x', %s) WHERE id = %s", [HUGE, listing_id]
    )
    limit = f"is over the limit of {DEFAULT_MAX_DOCUMENT_BYTES} bytes (max_document_bytes)"
    code, story, err = await why(settings, listing_id)
    assert code == 1, err
    assert story["document"]["present"]  # its older copy, until its sync deletes it
    assert limit in story["row"]["unindexable"] and story["change"] is not None
    assert story["verdict"]["kind"] == "unindexable" and story["verdict"]["fix"] is None
    await drain(app)  # its sync deletes the stale copy and fails with the reason
    code, story, err = await why(settings, listing_id)
    code_text, text = await why_text(settings, listing_id)
    assert code == code_text == 1, err
    assert not story["document"]["present"]
    assert [job["status"] for job in story["jobs"] if job["task_name"] == "listing:update"] == [
        "failed"
    ]  # a retry would fail again: the verdict is the row's size, not `procqueue retry`
    verdict = story["verdict"]
    assert verdict["kind"] == "unindexable" and verdict["fix"] is None
    assert verdict["summary"].startswith(f"listing {listing_id} can have no document: ")
    assert limit in verdict["summary"] and "shorten the row" in verdict["summary"]
    assert "row:       present (no document possible: " in text and "fix:" not in text
    await db.execute("UPDATE listings SET description = 'short again' WHERE id = %s", [listing_id])
    await drain(app)
    assert (await why(settings, listing_id))[0] == 0


@pytest.fixture
async def own_db(fresh_database: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """A database of this test's own (its circuit state or its index stays its own)."""
    async with await psycopg.AsyncConnection.connect(fresh_database, autocommit=True) as conn:
        await conn.execute("INSERT INTO auth.users (id) VALUES (%s)", [SELLER_ID])
        yield conn


async def test_a_failed_job_shows_its_error_and_the_retry_that_fixes_it(
    fresh_database: str, es_url: str, own_db: psycopg.AsyncConnection[Any]
) -> None:
    settings = make_settings(fresh_database, es_url)
    async with app_with(settings) as app:
        # The index behind the alias has no `location`: it refuses such a listing.
        search = search_index(app.services)
        mappings = LISTING.mappings()
        del mappings["properties"]["location"]
        await search.client.indices.create(
            index=search.versioned_name(LISTING, 1), mappings=mappings,
            aliases={search.alias(LISTING): {}},
        )  # fmt: skip
        listing_id = await insert_listing(own_db, "refused", location="Lisbon")
        await drain(app)
    code, story, _ = await why(settings, listing_id)
    assert code == 1 and not story["document"]["present"]
    verdict = story["verdict"]
    failed = [job for job in story["jobs"] if job["status"] == "failed"]
    assert verdict["kind"] == "failed" and verdict["fix"] == f"procqueue retry {failed[0]['id']}"
    assert story["attempts"][0]["job_id"] == failed[0]["id"]
    assert "location" in story["attempts"][0]["message"]
    assert "location" in verdict["summary"]
    code, text = await why_text(settings, listing_id)
    assert code == 1 and "failed attempts:" in text
    assert f"fix:       procqueue retry {failed[0]['id']}" in text
    code, out, err = await fix(settings, story)
    assert code == 0 and "retried 1 job(s)" in out, err
    code, story, _ = await why(settings, listing_id)
    assert code == 1 and story["verdict"]["kind"] == "retry_scheduled"


async def test_postponed_behind_an_open_circuit(
    fresh_database: str, es_url: str, own_db: psycopg.AsyncConnection[Any]
) -> None:
    settings = make_settings(fresh_database, es_url)
    unreachable = make_settings(
        fresh_database, "http://127.0.0.1:9", index_prefix=settings.index_prefix,
        elasticsearch_timeout=2,
    )  # fmt: skip
    listing_id = await insert_listing(own_db, "behind the circuit")
    async with app_with(unreachable) as app:
        await drain(app)
    code, story, _ = await why(settings, listing_id)
    assert code == 1
    assert story["circuit"]["sink"] == "elasticsearch"
    assert story["change"] is not None
    assert story["verdict"]["kind"] == "circuit" and story["verdict"]["fix"] is None
    assert "elasticsearch is unavailable since" in story["verdict"]["summary"]


@contextlib.asynccontextmanager
async def a_row_job_behind_a_writer(
    database: str,
) -> AsyncIterator[tuple[str, int, psycopg.AsyncConnection[Any]]]:
    """A listing a REPEATABLE READ writer inserted (its sync is a row job, not a waiting
    change: docs/bulk.md), not in its index yet, and a second REPEATABLE READ write of
    the row in its transaction for the block: it holds the row's sync key, so the job
    cannot read the row until it ends. Yields (id, row job, writer); commits after."""
    async with await psycopg.AsyncConnection.connect(database) as writer:
        await writer.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        listing_id = await insert_listing(writer, "behind a writer")
        await writer.commit()
        cursor = await writer.execute(
            "SELECT id FROM procrastinate.procrastinate_jobs WHERE lock = %s",
            [f"listing:{listing_id}"],
        )
        [(job_id,)] = await cursor.fetchall()
        await writer.commit()
        await writer.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        await writer.execute(
            "UPDATE listings SET title = 'written, not committed' WHERE id = %s", [listing_id]
        )
        yield listing_id, int(job_id), writer
        await writer.commit()


async def test_a_writer_still_in_its_transaction_postpones_its_row_job(
    fresh_database: str, es_url: str, own_db: psycopg.AsyncConnection[Any]
) -> None:
    # A third of the job timeout is how long a row job waits for a writer.
    settings = make_settings(fresh_database, es_url, job_timeout=1.5)
    async with a_row_job_behind_a_writer(fresh_database) as (listing_id, job_id, _):
        async with app_with(settings) as app:  # it waits, then postpones its job
            await app.run_worker_async(wait=False, listen_notify=False, **QUIET)
        assert await job_status(fresh_database, job_id) == "todo"
        code, story, err = await why(settings, listing_id)
        code_text, text = await why_text(settings, listing_id)
    assert code == code_text == 1, err
    assert story["row"]["state"] == "present" and not story["document"]["present"]
    [job] = [job for job in story["jobs"] if job["id"] == job_id]
    assert (job["task_name"], job["status"], job["attempts"]) == ("listing:create", "todo", 0)
    assert job["postponed_reason"] == (
        f"a writer of listing {listing_id}'s key is still in its transaction"
    )
    verdict = story["verdict"]
    assert verdict["kind"] == "writer" and verdict["fix"] is None
    assert f"job {job_id} (listing:create) is postponed until " in verdict["summary"]
    assert "is still in its transaction; no retry spent, nothing to run" in verdict["summary"]
    assert f"verdict:   {verdict['summary']}" in text and "fix:" not in text
    async with app_with(settings) as app, running_worker(app):

        async def synced() -> bool:  # the writer committed: the job runs when due
            return await job_status(fresh_database, job_id) == "succeeded"

        await eventually(synced)
    code, story, err = await why(settings, listing_id)
    assert code == 0 and story["verdict"]["kind"] == "in_sync", story or err
    assert story["document"]["source"]["title"] == "written, not committed"


async def test_a_row_job_a_worker_is_running_now(
    fresh_database: str, es_url: str, own_db: psycopg.AsyncConnection[Any]
) -> None:
    # The row job waits for the writer up to a third of the job timeout: ample.
    settings = make_settings(fresh_database, es_url, job_timeout=180)
    async with (
        a_row_job_behind_a_writer(fresh_database) as (listing_id, job_id, writer),
        app_with(settings) as app,
        running_worker(app),
    ):

        async def taken() -> bool:
            return await job_status(fresh_database, job_id) == "doing"

        await eventually(taken)
        code, story, err = await why(settings, listing_id)
        code_text, text = await why_text(settings, listing_id)
        assert await job_status(fresh_database, job_id) == "doing"  # all along
        await writer.commit()

        async def synced() -> bool:
            return await job_status(fresh_database, job_id) == "succeeded"

        await eventually(synced)
    assert code == code_text == 1, err
    assert story["row"]["state"] == "present" and not story["document"]["present"]
    assert [(job["id"], job["status"]) for job in story["jobs"]] == [(job_id, "doing")]
    verdict = story["verdict"]
    assert verdict["kind"] == "running" and verdict["fix"] is None
    assert verdict["summary"] == f"listing {listing_id} is being synced now by job {job_id}"
    assert f"verdict:   {verdict['summary']}" in text and "fix:" not in text
    code, story, err = await why(settings, listing_id)
    assert code == 0 and story["verdict"]["kind"] == "in_sync", story or err
    assert story["document"]["source"]["title"] == "written, not committed"


async def test_hidden_by_row_level_security_from_the_workers_role(
    app: ProcqueueApp, settings: Settings, db: psycopg.AsyncConnection[Any], database: str,
    es_url: str, worker_role: str,
) -> None:  # fmt: skip
    listing_id = await insert_listing(db, "to be hidden")
    await drain(app)
    role_settings = make_settings(
        as_role(database, worker_role), es_url, index_prefix=settings.index_prefix
    )
    async with app_with(role_settings) as role_app, running_worker(role_app):

        async def started() -> bool:  # its start check passed, before RLS is switched on
            cursor = await db.execute("SELECT count(*) FROM procrastinate.procrastinate_workers")
            found = await cursor.fetchone()
            return found is not None and found[0] > 0

        await eventually(started)
        async with hidden_from_the_worker(database, worker_role, LISTING.table, listing_id):
            await db.execute("UPDATE listings SET title = 'hidden' WHERE id = %s", [listing_id])
            cursor = await db.execute(
                "SELECT max(id) FROM procrastinate.procrastinate_jobs"
                " WHERE task_name = 'listing:drain'"
            )
            row = await cursor.fetchone()
            assert row is not None and row[0] is not None
            drain_id = int(row[0])

            async def failed() -> bool:
                return await job_status(database, drain_id) == "failed"

            await eventually(failed)
            code, story, _ = await why(settings, listing_id)
            # Run as the worker's role itself, the read is refused: hidden, not deleted.
            as_worker = await run_cli(
                as_role(database, worker_role), "why", "listing", listing_id, "--json",
                elasticsearch_url=settings.elasticsearch_url, index_prefix=settings.index_prefix,
            )  # fmt: skip
    code_as_worker, seen_as_worker = as_worker[0], json.loads(as_worker[1])
    assert code_as_worker == 1, as_worker[2]
    assert seen_as_worker["row"]["state"] == "hidden"
    assert seen_as_worker["row"]["hidden_from"] == worker_role
    assert seen_as_worker["verdict"]["kind"] == "hidden"
    assert code == 1, story
    assert story["row"] == {**story["row"], "state": "hidden", "hidden_from": worker_role}
    assert story["verdict"]["kind"] == "hidden"
    assert story["verdict"]["fix"] == f"ALTER ROLE {worker_role} BYPASSRLS"
    assert f"procqueue retry {drain_id}" in story["verdict"]["summary"]
    assert "title" in {d["field"] for d in story["document"]["differs"]}
    await drain(app)  # the owner's worker syncs what the role could not


async def test_errors_are_one_line_with_a_non_zero_exit(settings: Settings) -> None:
    cases = {
        ("shoe", str(uuid.uuid4())): "unknown entity 'shoe'",
        ("listing", "not-a-uuid"): "'not-a-uuid' is not a key of public.listings",
        ("listing", str(uuid.uuid4())): "not found: no row in public.listings",
    }
    for (entity, entity_id), expected in cases.items():
        code, out, err = await run_cli(
            settings.dsn, "why", entity, entity_id,
            elasticsearch_url=settings.elasticsearch_url, index_prefix=settings.index_prefix,
        )  # fmt: skip
        assert code == 2 and out == "", (entity, entity_id, out)
        assert err.startswith("procqueue: error: ") and expected in err, err
        assert len(err.strip().splitlines()) == 1, err
