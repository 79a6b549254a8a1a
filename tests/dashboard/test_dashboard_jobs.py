"""The job list's filters and search, the job page, and the actions on jobs (one, a
selection, everything matching after a confirmation) over HTTP, each audited; states
read true (postponed, scheduled, discarded) in the list and on the job page."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
from psycopg.types.json import Jsonb

from procqueue.dashboard.security import access_for
from procqueue.engine.app import ProcqueueApp
from procqueue.features import Settings
from procqueue.queue.operations import failed_jobs
from tests.conftest import make_settings
from tests.support import tasks
from tests.support.dashboard import (
    audit_rows,
    csrf_from,
    dashboard_client,
    job_status,
    signed_in_admin,
)
from tests.support.worker import drain

SECRET = "jobs-secret-" + uuid.uuid4().hex
ROW = re.compile(r'<tr class="job" data-job-id="(\d+)">')


@pytest.fixture(scope="module")
def settings(database: str, es_url: str) -> Settings:
    return make_settings(database, es_url, dashboard_secret=SECRET)


@pytest.fixture(scope="module")
async def app(settings: Settings) -> AsyncIterator[ProcqueueApp]:
    async with tasks.opened_app(settings) as application:
        yield application


@pytest.fixture
async def admin(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with signed_in_admin(settings, SECRET) as client:
        yield client


def queue_name() -> str:
    """A queue of the test's own: its filters see only its jobs."""
    return f"q{uuid.uuid4().hex[:10]}"


async def add(
    database: str, queue: str, task: str = "demo:task", *, status: str = "todo", **options: Any
) -> int:
    """A job through procqueue.add_job (the triggers' path), then in `status`."""
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        cursor = await conn.execute(
            "SELECT procqueue.add_job(%s, %s, %s, %s, NULL, %s)",
            [
                task,
                Jsonb(options.get("args", {"id": uuid.uuid4().hex})),
                queue,
                options.get("lock"),
                options.get("run_at", datetime.now(UTC)),
            ],
        )
        row = await cursor.fetchone()
        assert row is not None
        job_id: int = row[0]
        if status == "cancelled":
            await conn.execute(
                "SELECT procrastinate.procrastinate_cancel_job_v1(%s, false, false)", [job_id]
            )
        elif status != "todo":
            await conn.execute(
                "UPDATE procrastinate.procrastinate_jobs SET status = 'doing' WHERE id = %s",
                [job_id],
            )
        if status not in ("todo", "doing", "cancelled"):
            await conn.execute(
                "SELECT procrastinate.procrastinate_finish_job_v1("
                "%s, %s::procrastinate.procrastinate_job_status, false)",
                [job_id, status],
            )
        return job_id


async def postpone(database: str, job_id: int, reason: str) -> None:
    """Claim a waiting job as a worker does, then postpone it (migration 0018)."""
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        await conn.execute(
            "UPDATE procrastinate.procrastinate_jobs SET status = 'doing' WHERE id = %s", [job_id]
        )
        await conn.execute(
            "SELECT procqueue.postpone_job(%s, now() + interval '1 hour', %s)", [job_id, reason]
        )


async def broken_jobs(app: ProcqueueApp, count: int, reason: str) -> list[int]:
    """Jobs that failed for good through the real worker, their errors recorded."""
    ids = []
    for n in range(count):
        job_id: int = await app.configure_task("test:broken").defer_async(reason=f"{reason} {n}")
        ids.append(job_id)
    await drain(app, queues=["tests"], concurrency=1)
    return ids


async def listed(admin: httpx.AsyncClient, url: str) -> list[int]:
    response = await admin.get(url)
    assert response.status_code == 200, response.text
    return [int(found) for found in ROW.findall(response.text)]


async def token(admin: httpx.AsyncClient) -> str:
    return csrf_from((await admin.get("/jobs")).text)


# Filters -----------------------------------------------------------------------


