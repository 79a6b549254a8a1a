"""Row-level security switched on while the worker runs (issue 22). The start check
refuses a role that RLS filters, but RLS can be switched on later: the worker must
never read a row hidden from it as missing. Its reads of the tables it syncs or
checks run with `SET LOCAL row_security = off`, so PostgreSQL raises instead of
filtering; the job fails with one line saying what happened and what to do, and no
document (nor image, nor notification) is lost over it.

The worker here runs as a role of sql/roles/worker_role.sql without BYPASSRLS (the
module's owner, like Supabase's `postgres`, has BYPASSRLS: RLS never filters it), on
tables whose RLS is off when it starts, so that its start check passes; a test then
switches RLS on with a policy hiding one row from it. The owner writes the rows."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from procqueue.engine.app import ProcqueueApp
from procqueue.entities import DEFAULT_ENTITIES, LISTING
from procqueue.errors import PermanentError
from procqueue.features import Settings
from procqueue.images.references import find_referenced
from procqueue.images.urls import DeliveryConfig, parse_delivery_url
from procqueue.notifications.store import load_notification
from procqueue.search.client import search_index
from procqueue.search.reconcile import Reconciled, reconcile_entity
from procqueue.search.verify import verify_entity
from tests.conftest import make_settings
from tests.support.supabase import as_role
from tests.support.worker import (
    SELLER_ID,
    app_with,
    eventually,
    indexed_documents,
    insert_listings,
    job_status,
    running_worker,
    waiting_changes,
)

WORKER_ROLE_SQL = Path(__file__).resolve().parents[2] / "sql" / "roles" / "worker_role.sql"
#: The tables the worker reads (its start check looks at each).
WORKER_TABLES = ("inventory_items", "listings", "notifications", "push_tokens")


def clear_reason(role: str) -> tuple[str, ...]:
    """What the line a failed job ends with says: the cause and the cures, in the
    start check's words."""
    return ("row-level security", "public.listings", role, "BYPASSRLS", "nothing was deleted")


