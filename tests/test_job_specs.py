"""The trigger↔job contract has one source: the job specs (procqueue/*/jobs.py).
Triggers get names from their arguments and procqueue.notification_jobs, so no SQL
file spells a task or queue name, and what they enqueue is what the specs say."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import psycopg
import pytest

from procqueue.dashboard.store import JobFilter
from procqueue.entities import INVENTORY, LISTING
from procqueue.features import features, load_settings
from procqueue.migrate import migrate
from procqueue.notifications.jobs import CHANNELS
from procqueue.queue.jobs import JobSpec
from procqueue.settings import SchemaConfig
from tests.support.repo import REPO_DIR
from tests.support.worker import SELLER_ID

#: Applied migrations are append-only; these functions of theirs are replaced by
#: re-applied SQL (checked in the live database below).
SUPERSEDED = {"0005_notifications.sql": "procqueue.enqueue_notification"}
MARKET = dataclasses.replace(LISTING, name="market", queue="market_sync")


def all_specs() -> list[JobSpec]:
    schema = SchemaConfig(entities=(INVENTORY, LISTING, MARKET))
    return [spec for feature in features() for spec in feature.job_specs(schema)]


def spelled_names(sql_text: str) -> set[str]:
    """The string literals of `sql_text` (comments removed) that are a spec's task,
    queue or lock prefix, a piece of one around a ':', or hold a task name."""
    code = re.sub(r"--[^\n]*", "", sql_text)
    literals = set(re.findall(r"'((?:[^']|'')*)'", code))
    names = {
        name
        for spec in all_specs()
        for name in (spec.task_name, spec.queue, spec.lock_prefix)
        if name
    }
    return {
        literal
        for literal in literals
        if literal in names
        or (":" in literal and any(literal in name for name in names))
        or any(":" in name and name in literal for name in names)
    }


def sql_files() -> list[Path]:
    return sorted([*(REPO_DIR / "sql").rglob("*.sql"), *(REPO_DIR / "migrations").glob("*.sql")])


def test_no_trigger_or_migration_spells_a_task_or_queue_name() -> None:
    sample = "SELECT 'listing:' || id, 'notifications', 'x:bulk', 'e.g. images:cleanup'"
    assert spelled_names(sample) == {"listing:", "notifications", "e.g. images:cleanup"}
    spelled = {
        path.name: found
        for path in sql_files()
        if path.name not in SUPERSEDED and (found := spelled_names(path.read_text()))
    }
    assert spelled == {}


async def test_no_function_in_the_database_spells_a_task_or_queue_name(database: str) -> None:
    async with await psycopg.AsyncConnection.connect(database) as conn:
        functions = await (
            await conn.execute(
                "SELECT p.oid::regproc::text, p.prosrc FROM pg_proc AS p "
                "WHERE p.pronamespace = 'procqueue'::regnamespace"
            )
        ).fetchall()
    names = {name for name, _ in functions}
    assert set(SUPERSEDED.values()) <= names
    assert {name: found for name, source in functions if (found := spelled_names(source))} == {}


def job_row(conn: psycopg.Connection[Any], since: int) -> list[tuple[str, str, str | None]]:
    return [
        (task, queue, lock)
        for task, queue, lock in conn.execute(
            "SELECT task_name, queue_name, lock FROM procrastinate.procrastinate_jobs "
            "WHERE id > %s ORDER BY id",
            [since],
        )
    ]


def last_job_id(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT coalesce(max(id), 0) FROM procrastinate.procrastinate_jobs")
    return int(row.fetchone()[0])  # type: ignore[index]


IMAGE = "https://res.cloudinary.com/demo/image/upload/v1/a.jpg"


@pytest.fixture
def market_database(fresh_database: str) -> str:
    """A database whose listings are the entity `market` on queue `market_sync`, and
    where a statement of two rows makes bulk jobs."""
    migrate(fresh_database, SchemaConfig(entities=(INVENTORY, MARKET), bulk_threshold=1))
    return fresh_database


def test_triggers_enqueue_what_the_specs_say(market_database: str) -> None:
    [search] = [feature for feature in features() if feature.name == "search"]
    [images] = [feature for feature in features() if feature.name == "images"]
    specs = {spec.task_name: spec for spec in search.job_specs(SchemaConfig(entities=(MARKET,)))}
    [cleanup] = images.job_specs(SchemaConfig())
    with psycopg.connect(market_database, autocommit=True) as conn:
        conn.execute("INSERT INTO auth.users (id) VALUES (%s)", [SELLER_ID])
        since = last_job_id(conn)
        insert = "INSERT INTO listings (user_id, title, main_image_url) "
        [(one,)] = conn.execute(
            insert + "VALUES (%s, 'a', %s) RETURNING id::text", [SELLER_ID, IMAGE]
        ).fetchall()
        [(two,), _] = conn.execute(
            insert + "VALUES (%s, 'b', %s), (%s, 'c', NULL) RETURNING id::text",
            [SELLER_ID, IMAGE, SELLER_ID],
        ).fetchall()
        conn.execute("UPDATE listings SET main_image_url = NULL WHERE id = %s", [two])
        jobs = job_row(conn, since)
        changes = conn.execute(
            "SELECT entity, entity_id FROM procqueue.sync_changes ORDER BY entity_id"
        ).fetchall()
    drain, bulk = specs["market:drain"], specs["market:bulk"]
    assert jobs == [
        (drain.task_name, drain.queue, drain.task_name),  # one lock: one drain at a time
        (bulk.task_name, bulk.queue, None),
        (cleanup.task_name, cleanup.queue, None),  # row triggers fire before statement ones
    ]  # the update's change joined the waiting drain job
    assert changes == sorted([("market", one), ("market", two)], key=lambda row: row[1])
    assert drain.queue == "market_sync" and bulk.lock_prefix is None


def test_notifications_enqueue_what_the_specs_say(database: str) -> None:
    [feature] = [feature for feature in features() if feature.name == "notifications"]
    specs = {spec.task_name: spec for spec in feature.job_specs(SchemaConfig())}
    warnings: list[str] = []
    with psycopg.connect(database, autocommit=True) as conn:
        conn.add_notice_handler(lambda notice: warnings.append(str(notice.message_primary)))
        since = last_job_id(conn)
        [(notification_id,)] = conn.execute(
            "SELECT procqueue.notify(gen_random_uuid(), 'NEW_OFFER', '{}', NULL, "
            "'{email,pager}')::text"
        ).fetchall()
        jobs = job_row(conn, since)
    email = specs["notification:email"]
    assert jobs == [(email.task_name, email.queue, email.lock(notification_id))]
    assert warnings == [
        f"procqueue: notification {notification_id} not sent on channel pager: no such "
        "channel; fix procqueue.notification_rules or the channels passed"
    ]


def test_one_registry_gives_each_channel_its_job_its_sink_and_its_sender() -> None:
    """CHANNELS (procqueue/notifications/jobs.py) is the only list of channels: the
    job specs, the SQL's procqueue.notification_jobs rows and the tasks read it."""
    [feature] = [feature for feature in features() if feature.name == "notifications"]
    assert feature.job_specs(SchemaConfig()) == [spec.job for spec in CHANNELS.values()]
    settings = load_settings(database_url="postgresql://db/app")
    for name, spec in CHANNELS.items():
        assert spec.name == name and spec.job.task_name == f"notification:{name}"
        assert spec.job.sink == spec.sink and spec.job.lock_prefix == f"notification:{name}:"
        assert spec.make(settings).name == name  # unconfigured here: it says so by name
    assert {name: spec.sink for name, spec in CHANNELS.items()} == {"email": "smtp", "push": "fcm"}


def test_the_dashboards_entity_filter_reads_locks_by_the_specs() -> None:
    specs = tuple(all_specs())
    assert JobFilter(entity="listing:a:b", specs=specs).entity_id() == "a:b"
    assert JobFilter(entity="market:42", specs=specs).entity_id() == "42"
    assert JobFilter(entity="listings:42", specs=specs).entity_id() == "42"
    assert JobFilter(entity=" 42 ", specs=specs).entity_id() == "42"