async def test_each_state_filter_reads_true(
    admin: httpx.AsyncClient, app: ProcqueueApp, database: str
) -> None:
    queue = queue_name()
    waiting = await add(database, queue)
    later = await add(database, queue, run_at=datetime.now(UTC) + timedelta(hours=2))
    postponed = await add(database, queue)
    await postpone(database, postponed, "elasticsearch: circuit open")
    running = await add(database, queue, status="doing")
    done = await add(database, queue, status="succeeded")
    failed = await add(database, queue, status="failed")
    cancelled = await add(database, queue, status="cancelled")
    expected = {
        "todo": [postponed, later, waiting],
        "scheduled": [later],
        "postponed": [postponed],
        "doing": [running],
        "succeeded": [done],
        "failed": [failed],
        "cancelled": [cancelled],
        "discarded": [],
    }
    for state, ids in expected.items():
        assert await listed(admin, f"/jobs?queue={queue}&state={state}") == ids, state
    # Each row's state badge says what it is: the postponed job never reads succeeded.
    html = (await admin.get(f"/jobs?queue={queue}")).text
    for job_id, state in ((postponed, "postponed"), (later, "scheduled"), (done, "succeeded")):
        row = html[html.index(f'data-job-id="{job_id}"') :].split("</tr>", 1)[0]
        assert f'<span class="status {state}"' in row, (job_id, row)
    page = (await admin.get(f"/jobs/{postponed}")).text
    assert f'<h1>Job {postponed} <span class="status postponed"' in page
    assert "Postponed: elasticsearch: circuit open" in page and "succeeded" not in page
    # The old parameter name still works (links made before `state`), live refresh too.
    assert await listed(admin, f"/jobs?queue={queue}&status=scheduled") == [later]
    html = (await admin.get(f"/jobs?queue={queue}&status=scheduled")).text
    refresh = re.search(r'data-refresh="([^"]+)"', html)
    assert refresh is not None
    assert await listed(admin, refresh.group(1).replace("&amp;", "&")) == [later]


async def test_task_queue_entity_search_and_time_filters(
    admin: httpx.AsyncClient, app: ProcqueueApp, database: str
) -> None:
    queue = queue_name()
    entity = str(uuid.uuid4())
    plain = await add(database, queue, "demo:plain", args={"id": "nothing-special"})
    row_job = await add(
        database, queue, "listing:update", args={"id": entity}, lock=f"listing:{entity}"
    )
    bulk = await add(database, queue, "listing:bulk", args={"ids": ["x", entity]})
    needle = await add(database, queue, "demo:plain", args={"note": "Needle_in 50% hay"})
    [failed] = await broken_jobs(app, 1, f"partner refused {queue} with 422")
    assert await listed(admin, f"/jobs?queue={queue}&task=demo:plain") == [needle, plain]
    assert await listed(admin, f"/jobs?queue={queue}") == [needle, bulk, row_job, plain]
    assert await listed(admin, f"/jobs?entity={entity}") == [bulk, row_job]
    assert await listed(admin, f"/jobs?entity=listing:{entity}") == [bulk, row_job]
    # Search: in args (case-insensitive, % and _ literal) and in recorded error text.
    assert await listed(admin, f"/jobs?queue={queue}&q=needle_IN") == [needle]
    assert await listed(admin, f"/jobs?queue={queue}&q=50%25 hay") == [needle]
    assert await listed(admin, f"/jobs?queue={queue}&q=n_edle") == []
    assert await listed(admin, f"/jobs?q=refused {queue}") == [failed]
    assert failed in await listed(admin, "/jobs?q=PermanentError&task=test:broken")
    assert await listed(admin, f"/jobs?q=PermanentError&queue={queue}") == []
    # Time range: queued since / until (an absolute time or an age).
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        await conn.execute(
            # Ids grow with the time jobs are queued: this one and all before it, older.
            "UPDATE procrastinate.procrastinate_events SET at = at - interval '3 days'"
            " WHERE job_id <= %s",
            [plain],
        )
    assert plain not in await listed(admin, f"/jobs?queue={queue}&since=1d")
    assert await listed(admin, f"/jobs?queue={queue}&until=2d") == [plain]
    then = (datetime.now(UTC) - timedelta(days=2)).strftime("%Y-%m-%dT%H:%M")
    assert await listed(admin, f"/jobs?queue={queue}&until={then}") == [plain]
    assert await listed(admin, f"/jobs?queue={queue}&since={then}&task=demo:plain") == [needle]
    # Values it cannot use: one line, what to do.
    for bad, says in (
        ("state=finished", "state must be one of todo, scheduled, postponed"),
        ("since=yesterday", "since must be a time (2026-12-07T14:00, UTC unless given)"),
    ):
        response = await admin.get(f"/jobs?{bad}")
        assert response.status_code == 400 and says in response.text, response.text