@pytest.fixture(scope="module")
def worker_role(admin_dsn: str, database: str) -> Iterator[str]:
    """A role made by sql/roles/worker_role.sql, then NOBYPASSRLS (by the superuser: on
    PostgreSQL 15 only a superuser changes that attribute); RLS off on the tables it
    reads, so that its start check passes."""
    role = f"pq_rls_worker_{uuid.uuid4().hex[:8]}"
    superuser = as_role(database, str(psycopg.conninfo.conninfo_to_dict(admin_dsn)["user"]))
    with psycopg.connect(superuser, autocommit=True) as admin:
        script = WORKER_ROLE_SQL.read_text(encoding="utf-8").replace("procqueue_worker", role)
        admin.execute(script.encode())
        admin.execute(sql.SQL("ALTER ROLE {} NOBYPASSRLS").format(sql.Identifier(role)))
    with psycopg.connect(database, autocommit=True) as owner:
        for table in WORKER_TABLES:
            owner.execute(
                sql.SQL("ALTER TABLE {} DISABLE ROW LEVEL SECURITY").format(
                    sql.Identifier("public", table)
                )
            )
    try:
        yield role
    finally:
        with psycopg.connect(superuser, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


@pytest.fixture(scope="module")
def worker_settings(database: str, es_url: str, worker_role: str) -> Settings:
    return make_settings(as_role(database, worker_role), es_url)


@contextlib.asynccontextmanager
async def hidden_from_the_worker(
    database: str, role: str, table: str, row_id: str
) -> AsyncIterator[None]:
    """While the block runs, row-level security is on for `table`, with policies
    letting `role` see every row but `row_id`."""
    name = sql.Identifier(*table.split("."))
    worker = sql.Identifier(role)
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        await conn.execute(
            sql.SQL(
                "CREATE POLICY pq_test_worker_sees ON {t} AS PERMISSIVE FOR SELECT TO {w} "
                "USING (true)"
            ).format(t=name, w=worker)
        )
        await conn.execute(
            sql.SQL(
                "CREATE POLICY pq_test_hides_one ON {t} AS RESTRICTIVE FOR SELECT TO {w} "
                "USING (id <> {row})"
            ).format(t=name, w=worker, row=sql.Literal(row_id))
        )
        await conn.execute(sql.SQL("ALTER TABLE {t} ENABLE ROW LEVEL SECURITY").format(t=name))
        try:
            yield
        finally:
            await conn.execute(sql.SQL("ALTER TABLE {t} DISABLE ROW LEVEL SECURITY").format(t=name))
            await conn.execute(sql.SQL("DROP POLICY pq_test_hides_one ON {t}").format(t=name))
            await conn.execute(sql.SQL("DROP POLICY pq_test_worker_sees ON {t}").format(t=name))


async def last_error(database: str, job_id: int) -> str:
    async with await psycopg.AsyncConnection.connect(database) as conn:
        row = await (
            await conn.execute(
                "SELECT error_type || ': ' || message FROM procqueue.job_errors "
                "WHERE job_id = %s ORDER BY id DESC LIMIT 1",
                [job_id],
            )
        ).fetchone()
    return "" if row is None else str(row[0])


async def ended(database: str, job_id: int) -> bool:
    return await job_status(database, job_id) in ("failed", "succeeded")


async def newest_job(db: psycopg.AsyncConnection[Any], task_like: str) -> int:
    row = await (
        await db.execute(
            "SELECT max(id) FROM procrastinate.procrastinate_jobs WHERE task_name LIKE %s",
            [task_like],
        )
    ).fetchone()
    assert row is not None and row[0] is not None
    return int(row[0])


async def pending_jobs_of(db: psycopg.AsyncConnection[Any], listing_id: str) -> int:
    row = await (
        await db.execute(
            "SELECT count(*) FROM procrastinate.procrastinate_jobs WHERE status IN "
            "('todo', 'doing') AND (lock = %s OR args -> 'ids' ? %s)",
            [f"listing:{listing_id}", listing_id],
        )
    ).fetchone()
    return int(row[0]) if row else 0


async def reconcile_listings(app: ProcqueueApp) -> Reconciled:
    """One step of the reconciliation of listings, as the periodic job runs it."""
    settings = app.services.settings
    async with app.pool.connection() as conn:
        await conn.set_autocommit(True)
        try:
            return await reconcile_entity(
                conn, search_index(app.services), LISTING, batch_size=1000,
                threshold=settings.bulk_threshold, chunk_size=settings.bulk_chunk_size,
                overrun_after=settings.overrun_after,
            )  # fmt: skip
        finally:
            await conn.set_autocommit(False)


async def test_rls_switched_on_mid_run_fails_the_syncs_with_a_reason_and_deletes_nothing(
    database: str, db: psycopg.AsyncConnection[Any], worker_role: str, worker_settings: Settings
) -> None:
    """Worker running; RLS then hides one row from it; that row is updated by a
    single-row write (a change, for the drain job), then by a many-row statement (a
    bulk job): both jobs fail with the reason, its document stays, its change waits;
    the reconciliation and `verify` delete nothing either (they stop with the same
    reason). RLS off again, the reconciliation heals the stale documents and restarts
    the drain."""
    [hidden, seen] = await insert_listings(db, 2, "before RLS")
    await db.execute(
        "INSERT INTO listings (user_id, title) SELECT %s, 'many ' || g "
        "FROM generate_series(1, 60) AS g",
        [SELLER_ID],
    )
    async with app_with(worker_settings) as app, running_worker(app):
        search = search_index(app.services)

        async def all_indexed() -> bool:
            documents = await indexed_documents(app, LISTING)
            return hidden in documents and seen in documents and len(documents) >= 62

        await eventually(all_indexed)
        async with hidden_from_the_worker(database, worker_role, "public.listings", hidden):
            # One change, for the drain job (the owner writes: it sees every row).
            await db.execute(
                "UPDATE listings SET title = 'changed while hidden' WHERE id = %s", [hidden]
            )
            drain_job = await newest_job(db, "listing:drain")
            await eventually(lambda: ended(database, drain_job))
            document = (await indexed_documents(app, LISTING)).get(hidden, {})
            assert document.get("title") == "before RLS", "the hidden row's document is gone"
            assert await job_status(database, drain_job) == "failed"
            reason = await last_error(database, drain_job)
            assert "RowsHidden" in reason, reason
            assert all(part in reason for part in clear_reason(worker_role)), reason
            assert hidden in await waiting_changes(db, LISTING)  # nothing lost

            # A statement over the bulk threshold: a bulk job with the hidden row in it.
            await db.execute("UPDATE listings SET category = 'bulk while hidden'")
            bulk_job = await newest_job(db, "listing:bulk")
            await eventually(lambda: ended(database, bulk_job))
            documents = await indexed_documents(app, LISTING)
            assert documents.get(hidden, {}).get("title") == "before RLS", "deleted or changed"
            assert len(documents) >= 62
            assert await job_status(database, bulk_job) == "failed"
            reason = await last_error(database, bulk_job)
            assert all(part in reason for part in clear_reason(worker_role)), reason

            # The reconciliation and `verify` read the table too: they stop, never
            # take the hidden row's document for one without a row.
            with pytest.raises(PermanentError, match="nothing was deleted"):
                await reconcile_listings(app)
            async with app.pool.connection() as conn:
                await conn.set_autocommit(True)
                with pytest.raises(PermanentError, match="row-level security"):
                    await verify_entity(conn, search, LISTING)
                await conn.set_autocommit(False)
            assert await pending_jobs_of(db, hidden) == 0
            assert hidden in await indexed_documents(app, LISTING)

        # RLS lifted: the next reconciliation finds the stale documents and syncs them.
        await db.execute("DELETE FROM procqueue.reconcile_cursors")
        # Its change still waits, its drain jobs failed: once the last of them has
        # ended, the reconciliation makes a new one, and repairs the stale documents.
        async def no_drain_running() -> bool:
            row = await (
                await db.execute(
                    "SELECT count(*) FROM procrastinate.procrastinate_jobs"
                    " WHERE task_name = 'listing:drain' AND status IN ('todo', 'doing')"
                )
            ).fetchone()
            return row == (0,)

        await eventually(no_drain_running)
        done = await reconcile_listings(app)
        assert done.drain_restarted and done.repaired

        async def healed() -> bool:
            document = (await indexed_documents(app, LISTING)).get(hidden, {})
            return document.get("title") == "changed while hidden"

        await eventually(healed)
        assert hidden not in await waiting_changes(db, LISTING)


async def test_an_image_only_a_hidden_row_uses_is_never_taken_for_unused(
    database: str, db: psycopg.AsyncConnection[Any], worker_role: str, worker_settings: Settings
) -> None:
    """The cleanup's reference check reads every image column: a row RLS hides would
    make an image in use look orphaned (and be deleted); it raises instead."""
    listing_id = str(uuid.uuid4())
    url = f"https://res.cloudinary.com/demo/image/upload/v1/listings/{listing_id}.jpg"
    await db.execute(
        "INSERT INTO listings (id, user_id, title, main_image_url) VALUES (%s, %s, 'pic', %s)",
        [listing_id, SELLER_ID, url],
    )
    delivery = DeliveryConfig.of("demo")
    asset = parse_delivery_url(url, delivery)
    assert asset is not None
    async with app_with(worker_settings) as app:
        async with app.pool.connection() as conn:
            assert await find_referenced(conn, DEFAULT_ENTITIES, [asset], delivery) == {asset}
        async with hidden_from_the_worker(database, worker_role, "public.listings", listing_id):
            async with app.pool.connection() as conn:
                with pytest.raises(PermanentError, match=r"public\.listings.*nothing was deleted"):
                    await find_referenced(conn, DEFAULT_ENTITIES, [asset], delivery)


async def test_a_notification_hidden_from_the_worker_is_not_taken_for_deleted(
    database: str, db: psycopg.AsyncConnection[Any], worker_role: str, worker_settings: Settings
) -> None:
    """A notification row RLS hides would read as deleted (the job skipped, nothing
    sent); it raises instead."""
    notification_id = str(uuid.uuid4())
    await db.execute(
        "INSERT INTO notifications (id, recipient_user_id, type, data) "
        "VALUES (%s, %s, 'LISTING_APPROVED', '{}')",
        [notification_id, SELLER_ID],
    )
    args = {"notification_id": notification_id}
    table = "public.notifications"
    async with app_with(worker_settings) as app:
        async with hidden_from_the_worker(database, worker_role, table, notification_id):
            async with app.pool.connection() as conn:
                with pytest.raises(PermanentError, match=r"public\.notifications"):
                    await load_notification(conn, args, table)
        async with app.pool.connection() as conn:
            found = await load_notification(conn, args, table)
    assert found is not None and found.recipient == SELLER_ID
