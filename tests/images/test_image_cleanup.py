"""Cloudinary cleanup end to end: real Postgres triggers, a real worker, the real
`cloudinary` SDK talking to a loopback server that speaks the Admin API."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from procqueue.cli import main as cli_main
from procqueue.engine.app import ProcqueueApp
from procqueue.entities import DEFAULT_ENTITIES, LISTING, Entity
from procqueue.features import Settings, get_settings
from procqueue.images.jobs import CLEANUP
from procqueue.images.orphans import find_orphans
from procqueue.images.schema import attach_image_trigger_sql
from procqueue.images.urls import DeliveryConfig
from procqueue.migrate import migrate
from procqueue.queue.jobs import add_job
from procqueue.settings import SchemaConfig
from tests.conftest import make_settings
from tests.support.cloudinary_server import (
    DROP,
    CloudinaryServer,
    error,
    rate_limited,
)
from tests.support.supabase import act_as_api_user
from tests.support.worker import SELLER_ID, app_with, drain, eventually, running_worker

IMAGES = {"queues": ["images"]}


def image_settings(dsn: str, es_url: str, cloud: CloudinaryServer, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "cloudinary_url": cloud.credentials_url(),
        "cloudinary_upload_prefix": cloud.url,
    }
    return make_settings(dsn, es_url, **{**values, **overrides})


@pytest.fixture(scope="module")
async def app(dsn: str, es_url: str, cloud: CloudinaryServer) -> AsyncIterator[ProcqueueApp]:
    async with app_with(image_settings(dsn, es_url, cloud)) as application:
        yield application


def fresh(*names: str) -> list[str]:
    """Public ids no other test uses."""
    prefix = f"listings/t{uuid.uuid4().hex[:8]}"  # in a folder cleanup may delete from
    return [f"{prefix}/{name}" for name in names]


def url(public_id: str, resource_type: str = "image", extension: str = "jpg") -> str:
    return f"https://res.cloudinary.com/demo/{resource_type}/upload/v1712345678/{public_id}.{extension}"


async def insert_listing(
    db: psycopg.AsyncConnection[Any],
    main: str | None,
    additional: list[str] | None = None,
    inventory_item_id: str | None = None,
) -> str:
    cursor = await db.execute(
        "INSERT INTO listings (user_id, title, main_image_url, additional_image_urls, "
        "inventory_item_id) VALUES (%s, 'İlan', %s, %s, %s) RETURNING id::text",
        [SELLER_ID, main, additional or [], inventory_item_id],
    )
    row = await cursor.fetchone()
    assert row is not None
    return str(row[0])


async def insert_item(
    db: psycopg.AsyncConnection[Any], main: str | None, additional: list[str] | None = None
) -> str:
    cursor = await db.execute(
        "INSERT INTO inventory_items (user_id, name, main_image_url, additional_image_urls) "
        "VALUES (%s, 'Eşya', %s, %s) RETURNING id::text",
        [SELLER_ID, main, additional or []],
    )
    row = await cursor.fetchone()
    assert row is not None
    return str(row[0])


async def last_job_id(db: psycopg.AsyncConnection[Any]) -> int:
    cursor = await db.execute("SELECT coalesce(max(id), 0) FROM procrastinate.procrastinate_jobs")
    row = await cursor.fetchone()
    return int(row[0]) if row else 0


async def cleanup_jobs(db: psycopg.AsyncConnection[Any], since: int) -> list[dict[str, Any]]:
    cursor = db.cursor(row_factory=dict_row)
    await cursor.execute(
        "SELECT j.id, j.status::text AS status, j.args, j.attempts, j.scheduled_at, "
        "j.queueing_lock, coalesce(p.times, 0) AS postponed "
        "FROM procrastinate.procrastinate_jobs AS j "
        "LEFT JOIN procqueue.job_postponements AS p ON p.job_id = j.id "
        "WHERE j.task_name = %s AND j.id > %s ORDER BY j.id",
        [CLEANUP.task_name, since],
    )
    return await cursor.fetchall()


async def job_errors(db: psycopg.AsyncConnection[Any], job_ids: list[int]) -> list[dict[str, Any]]:
    cursor = db.cursor(row_factory=dict_row)
    await cursor.execute(
        "SELECT * FROM procqueue.job_errors WHERE job_id = ANY(%s) ORDER BY id", [job_ids]
    )
    return await cursor.fetchall()


async def settle(app: ProcqueueApp, db: psycopg.AsyncConnection[Any], since: int) -> None:
    """Run a worker until every cleanup job since `since` succeeded or failed for good."""

    async def settled() -> bool:
        jobs = await cleanup_jobs(db, since)
        return bool(jobs) and all(job["status"] in ("succeeded", "failed") for job in jobs)

    async with running_worker(app, **IMAGES):
        await eventually(settled, timeout=15)


async def test_deleting_a_listing_deletes_its_main_and_additional_images(
    app: ProcqueueApp, db: psycopg.AsyncConnection[Any], cloud: CloudinaryServer
) -> None:
    ids = fresh("main", "extra_1", "extra_2")
    cloud.store(*ids)
    since = await last_job_id(db)
    listing = await insert_listing(db, url(ids[0]), [url(ids[1]), url(ids[2])])
    await db.execute("DELETE FROM listings WHERE id = %s", [listing])

    [job] = await cleanup_jobs(db, since)
    assert job["args"] == {"urls": sorted(url(i) for i in ids), "entity": "listing"}
    assert job["queueing_lock"] is None
    await drain(app, **IMAGES)

    assert not any(cloud.stored(i) for i in ids)
    [call] = cloud.calls_for(ids)
    assert (call.method, call.cloud, call.resource_type, call.delivery_type) == (
        "DELETE", "demo", "image", "upload"
    )  # fmt: skip
    assert sorted(call.public_ids) == sorted(ids)
    assert [job["status"] for job in await cleanup_jobs(db, since)] == ["succeeded"]


async def test_an_update_removing_one_of_three_urls_deletes_exactly_that_one(
    app: ProcqueueApp, db: psycopg.AsyncConnection[Any], cloud: CloudinaryServer
) -> None:
    ids = fresh("main", "keep", "drop")
    cloud.store(*ids)
    listing = await insert_listing(db, url(ids[0]), [url(ids[1]), url(ids[2])])
    await db.execute(
        "UPDATE listings SET additional_image_urls = %s WHERE id = %s", [[url(ids[1])], listing]
    )
    await drain(app, **IMAGES)
    assert [call.public_ids for call in cloud.calls_for(ids)] == [(ids[2],)]
    assert (cloud.stored(ids[0]), cloud.stored(ids[1]), cloud.stored(ids[2])) == (True, True, False)


@pytest.mark.parametrize("first", ["listing", "item"])
async def test_a_shared_image_survives_either_deletion_and_goes_after_both(
    app: ProcqueueApp, db: psycopg.AsyncConnection[Any], cloud: CloudinaryServer, first: str
) -> None:
    shared, item_only, listing_only = fresh("shared", "item_only", "listing_only")
    cloud.store(shared, item_only, listing_only)
    item = await insert_item(db, url(shared), [url(item_only)])
    # A listing created from the inventory item shares its photo (another form of its URL).
    shared_thumbnail = url(shared).replace("/upload/", "/upload/c_fill,w_400/")
    listing = await insert_listing(db, shared_thumbnail, [url(listing_only)], item)
    deletions = {
        "listing": ("DELETE FROM listings WHERE id = %s", listing),
        "item": ("DELETE FROM inventory_items WHERE id = %s", item),
    }
    second = "item" if first == "listing" else "listing"

    await db.execute(deletions[first][0], [deletions[first][1]])
    await drain(app, **IMAGES)
    assert cloud.stored(shared), f"the shared image was deleted with the {first}"
    assert shared not in cloud.deleted_ids([shared])
    assert not any(shared in call.public_ids for call in cloud.calls)

    await db.execute(deletions[second][0], [deletions[second][1]])
    await drain(app, **IMAGES)
    assert not cloud.stored(shared)
    assert not cloud.stored(item_only) and not cloud.stored(listing_only)


async def test_an_image_reattached_during_the_grace_period_survives(
    app: ProcqueueApp, db: psycopg.AsyncConnection[Any], cloud: CloudinaryServer
) -> None:
    [photo] = fresh("photo")
    cloud.store(photo)
    listing = await insert_listing(db, url(photo))
    await db.execute("DELETE FROM listings WHERE id = %s", [listing])
    await insert_listing(db, url(photo))  # the user posts it again before the job runs
    await drain(app, **IMAGES)
    assert cloud.stored(photo)
    assert cloud.calls_for([photo]) == []


async def test_rows_that_keep_their_images_enqueue_nothing(
    db: psycopg.AsyncConnection[Any],
) -> None:
    a, b, c = (url(i) for i in fresh("a", "b", "c"))
    listing = await insert_listing(db, a, [b, c])
    since = await last_job_id(db)
    statements: list[tuple[str, list[Any]]] = [
        ("UPDATE listings SET title = 'Yeni başlık', view_count = 7 WHERE id = %s", [listing]),
        ("UPDATE listings SET additional_image_urls = %s WHERE id = %s", [[c, b], listing]),
        ("UPDATE listings SET main_image_url = main_image_url WHERE id = %s", [listing]),
        # a URL moving between columns is not removed
        (
            "UPDATE listings SET main_image_url = %s, additional_image_urls = %s WHERE id = %s",
            [b, [a, c], listing],
        ),
        ("UPDATE listings SET main_image_url = %s WHERE id = %s", [a, listing]),
    ]
    for statement, params in statements:
        await db.execute(statement, params)
    jobs = await cleanup_jobs(db, since)
    # Only the last statement dropped a URL (b left the main column and is in no column).
    assert [job["args"]["urls"] for job in jobs] == [[b]]


async def test_odd_rows_never_make_the_write_fail(
    app: ProcqueueApp,
    db: psycopg.AsyncConnection[Any],
    cloud: CloudinaryServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    [turkish] = fresh("çiçek bahçesi")
    cloud.store(turkish)
    huge = "x" * 1_000_000
    odd_rows: list[tuple[str | None, list[str | None]]] = [
        (None, []),
        ("", [""]),
        (None, [None, ""]),
        ("not a url at all", ["https://example.com/cat.jpg"]),
        ("https://res.cloudinary.com/other/image/upload/v1/a.jpg", []),
        ("https://res.cloudinary.com/demo/image/fetch/https://example.com/a.jpg", []),
        ("https://res.cloudinary.com/demo/image/private/s--x--/v1/a.jpg", [huge]),
        (url(turkish), ["🙂 emoji", "ftp://x"]),
    ]
    since = await last_job_id(db)
    caplog.set_level(logging.INFO, logger="procqueue.images.urls")
    ids = [await insert_listing(db, main, additional) for main, additional in odd_rows]  # type: ignore[arg-type]
    item = await insert_item(db, None, [])
    async with db.transaction():
        # Supabase's API role writes listings too: the trigger runs as its definer.
        await act_as_api_user(db, "authenticated", SELLER_ID, local=True)
        await db.execute("UPDATE listings SET main_image_url = NULL WHERE id = ANY(%s)", [ids])
        await db.execute(
            "UPDATE listings SET additional_image_urls = '{}' WHERE id = ANY(%s)", [ids]
        )
        await db.execute("DELETE FROM listings WHERE id = ANY(%s)", [ids])
    await db.execute(
        "UPDATE inventory_items SET additional_image_urls = ARRAY[NULL, 'ü']::text[] WHERE id = %s",
        [item],
    )
    await db.execute("DELETE FROM inventory_items WHERE id = %s", [item])

    jobs = await cleanup_jobs(db, since)
    removed = {u for job in jobs for u in job["args"]["urls"]}
    assert huge not in removed and "" not in removed and None not in removed
    assert url(turkish) in removed
    await drain(app, **IMAGES)
    assert {job["status"] for job in await cleanup_jobs(db, since)} == {"succeeded"}
    assert not cloud.stored(turkish)
    assert [call.public_ids for call in cloud.calls if turkish in call.public_ids] == [(turkish,)]
    skipped = [r.getMessage() for r in caplog.records if "image URL skipped" in r.getMessage()]
    assert any("other cloud" in line for line in skipped)
    assert any("'fetch'" in line for line in skipped)
    assert any("example.com/cat.jpg" in line for line in skipped)


async def test_assets_are_deleted_in_batches_per_resource_type(
    app: ProcqueueApp, db: psycopg.AsyncConnection[Any], cloud: CloudinaryServer
) -> None:
    ids = fresh(*(f"p{n:03}" for n in range(150)))
    [video] = fresh("clip")
    cloud.store(*ids)
    cloud.store(video, resource_type="video")
    listing = await insert_listing(db, url(video, "video", "mp4"), [url(i) for i in ids])
    await db.execute("DELETE FROM listings WHERE id = %s", [listing])
    await drain(app, **IMAGES)
    calls = cloud.calls_for([*ids, video])
    assert sorted((call.resource_type, len(call.public_ids)) for call in calls) == [
        ("image", 50), ("image", 100), ("video", 1)
    ]  # fmt: skip
    assert not any(cloud.stored(i) for i in ids) and not cloud.stored(video, "video")


async def test_assets_already_gone_count_as_done(
    app: ProcqueueApp, db: psycopg.AsyncConnection[Any], cloud: CloudinaryServer
) -> None:
    never_stored, whole_call_404 = fresh("never_stored", "whole_call_404")
    since = await last_job_id(db)
    await db.execute(
        "DELETE FROM listings WHERE id = %s", [await insert_listing(db, url(never_stored))]
    )
    await drain(app, **IMAGES)
    cloud.script(error(404, "Resource not found"))
    await db.execute(
        "DELETE FROM listings WHERE id = %s", [await insert_listing(db, url(whole_call_404))]
    )
    await drain(app, **IMAGES)
    jobs = await cleanup_jobs(db, since)
    assert [(job["status"], job["attempts"]) for job in jobs] == [("succeeded", 1)] * 2


async def test_server_errors_postpone_the_job_until_the_call_succeeds(
    app: ProcqueueApp, db: psycopg.AsyncConnection[Any], cloud: CloudinaryServer
) -> None:
    """5xx: Cloudinary, not the job, is failing: the same job waits again each time
    (Cloudinary's circuit), spending no retry and recording no error."""
    [photo] = fresh("photo")
    cloud.store(photo)
    since = await last_job_id(db)
    listing = await insert_listing(db, url(photo))
    cloud.script(error(500, "Internal Server Error"), error(500, "Internal Server Error"))
    await db.execute("DELETE FROM listings WHERE id = %s", [listing])
    await settle(app, db, since)

    assert [call.status for call in cloud.calls_for([photo])] == [500, 500, 200]
    assert not cloud.stored(photo)
    jobs = await cleanup_jobs(db, since)
    assert [(job["status"], job["attempts"], job["postponed"]) for job in jobs] == [
        ("succeeded", 1, 2)
    ]
    assert await job_errors(db, [job["id"] for job in jobs]) == []


async def test_a_rate_limited_call_waits_for_the_reset_time(
    app: ProcqueueApp, db: psycopg.AsyncConnection[Any], cloud: CloudinaryServer
) -> None:
    [photo] = fresh("photo")
    cloud.store(photo)
    await drain(app, **IMAGES)  # jobs other tests left: the scripted reply is for this one
    since = await last_job_id(db)
    reset = datetime.fromtimestamp(math.ceil(time.time()) + 1, UTC)
    cloud.script(rate_limited(reset))
    listing = await insert_listing(db, url(photo))
    await db.execute("DELETE FROM listings WHERE id = %s", [listing])

    async def done() -> bool:  # the job, postponed to the reset, then run again
        found = [(job["status"], job["postponed"]) for job in await cleanup_jobs(db, since)]
        return found == [("succeeded", 1)]

    async with running_worker(app, **IMAGES):
        await eventually(done, timeout=15)
    first, second = cloud.calls_for([photo])
    assert (first.status, second.status) == (420, 200)
    assert second.at >= reset.timestamp(), "retried before the rate limit's reset time"
    assert not cloud.stored(photo)


async def test_a_used_up_rate_limit_defers_the_next_call_to_the_reset_header(
    dsn: str, es_url: str, db: psycopg.AsyncConnection[Any], cloud: CloudinaryServer
) -> None:
    first, second = fresh("first", "second")
    cloud.store(first, second)
    reset = datetime.fromtimestamp(math.ceil(time.time()) + 120, UTC)
    async with app_with(image_settings(dsn, es_url, cloud)) as app:
        await drain(app, **IMAGES)  # jobs other tests left would use up the one call
        since = await last_job_id(db)
        cloud.reset_at, cloud.rate_limit = reset, 1  # this call uses the last one
        try:
            await db.execute(
                "DELETE FROM listings WHERE id = %s", [await insert_listing(db, url(first))]
            )
            await drain(app, **IMAGES)
            await db.execute(
                "DELETE FROM listings WHERE id = %s", [await insert_listing(db, url(second))]
            )
            await drain(app, **IMAGES)
        finally:
            cloud.reset_at, cloud.rate_limit = None, 500
        jobs = await cleanup_jobs(db, since)
        await db.execute(
            "DELETE FROM procrastinate.procrastinate_jobs WHERE id = %s AND status = 'todo'",
            [jobs[-1]["id"]],
        )
    # The second job waits, untried, until the reset time.
    assert [(job["status"], job["postponed"]) for job in jobs] == [("succeeded", 0), ("todo", 1)]
    assert jobs[-1]["scheduled_at"] == reset and jobs[-1]["attempts"] == 0
    assert cloud.calls_for([second]) == [], "called Cloudinary although its limit was used up"
    assert cloud.stored(second)


async def test_bad_credentials_fail_at_once_and_the_secret_stays_secret(
    dsn: str,
    es_url: str,
    db: psycopg.AsyncConnection[Any],
    cloud: CloudinaryServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    wrong_secret = f"wr0ng-{uuid.uuid4().hex}"
    [photo] = fresh("photo")
    cloud.store(photo)
    since = await last_job_id(db)
    caplog.set_level(logging.DEBUG)
    settings = image_settings(
        dsn, es_url, cloud, cloudinary_url=cloud.credentials_url(wrong_secret)
    )
    assert wrong_secret in settings.secret_values()
    async with app_with(settings) as app:
        await db.execute(
            "DELETE FROM listings WHERE id = %s", [await insert_listing(db, url(photo))]
        )
        await drain(app, **IMAGES)

    [job] = await cleanup_jobs(db, since)
    assert (job["status"], job["attempts"]) == ("failed", 1)
    assert [call.status for call in cloud.calls_for([photo])] == [401]
    assert cloud.stored(photo)
    [failure] = await job_errors(db, [job["id"]])
    assert (failure["transient"], failure["final"]) == (False, True)
    assert "401" in failure["message"] and "CLOUDINARY_URL" in failure["message"]
    assert "PermanentError" in failure["error_type"]

    cursor = await db.execute(
        "SELECT (SELECT string_agg(t::text, ' ') FROM procqueue.job_errors AS t), "
        "(SELECT string_agg(args::text, ' ') FROM procrastinate.procrastinate_jobs)"
    )
    stored = " ".join(str(value) for value in await cursor.fetchone() or ())
    assert wrong_secret not in stored
    assert caplog.records, "nothing was logged"
    assert any("401" in record.getMessage() for record in caplog.records)
    for record in caplog.records:
        assert wrong_secret not in record.getMessage()
        assert wrong_secret not in str(record.__dict__)
    assert wrong_secret not in caplog.text


async def test_unconfigured_cloudinary_skips_cleanup_at_once_like_unset_smtp(
    dsn: str,
    es_url: str,
    db: psycopg.AsyncConnection[Any],
    cloud: CloudinaryServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """No Cloudinary credentials (the demo): the cleanup job succeeds at once with one
    line saying it was skipped, as a notification of an unset channel is, and calls
    nothing; no retry, no failure row."""
    [photo] = fresh("photo")
    cloud.store(photo)
    since = await last_job_id(db)
    settings = make_settings(dsn, es_url)
    assert settings.cloudinary is None
    caplog.set_level(logging.INFO, logger="procqueue.images")
    async with app_with(settings) as app:
        await db.execute(
            "DELETE FROM listings WHERE id = %s", [await insert_listing(db, url(photo))]
        )
        await drain(app, **IMAGES)

    [job] = await cleanup_jobs(db, since)
    assert job["status"] == "succeeded"
    assert await job_errors(db, [job["id"]]) == []
    assert cloud.calls_for([photo]) == [] and cloud.stored(photo)
    # What the job logged (the worker's own output is one line: test_operator_logs.py).
    lines = {
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("procqueue.images") and getattr(r, "job_id", None) == job["id"]
    }
    assert lines == {
        "images:cleanup for listing: skipped: Cloudinary is not configured (set CLOUDINARY_URL)"
    }


async def test_cloudinary_failure_scenario_converges_once_the_server_is_back(
    dsn: str, es_url: str, db: psycopg.AsyncConnection[Any], cloud: CloudinaryServer
) -> None:
    """The seed's scenario: Cloudinary fails (5xx, dropped connections) while rows lose
    images; once it is back every removed, unreferenced asset is gone and nothing
    referenced was touched."""
    shared, item_extra, own, kept_extra, dropped, item_b = fresh(
        "shared", "item_extra", "own", "kept_extra", "dropped", "item_b"
    )
    cloud.store(shared, item_extra, own, kept_extra, dropped, item_b)
    item = await insert_item(db, url(shared), [url(item_extra)])
    from_item = await insert_listing(db, url(shared), [url(own)], item)
    other = await insert_listing(db, None, [url(kept_extra), url(dropped)])
    lone_item = await insert_item(db, url(item_b))
    since = await last_job_id(db)
    # No retry allowed at all: an outage of Cloudinary must need none.
    settings = image_settings(dsn, es_url, cloud, max_retries=0, retry_backoff=0.05)

    async with app_with(settings) as app, running_worker(app, **IMAGES):
        with cloud.outage(error(503, "Service Unavailable"), DROP, error(502, "Bad Gateway")):
            await db.execute("DELETE FROM listings WHERE id = %s", [from_item])
            await db.execute(
                "UPDATE listings SET additional_image_urls = %s WHERE id = %s",
                [[url(kept_extra)], other],
            )
            await db.execute("DELETE FROM inventory_items WHERE id = %s", [lone_item])
            jobs = await cleanup_jobs(db, since)
            assert len(jobs) == 3

            async def all_held_back() -> bool:  # nothing can succeed during the outage
                found = await cleanup_jobs(db, since)
                assert all(job["status"] != "succeeded" for job in found), found
                return len(found) == 3 and all(job["postponed"] >= 1 for job in found)

            await eventually(all_held_back, timeout=15)

        async def all_succeeded() -> bool:
            return {job["status"] for job in await cleanup_jobs(db, since)} == {"succeeded"}

        await eventually(all_succeeded, timeout=20)

    assert not any(cloud.stored(i) for i in (own, dropped, item_b)), "an orphan survived"
    assert all(cloud.stored(i) for i in (shared, item_extra, kept_extra)), "a used image went"
    touched = {p for call in cloud.calls for p in call.public_ids}
    assert not touched & {shared, item_extra, kept_extra}
    every_job = await cleanup_jobs(db, since)
    assert [job["id"] for job in every_job] == [job["id"] for job in jobs]  # no new rows
    assert all(job["attempts"] == 1 and job["postponed"] >= 1 for job in every_job)
    assert await job_errors(db, [job["id"] for job in every_job]) == []


async def test_default_grace_period_delays_the_job(
    dsn: str, db: psycopg.AsyncConnection[Any]
) -> None:
    since = await last_job_id(db)
    migrate(dsn, SchemaConfig(image_cleanup_grace=120))
    try:
        listing = await insert_listing(db, url(fresh("late")[0]))
        await db.execute("DELETE FROM listings WHERE id = %s", [listing])
    finally:
        migrate(dsn, SchemaConfig(image_cleanup_grace=0))
    [job] = await cleanup_jobs(db, since)
    cursor = await db.execute("SELECT extract(epoch FROM %s - now())", [job["scheduled_at"]])
    row = await cursor.fetchone()
    assert row is not None and 100 < float(row[0]) <= 120
    await db.execute("DELETE FROM procrastinate.procrastinate_jobs WHERE id = %s", [job["id"]])


async def test_image_triggers_are_attached_only_where_images_are_configured(
    db: psycopg.AsyncConnection[Any],
) -> None:
    cursor = await db.execute(
        "SELECT tgrelid::regclass::text FROM pg_trigger WHERE tgname = 'procqueue_image_cleanup'"
    )
    assert sorted(table for (table,) in await cursor.fetchall()) == ["inventory_items", "listings"]
    plain = Entity(name="note", table="public.notes", index="notes", fields={"id": "keyword"})
    assert attach_image_trigger_sql(plain).startswith("DROP TRIGGER IF EXISTS")
    statement = attach_image_trigger_sql(LISTING, 600)
    assert 'UPDATE OF "main_image_url", "additional_image_urls" OR DELETE' in statement
    assert "'600.000'" in statement


async def test_orphans_dry_run_lists_removed_unreferenced_images(
    dsn: str,
    es_url: str,
    db: psycopg.AsyncConnection[Any],
    cloud: CloudinaryServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    orphan, reused = fresh("orphan", "reused")
    since = await last_job_id(db)
    migrate(dsn, SchemaConfig(image_cleanup_grace=120))  # the jobs wait: nothing deleted
    try:
        await db.execute(
            "DELETE FROM listings WHERE id = %s",
            [await insert_listing(db, url(orphan), [url(reused)])],
        )
    finally:
        migrate(dsn, SchemaConfig(image_cleanup_grace=0))
    await insert_item(db, url(reused).replace("/upload/", "/upload/w_80/"))
    [job] = await cleanup_jobs(db, since)

    delivery = DeliveryConfig.of("demo")
    found = {o.asset.public_id: o for o in await find_orphans(dsn, DEFAULT_ENTITIES, delivery)}
    assert (found[orphan].job_id, found[orphan].job_status) == (job["id"], "todo")
    assert reused not in found

    for name, value in {
        "PROCQUEUE_DATABASE_URL": dsn,
        "CLOUDINARY_URL": cloud.credentials_url(),
    }.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    try:
        # The CLI runs its own event loop: give it a thread of its own.
        assert await asyncio.to_thread(cli_main, ["images", "orphans", "--pending", "--json"]) == 0
    finally:
        get_settings.cache_clear()
    listed = json.loads(capsys.readouterr().out)
    assert {"resource_type": "image", "type": "upload", "public_id": orphan, "job_id": job["id"],
            "job_status": "todo"} in listed  # fmt: skip
    assert all(row["public_id"] != reused for row in listed)
    assert cloud.calls_for([orphan, reused]) == []
    await db.execute("DELETE FROM procrastinate.procrastinate_jobs WHERE id = %s", [job["id"]])


async def test_an_api_user_cannot_have_an_asset_outside_the_marketplace_folders_deleted(
    app: ProcqueueApp, db: psycopg.AsyncConnection[Any], cloud: CloudinaryServer
) -> None:
    """The attack: a user points a listing at another asset of the account (the CEO's
    avatar), then drops it; cleanup keeps it, since it is outside the folders the
    marketplace uploads to (PROCQUEUE_CLOUDINARY_FOLDERS), and still deletes the
    user's own orphan from the same job."""
    avatar = f"avatars/ceo_profile_photo_{uuid.uuid4().hex[:6]}"
    [own] = fresh("own")
    cloud.store(avatar, own)
    since = await last_job_id(db)
    async with db.transaction():
        await act_as_api_user(db, "authenticated", SELLER_ID, local=True)
        cursor = await db.execute(
            "INSERT INTO listings (user_id, title, main_image_url, additional_image_urls) "
            "VALUES (%s, 'bait', %s, %s) RETURNING id",
            [SELLER_ID, url(avatar), [url(own)]],
        )
        row = await cursor.fetchone()
        assert row is not None
        await db.execute(
            "UPDATE listings SET main_image_url = NULL, additional_image_urls = '{}' WHERE id = %s",
            [row[0]],
        )
    await drain(app, **IMAGES)

    assert cloud.stored(avatar), "an asset outside the marketplace's folders was deleted"
    assert not cloud.stored(own)
    assert cloud.calls_for([avatar]) == []
    assert [job["status"] for job in await cleanup_jobs(db, since)] == ["succeeded"]


async def test_a_row_losing_50000_image_urls_enqueues_jobs_of_at_most_100_urls(
    app: ProcqueueApp,
    db: psycopg.AsyncConnection[Any],
    cloud: CloudinaryServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Issue 22: an API user's listing with 50,000 image URLs, deleted, gave one job
    of 50,000 URLs (one reference check and one pass over them all). Now: jobs of at
    most 100 URLs, every URL in one of them, each job's check and deletes bounded."""
    spam = [f"avatars/spam{uuid.uuid4().hex[:6]}/p{n:05}" for n in range(49_998)]
    own = fresh("own_1", "own_2")
    cloud.store(*own, *spam[:3])
    urls = [url(public_id) for public_id in [*own, *spam]]
    since = await last_job_id(db)
    async with db.transaction():
        await act_as_api_user(db, "authenticated", SELLER_ID, local=True)
        cursor = await db.execute(
            "INSERT INTO listings (user_id, title, main_image_url, additional_image_urls) "
            "VALUES (%s, 'many', %s, %s) RETURNING id",
            [SELLER_ID, urls[0], urls],
        )
        row = await cursor.fetchone()
        assert row is not None
    started = time.monotonic()
    async with db.transaction():
        await act_as_api_user(db, "authenticated", SELLER_ID, local=True)
        await db.execute("DELETE FROM listings WHERE id = %s", [row[0]])
    delete_seconds = time.monotonic() - started

    jobs = await cleanup_jobs(db, since)
    sizes = [len(job["args"]["urls"]) for job in jobs]
    assert max(sizes) <= 100 and len(jobs) == 500, (len(jobs), max(sizes))
    assert sorted(u for job in jobs for u in job["args"]["urls"]) == sorted(urls)
    assert delete_seconds < 5, delete_seconds  # the user's write stays cheap

    caplog.set_level(logging.WARNING, logger="procqueue.images.task")
    await drain(app, concurrency=10, **IMAGES)
    assert {job["status"] for job in await cleanup_jobs(db, since)} == {"succeeded"}
    kept = [r for r in caplog.records if "outside PROCQUEUE_CLOUDINARY_FOLDERS" in r.getMessage()]
    assert len(kept) == len(jobs)  # one line a job, not one per URL
    assert not cloud.stored(own[0]) and not cloud.stored(own[1])
    assert all(cloud.stored(public_id) for public_id in spam[:3])  # outside the folders
    assert [sorted(call.public_ids) for call in cloud.calls_for(own)] == [sorted(own)]


async def test_a_cleanup_job_of_more_than_100_urls_is_split_into_bounded_jobs(
    app: ProcqueueApp, db: psycopg.AsyncConnection[Any], cloud: CloudinaryServer
) -> None:
    """A job written by an older trigger (or by hand) with 250 URLs does no check of
    its own: it enqueues jobs of at most 100, which do the work."""
    ids = fresh(*(f"p{n:03}" for n in range(250)))
    cloud.store(*ids)
    urls = [url(public_id) for public_id in ids]
    since = await last_job_id(db)
    await add_job(db, CLEANUP.task_name, {"urls": [*urls, *urls[:10]], "entity": "listing"},
                  CLEANUP.queue)  # fmt: skip
    await settle(app, db, since)
    [big, *parts] = await cleanup_jobs(db, since)
    assert big["status"] == "succeeded" and len(big["args"]["urls"]) == 260
    assert [len(job["args"]["urls"]) for job in parts] == [100, 100, 50]
    assert [job["args"]["entity"] for job in parts] == ["listing"] * 3
    assert [u for job in parts for u in job["args"]["urls"]] == urls
    assert {job["status"] for job in parts} == {"succeeded"}
    assert not any(cloud.stored(public_id) for public_id in ids)
    assert max(len(call.public_ids) for call in cloud.calls_for(ids)) <= 100