async def test_rows_show_duration_and_attempts_and_refresh_alone(
    admin: httpx.AsyncClient, app: ProcqueueApp, database: str, settings: Settings
) -> None:
    [failed] = await broken_jobs(app, 1, "duration")
    html = (await admin.get("/jobs?state=failed&task=test:broken&q=duration")).text
    row = html[html.index(f'data-job-id="{failed}"') :].split("</tr>", 1)[0]
    assert re.search(r'<td class="num attempts"[^>]*>1</td>', row), row
    assert re.search(r'<td class="num duration"[^>]*>\d+ ms</td>', row), row
    # The partial the page refreshes from: the same rows, without the page around them.
    rows = await admin.get("/jobs/rows?state=failed&task=test:broken&q=duration")
    assert rows.status_code == 200 and f'data-job-id="{failed}"' in rows.text
    assert "<html" not in rows.text
    async with dashboard_client(settings, access_for(settings, "0.0.0.0", False)) as anonymous:
        assert (await anonymous.get("/jobs/rows")).status_code == 401


async def test_a_search_reads_a_window_and_offers_to_go_on(
    admin: httpx.AsyncClient, database: str
) -> None:
    """A search looks through SEARCH_WINDOW jobs per page, then offers to go on."""
    from procqueue.dashboard.store import SEARCH_WINDOW

    queue = queue_name()
    old = await add(database, queue, args={"word": "rare"})
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        await conn.execute(
            "SELECT procqueue.add_job('demo:task', jsonb_build_object('word', 'common'), %s,"
            " NULL, NULL, now()) FROM generate_series(1, %s)",
            [queue, SEARCH_WINDOW],
        )
    html = (await admin.get(f"/jobs?queue={queue}&q=rare")).text
    assert ROW.findall(html) == [] and 'data-testid="search-window"' in html
    older = re.search(r'<a href="([^"]+)">search older jobs', html)
    assert older is not None
    assert await listed(admin, older.group(1).replace("&amp;", "&")) == [old]


# The job page ------------------------------------------------------------------


async def test_job_page_shows_args_errors_timing_and_the_entity_story(
    admin: httpx.AsyncClient, app: ProcqueueApp, database: str
) -> None:
    job_id: int = await app.configure_task("test:flaky").defer_async(failures=2, message="busy")
    await drain(app, queues=["tests"], concurrency=1)
    assert await job_status(database, job_id) == "succeeded"
    page = (await admin.get(f"/jobs/{job_id}")).text
    assert "Errors (2)" in page and "busy (attempt 1)" in page and "busy (attempt 2)" in page
    assert page.count("<summary>Traceback (") == 2 and "in flaky" in page
    assert "Succeeded at " in page and "&#34;failures&#34;: 2" in page
    timing = page[page.index('data-testid="timing"') :].split("</dl>", 1)[0]
    for label in ("queued", "started", "finished", "duration", "next attempt"):
        assert f"<dt>{label}</dt>" in timing
    assert re.search(r"<dt>duration</dt><dd>\d+ ms", timing), timing
    assert 'data-testid="job-worker"' in page
    entity = str(uuid.uuid4())
    sync = await add(
        database, queue_name(), "listing:update", args={"id": entity}, lock=f"listing:{entity}"
    )
    page = (await admin.get(f"/jobs/{sync}")).text
    assert f'href="/entities/listing/{entity}"' in page
    assert "next attempt</dt><dd>now: as soon as a worker is free" in page


# Actions -----------------------------------------------------------------------


