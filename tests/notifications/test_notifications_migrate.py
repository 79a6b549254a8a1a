"""`procqueue migrate` attaches the notification trigger to the configured table."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from procqueue.errors import MigrationError
from procqueue.migrate import migrate, plan_from_scratch, render
from procqueue.settings import SchemaConfig


def test_trigger_goes_on_the_configured_table(database: str) -> None:
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute("CREATE TABLE public.alerts (LIKE public.notifications INCLUDING DEFAULTS)")
        user = str(uuid.uuid4())
        conn.execute("INSERT INTO auth.users (id, email) VALUES (%s, 'a@example.com')", [user])
    steps = migrate(database, SchemaConfig(notifications_table="public.alerts"))
    assert "notification trigger on public.alerts" in [step.description for step in steps]
    with psycopg.connect(database, autocommit=True) as conn:
        row = conn.execute(
            "INSERT INTO public.alerts (recipient_user_id, type) VALUES (%s, 'NEW_OFFER') "
            "RETURNING id::text",
            [user],
        ).fetchone()
        assert row is not None
        tasks = conn.execute(
            "SELECT task_name, queue_name FROM procrastinate.procrastinate_jobs "
            "WHERE args ->> 'notification_id' = %s",
            [row[0]],
        ).fetchall()
    assert tasks == [("notification:push", "notifications")]


def test_a_missing_table_is_skipped_and_a_wrong_one_is_refused(database: str) -> None:
    steps = migrate(database, SchemaConfig(notifications_table="public.no_such_table"))
    assert "no table public.no_such_table: no notification trigger attached" in [
        step.description for step in steps
    ]
    with pytest.raises(MigrationError, match="has no column\\(s\\) recipient_user_id, type, data"):
        migrate(database, SchemaConfig(notifications_table="public.push_tokens"))


def test_the_from_scratch_script_attaches_the_trigger() -> None:
    script = render(plan_from_scratch(SchemaConfig()))
    assert "CREATE OR REPLACE TRIGGER procqueue_notify" in script
    assert 'AFTER INSERT ON "public"."notifications"' in script
    assert "CREATE FUNCTION procqueue.notify(" in script