async def test_discard_one_job_and_it_leaves_failures_and_health(
    admin: httpx.AsyncClient, app: ProcqueueApp, database: str
) -> None:
    reason = f"unknown entity {uuid.uuid4()}"
    ids = await broken_jobs(app, 3, reason)

    async def failed_counted() -> tuple[int, int]:
        """Failures as the health verdict (task_stats) and the overview (queue_stats) count."""
        async with await psycopg.AsyncConnection.connect(database) as conn:
            row = await (
                await conn.execute(
                    "SELECT (SELECT coalesce(sum(failed), 0) FROM procqueue.task_stats('1 hour')"
                    "        WHERE task_name = 'test:broken'),"
                    "       (SELECT coalesce(sum(failed_last_hour), 0) FROM procqueue.queue_stats()"
                    "        WHERE queue_name = 'tests')"
                )
            ).fetchone()
        assert row is not None
        return int(row[0]), int(row[1])

    before = await failed_counted()
    csrf = await token(admin)
    response = await admin.post(
        f"/jobs/{ids[0]}/discard", data={"csrf_token": csrf, "back": f"/jobs/{ids[0]}"}
    )
    assert response.status_code == 303
    page = (await admin.get(f"/jobs/{ids[0]}")).text
    assert f"job {ids[0]} discarded" in page and '<span class="status discarded"' in page
    assert "discarded by alice" in page and f'action="/jobs/{ids[0]}/retry"' not in page
    assert await job_status(database, ids[0]) == "failed"  # kept for the record
    assert await failed_counted() == (before[0] - 1, before[1] - 1)
    assert ids[0] not in await listed(admin, "/jobs?state=failed&task=test:broken")
    assert ids[0] in await listed(admin, "/jobs?state=discarded")
    assert f"/jobs/{ids[0]}" not in (await admin.get("/failures")).text
    async with await psycopg.AsyncConnection.connect(database) as conn:
        assert ids[0] not in [row["id"] for row in await failed_jobs(conn, None, 500)]
    row = (await audit_rows(database))[-1]
    assert (row["actor"], row["action"], row["job_ids"], row["target"]) == (
        "alice", "discard", [ids[0]], {"job_id": ids[0]},
    )  # fmt: skip
    # Not again, and never retried, even by "retry all".
    await admin.post(f"/jobs/{ids[0]}/discard", data={"csrf_token": csrf})
    assert f"job {ids[0]} was discarded already" in (await admin.get("/jobs")).text
    await admin.post("/failures/retry", data={"csrf_token": csrf, "scope": "all"})
    assert await job_status(database, ids[0]) == "failed"
    assert {await job_status(database, job_id) for job_id in ids[1:]} == {"todo"}
    await drain(app, queues=["tests"], concurrency=1)


async def test_delete_one_job_and_refuse_a_running_one(
    admin: httpx.AsyncClient, app: ProcqueueApp, database: str
) -> None:
    [failed] = await broken_jobs(app, 1, "delete me")
    queue = queue_name()
    running = await add(database, queue, status="doing")
    csrf = await token(admin)
    response = await admin.post(f"/jobs/{failed}/delete", data={"csrf_token": csrf})
    assert response.status_code == 303 and response.headers["location"] == "/"
    assert (await admin.get(f"/jobs/{failed}")).status_code == 404
    async with await psycopg.AsyncConnection.connect(database) as conn:
        for table in ("procqueue.job_errors", "procrastinate.procrastinate_events"):
            counted = await (
                await conn.execute(f"SELECT count(*) FROM {table} WHERE job_id = %s", [failed])
            ).fetchone()
            assert counted == (0,), table
    assert (await audit_rows(database))[-1]["action"] == "delete"
    await admin.post(f"/jobs/{running}/delete", data={"csrf_token": csrf})
    assert await job_status(database, running) == "doing"
    refusal = f"job {running} is running: running jobs are not deleted"
    assert refusal in (await admin.get("/jobs")).text
    row = (await audit_rows(database))[-1]
    assert row["action"] == "delete" and row["job_ids"] == [] and refusal in row["outcome"]


async def test_actions_on_a_selection(
    admin: httpx.AsyncClient, app: ProcqueueApp, database: str
) -> None:
    ids = await broken_jobs(app, 3, "selected")
    queue = queue_name()
    waiting = [await add(database, queue) for _ in range(2)]
    csrf = await token(admin)
    data: dict[str, Any] = {"csrf_token": csrf, "verb": "retry", "job": [*ids[:2], waiting[0]]}
    response = await admin.post("/jobs/selected", data={**data, "back": "/jobs?state=failed"})
    assert response.status_code == 303 and response.headers["location"] == "/jobs?state=failed"
    assert [await job_status(database, job_id) for job_id in ids] == ["todo", "todo", "failed"]
    text = (await admin.get("/jobs")).text
    assert "retried 2 job(s), 1 left alone" in text
    assert f"job {waiting[0]} is todo, not failed: not retried" in text
    row = (await audit_rows(database))[-1]
    assert (row["action"], row["job_ids"], row["target"]) == (
        "retry_many", sorted(ids[:2]), {"jobs": 3, "selection": 3},
    )  # fmt: skip
    await admin.post("/jobs/selected", data={**data, "verb": "cancel", "job": waiting})
    assert {await job_status(database, job_id) for job_id in waiting} == {"cancelled"}
    assert (await audit_rows(database))[-1]["action"] == "cancel_many"
    await admin.post("/jobs/selected", data={**data, "verb": "discard", "job": [ids[2]]})
    assert ids[2] in await listed(admin, "/jobs?state=discarded")
    await admin.post("/jobs/selected", data={**data, "verb": "delete", "job": waiting})
    assert [await listed(admin, f"/jobs?queue={queue}")] == [[]]
    assert (await audit_rows(database))[-1]["action"] == "delete_many"
    # Nothing ticked, or no verb: told so, nothing done.
    await admin.post("/jobs/selected", data={"csrf_token": csrf, "verb": "retry"})
    assert "no job selected: tick the jobs first" in (await admin.get("/jobs")).text
    response = await admin.post("/jobs/selected", data={"csrf_token": csrf, "job": ids[0]})
    assert response.status_code == 400 and "verb must be one of" in response.text
    assert (await admin.post("/jobs/selected", data={"verb": "delete"})).status_code == 403
    await drain(app, queues=["tests"], concurrency=1)


async def test_actions_on_everything_matching_after_a_confirmation(
    admin: httpx.AsyncClient, app: ProcqueueApp, database: str
) -> None:
    queue = queue_name()
    waiting = [await add(database, queue, "demo:many") for _ in range(3)]
    other = await add(database, queue, "demo:other")
    confirm = await admin.get(f"/jobs/confirm?verb=cancel&queue={queue}&task=demo:many")
    assert confirm.status_code == 200
    assert re.search(r"<strong>3</strong> jobs match", confirm.text), confirm.text
    form = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', confirm.text))
    assert form["expected"] == "3" and form["task"] == "demo:many" and form["verb"] == "cancel"
    # The match set changes before the admin confirms: nothing done, the new count shown.
    late = await add(database, queue, "demo:many")
    changed = await admin.post("/jobs/matching", data=form)
    assert changed.status_code == 409
    assert "matched 3 jobs when you confirmed; it matches 4 now" in changed.text
    assert {await job_status(database, job_id) for job_id in [*waiting, late]} == {"todo"}
    form = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', changed.text))
    done = await admin.post("/jobs/matching", data=form)
    assert done.status_code == 303
    assert {await job_status(database, job_id) for job_id in [*waiting, late]} == {"cancelled"}
    assert await job_status(database, other) == "todo"
    row = (await audit_rows(database))[-1]
    assert row["action"] == "cancel_many" and sorted(row["job_ids"]) == [*waiting, late]
    assert row["target"] == {
        "jobs": 4, "matched": 4, "filter": {"queue": queue, "task": "demo:many"},
    }  # fmt: skip
    # Delete everything matching (the cancelled ones): the count is what it takes.
    confirm = await admin.get(f"/jobs/confirm?verb=delete&queue={queue}&state=cancelled")
    assert "<strong>4</strong> jobs match" in confirm.text
    form = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', confirm.text))
    assert (await admin.post("/jobs/matching", data=form)).status_code == 303
    assert await listed(admin, f"/jobs?queue={queue}") == [other]
    assert (await audit_rows(database))[-1]["action"] == "delete_many"
    # Retry of everything failed matching a search: only failed (not discarded) ones.
    ids = await broken_jobs(app, 2, f"matching {queue}")
    confirm = await admin.get(f"/jobs/confirm?verb=retry&q=matching {queue}")
    assert "<strong>2</strong> jobs match" in confirm.text
    form = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', confirm.text))
    assert (await admin.post("/jobs/matching", data=form)).status_code == 303
    assert {await job_status(database, job_id) for job_id in ids} == {"todo"}
    # Discard everything matching a search among failed jobs: they leave state=failed.
    lost = await broken_jobs(app, 2, f"unknown task {queue}")
    confirm = await admin.get(f"/jobs/confirm?verb=discard&state=failed&q=unknown task {queue}")
    assert "<strong>2</strong> jobs match" in confirm.text
    discard_form = dict(
        re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', confirm.text)
    )
    assert (await admin.post("/jobs/matching", data=discard_form)).status_code == 303
    assert sorted(await listed(admin, f"/jobs?state=discarded&q={queue}")) == lost
    row = (await audit_rows(database))[-1]
    assert row["action"] == "discard_many" and sorted(row["job_ids"]) == lost
    unconfirmed = {key: value for key, value in form.items() if key != "expected"}
    response = await admin.post("/jobs/matching", data=unconfirmed)
    assert response.status_code == 400 and "the count you confirmed is missing" in response.text
    nothing = await admin.get(f"/jobs/confirm?verb=discard&queue={queue}")
    assert "<strong>0</strong> jobs match" in nothing.text and "Nothing to do" in nothing.text
    await drain(app, queues=["tests"], concurrency=1)
