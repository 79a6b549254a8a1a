"""Every dashboard route over HTTP: signed out, signed in, with and without
the CSRF token; actions change the queue and leave an audit row."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC
from typing import Any

import httpx
import psycopg
import pytest

from procqueue.dashboard.security import access_for
from procqueue.engine.app import ProcqueueApp
from procqueue.errors import ConfigError
from procqueue.features import Settings
from tests.conftest import make_settings
from tests.support import tasks
from tests.support.dashboard import (
    audit_rows,
    csrf_from,
    dashboard_client,
    job_status,
    sign_in,
)
from tests.support.worker import SELLER_ID, drain

SECRET = "admin-secret-" + uuid.uuid4().hex
ENTITY_ID = str(uuid.uuid4())


@pytest.fixture(scope="module")
def settings(database: str, es_url: str) -> Settings:
    return make_settings(database, es_url, dashboard_secret=SECRET)


@pytest.fixture(scope="module")
async def app(settings: Settings) -> AsyncIterator[ProcqueueApp]:
    async with tasks.opened_app(settings) as application:
        yield application


async def defer(app: ProcqueueApp, task: str, **kwargs: Any) -> int:
    job_id: int = await app.configure_task(task).defer_async(**kwargs)
    return job_id


@pytest.fixture(scope="module")
async def failed_job(app: ProcqueueApp) -> int:
    """A job that failed for good, with its error recorded by the real worker."""
    job_id = await defer(app, "test:broken", reason=f"bad data for entity {ENTITY_ID}")
    await drain(app)
    return job_id


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with dashboard_client(settings, access_for(settings, "0.0.0.0", False)) as http:
        yield http


@pytest.fixture
async def admin(client: httpx.AsyncClient) -> httpx.AsyncClient:
    response = await sign_in(client, "alice", SECRET)
    assert response.status_code == 303, response.text
    return client


def pages(job_id: int) -> list[str]:
    return ["/", "/jobs", f"/jobs/{job_id}", "/failures", "/audit", f"/jobs?entity={ENTITY_ID}"]


def test_refuses_to_start_without_a_secret(database: str, es_url: str) -> None:
    bare = make_settings(database, es_url)
    with pytest.raises(ConfigError, match="PROCQUEUE_DASHBOARD_SECRET is not set"):
        access_for(bare, "127.0.0.1", local_only=False)
    with pytest.raises(ConfigError, match="--local-only"):
        access_for(bare, "0.0.0.0", local_only=True)
    assert access_for(bare, "127.0.0.1", local_only=True).open_locally
    short = make_settings(database, es_url, dashboard_secret="short")
    with pytest.raises(ConfigError, match="too short"):
        access_for(short, "0.0.0.0", local_only=False)
    assert not access_for(
        make_settings(database, es_url, dashboard_secret=SECRET), "0.0.0.0", False
    ).open_locally


def test_the_command_refuses_to_start_without_a_secret(database: str) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("PROCQUEUE_")}
    env["PROCQUEUE_DATABASE_URL"] = database
    result = subprocess.run(
        [sys.executable, "-m", "procqueue.cli", "dashboard", "--host", "0.0.0.0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/tmp",
    )
    assert result.returncode == 2
    assert "PROCQUEUE_DASHBOARD_SECRET is not set" in result.stderr
    assert database not in result.stderr


async def test_signed_out_pages_send_to_sign_in(client: httpx.AsyncClient, failed_job: int) -> None:
    for path in pages(failed_job):
        response = await client.get(path)
        assert response.status_code == 303, path
        assert response.headers["location"].startswith("/login?next=%2F"), path
        sign_in_page = await client.get(response.headers["location"])
        assert sign_in_page.status_code == 200
        assert "Admin secret" in sign_in_page.text
        # Nothing of the jobs (args, errors, task names) before sign-in.
        assert "bad data" not in sign_in_page.text and "test:broken" not in sign_in_page.text
    panel = await client.get("/overview/panel")
    assert panel.status_code == 401


async def test_signed_out_actions_are_refused(
    client: httpx.AsyncClient, failed_job: int, database: str
) -> None:
    page = await client.get("/login")
    token = csrf_from(page.text)  # even with a valid pre-sign-in token
    for path, data in [
        (f"/jobs/{failed_job}/retry", {}),
        (f"/jobs/{failed_job}/cancel", {}),
        ("/failures/retry", {"scope": "all"}),
    ]:
        response = await client.post(path, data={"csrf_token": token, **data})
        assert response.status_code == 401, path
    assert await job_status(database, failed_job) == "failed"


async def test_metrics_and_healthz_need_no_session(client: httpx.AsyncClient) -> None:
    metrics = await client.get("/metrics")
    assert metrics.status_code == 200
    assert "procqueue_health_up 1" in metrics.text
    health = await client.get("/healthz")
    assert health.status_code in (200, 503)
    assert health.json()["status"] in ("healthy", "degraded", "unhealthy")


async def test_healthz_tells_a_signed_out_probe_the_status_only(
    client: httpx.AsyncClient, database: str, failed_job: int
) -> None:
    """Issue 22: a probe gets the verdict and its HTTP code, not the report (queue
    counts, task and worker names); a signed-in admin still reads the report."""

    async def probe_and_report() -> tuple[httpx.Response, httpx.Response]:
        client.cookies.clear()
        probe = await client.get("/healthz")
        await sign_in(client, "alice", SECRET)
        return probe, await client.get("/healthz")

    unhealthy = await probe_and_report()  # no worker: unhealthy
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        await conn.execute("INSERT INTO procrastinate.procrastinate_workers DEFAULT VALUES")
        try:
            healthy = await probe_and_report()
        finally:
            await conn.execute("DELETE FROM procrastinate.procrastinate_workers")

    assert unhealthy[0].status_code == 503
    # With a worker: healthy or degraded (200), or unhealthy for what the module's other
    # tests left (failures): the probe's code follows the verdict either way.
    probe, report = healthy
    assert probe.status_code == (503 if report.json()["status"] == "unhealthy" else 200)
    for probe, report in (unhealthy, healthy):
        assert probe.json() == {"status": report.json()["status"]}, probe.text
        assert probe.status_code == report.status_code
        assert len(probe.content) < 40 and "test:broken" not in probe.text
        assert {"reasons", "workers"} <= set(report.json()), report.text
        assert "test:broken" in report.text


async def test_a_wrong_secret_is_refused_and_recorded(
    client: httpx.AsyncClient, database: str, failed_job: int
) -> None:
    response = await sign_in(client, "mallory", "not-the-secret-at-all")
    assert response.status_code == 401
    assert "Wrong secret" in response.text
    assert (await client.get("/jobs")).status_code == 303
    refused = [row for row in await audit_rows(database) if row["action"] == "sign_in_refused"]
    assert refused and refused[-1]["actor"] == "mallory"


async def test_sign_in_without_the_csrf_token_is_refused(client: httpx.AsyncClient) -> None:
    response = await client.post("/login", data={"name": "alice", "secret": SECRET})
    assert response.status_code == 403
    assert (await client.get("/")).status_code == 303


async def test_signed_in_admin_sees_every_page(admin: httpx.AsyncClient, failed_job: int) -> None:
    for path in pages(failed_job):
        response = await admin.get(path)
        assert response.status_code == 200, path
        assert "Content-Security-Policy" in response.headers
        assert SECRET not in response.text
    overview = (await admin.get("/")).text
    assert "<svg" in overview and "tests" in overview and "Workers" in overview
    assert "<svg" in (await admin.get("/overview/panel")).text
    job_page = (await admin.get(f"/jobs/{failed_job}")).text
    assert ENTITY_ID in job_page  # args and the error message
    assert "PermanentError" in job_page and "Traceback" in job_page
    assert "Attempt 1 ·" in job_page and "deferred" in job_page  # error and timeline
    failures = (await admin.get("/failures")).text
    assert "test:broken" in failures and "PermanentError" in failures
    found = (await admin.get(f"/jobs?entity={ENTITY_ID}")).text
    assert f'href="/jobs/{failed_job}"' not in found  # args are {"reason": ...}, not an id
    assert (await admin.get("/jobs/999999999")).status_code == 404


async def test_an_action_without_the_csrf_token_is_refused(
    admin: httpx.AsyncClient, failed_job: int, database: str
) -> None:
    for data in [{}, {"csrf_token": "forged"}]:
        response = await admin.post(f"/jobs/{failed_job}/retry", data=data)
        assert response.status_code == 403
        response = await admin.post("/failures/retry", data={"scope": "all", **data})
        assert response.status_code == 403
    assert await job_status(database, failed_job) == "failed"


async def test_retry_one_job_is_done_and_recorded(
    admin: httpx.AsyncClient, app: ProcqueueApp, database: str
) -> None:
    job_id = await defer(app, "test:broken", reason="retry me")
    await drain(app)
    token = csrf_from((await admin.get("/failures")).text)
    response = await admin.post(
        f"/jobs/{job_id}/retry", data={"csrf_token": token, "back": "/failures"}
    )
    assert response.status_code == 303 and response.headers["location"] == "/failures"
    assert await job_status(database, job_id) == "todo"
    assert "retried 1 job(s)" in (await admin.get("/failures")).text
    row = (await audit_rows(database))[-1]
    assert (row["actor"], row["action"], row["job_ids"]) == ("alice", "retry", [job_id])
    assert row["remote_addr"] == "127.0.0.1" and row["at"] is not None
    # Retrying it again does nothing: it is no longer failed.
    await admin.post(f"/jobs/{job_id}/retry", data={"csrf_token": token})
    assert f"job {job_id} is todo, not failed" in (await admin.get("/failures")).text
    await drain(app)


async def test_retry_a_group_then_all(
    admin: httpx.AsyncClient, app: ProcqueueApp, database: str
) -> None:
    broken = [await defer(app, "test:broken", reason=f"group {n}") for n in range(3)]
    await drain(app)
    token = csrf_from((await admin.get("/failures")).text)
    response = await admin.post(
        "/failures/retry",
        data={
            "csrf_token": token,
            "scope": "group",
            "task": "test:broken",
            "error_type": "procqueue.errors.PermanentError",
        },
    )
    assert response.status_code == 303
    assert {await job_status(database, job_id) for job_id in broken} == {"todo"}
    row = (await audit_rows(database))[-1]
    assert row["action"] == "retry_group" and set(broken) <= set(row["job_ids"])
    assert row["target"] == {"task": "test:broken", "error_type": "procqueue.errors.PermanentError"}
    await drain(app)  # they fail again
    response = await admin.post("/failures/retry", data={"csrf_token": token, "scope": "all"})
    assert response.status_code == 303
    assert {await job_status(database, job_id) for job_id in broken} == {"todo"}
    assert (await audit_rows(database))[-1]["action"] == "retry_all"
    assert (await admin.post("/failures/retry", data={"csrf_token": token})).status_code == 400
    await drain(app)


async def test_cancel_a_waiting_job(
    admin: httpx.AsyncClient, app: ProcqueueApp, database: str, failed_job: int
) -> None:
    from datetime import datetime, timedelta

    later = datetime.now(UTC) + timedelta(hours=1)
    job_id: int = await app.configure_task("test:broken", schedule_at=later).defer_async(
        reason="never runs"
    )
    page = (await admin.get(f"/jobs/{job_id}")).text
    assert f'action="/jobs/{job_id}/cancel"' in page
    token = csrf_from(page)
    response = await admin.post(f"/jobs/{job_id}/cancel", data={"csrf_token": token})
    assert response.status_code == 303
    assert await job_status(database, job_id) == "cancelled"
    row = (await audit_rows(database))[-1]
    assert (row["action"], row["job_ids"], row["outcome"]) == (
        "cancel",
        [job_id],
        f"job {job_id} cancelled",
    )
    # A failed job is not waiting: left alone, and the refusal is recorded too.
    await admin.post(f"/jobs/{failed_job}/cancel", data={"csrf_token": token})
    assert await job_status(database, failed_job) == "failed"
    assert (await audit_rows(database))[-1]["job_ids"] == []


async def test_job_list_pages_by_keyset_and_filters(
    admin: httpx.AsyncClient, database: str
) -> None:
    entity = str(uuid.uuid4())
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        for n in range(120):
            await conn.execute(
                "SELECT procqueue.add_job(%s, %s, 'paging', NULL, NULL, now() + interval '1 day')",
                [f"page:{n % 3}", psycopg.types.json.Jsonb({"id": str(n)})],
            )
        # The entity's jobs: a row job locked on it, a bulk job carrying it.
        await conn.execute(
            "SELECT procqueue.add_job('listing:update', %s, 'paging', %s, NULL, "
            "now() + interval '1 day')",
            [psycopg.types.json.Jsonb({"id": entity}), f"listing:{entity}"],
        )
        await conn.execute(
            "SELECT procqueue.add_job('listing:bulk', %s, 'paging', NULL, NULL, "
            "now() + interval '1 day')",
            [psycopg.types.json.Jsonb({"ids": ["x", entity]})],
        )
    seen: list[int] = []
    url: str | None = "/jobs?queue=paging"
    while url:
        html = (await admin.get(url)).text
        seen += [int(i) for i in _job_ids(html)]
        older = _link(html, "next")
        url = older
    assert len(seen) == 122 and len(set(seen)) == 122 and seen == sorted(seen, reverse=True)
    # Back one page from the second page gives the first page again.
    second = (await admin.get(f"/jobs?queue=paging&before={seen[49]}")).text
    assert _job_ids(second)[0] == str(seen[50])
    newer = _link(second, "prev")
    assert newer is not None
    assert _job_ids((await admin.get(newer)).text) == [str(i) for i in seen[:50]]
    task_page = (await admin.get("/jobs?queue=paging&task=page:1")).text
    assert len(_job_ids(task_page)) == 40
    found = _job_ids((await admin.get(f"/jobs?entity=listings:{entity}")).text)
    assert len(found) == 2  # locked on listing:<entity>, and {"ids": [..., entity]}
    failed_only = (await admin.get("/jobs?status=failed&queue=paging")).text
    assert _job_ids(failed_only) == []


def _job_ids(html: str) -> list[str]:
    import re

    return re.findall(r'<td class="num[^"]*"><a href="/jobs/(\d+)">', html)


def _link(html: str, rel: str) -> str | None:
    import re

    found = re.search(rf'<a href="([^"]+)" rel="{rel}">', html)
    return found.group(1).replace("&amp;", "&") if found else None


async def test_the_entity_filter_shows_a_change_waiting_for_its_drain_job(
    admin: httpx.AsyncClient, database: str
) -> None:
    """A listing's write is a change row, not a job of its own (docs/bulk.md, "The
    write path"): searching for the listing shows the change, and which drain has it."""
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        await conn.execute(
            "INSERT INTO auth.users (id) VALUES (%s) ON CONFLICT DO NOTHING", [SELLER_ID]
        )
        row = await (
            await conn.execute(
                "INSERT INTO listings (user_id, title) VALUES (%s, 'waiting') RETURNING id",
                [SELLER_ID],
            )
        ).fetchone()
        assert row is not None
        listing_id = str(row[0])
        waiting = (await admin.get(f"/jobs?entity=listing:{listing_id}")).text
        assert 'data-testid="waiting-change"' in waiting
        assert "the entity's next drain job syncs it" in waiting
        await conn.execute(
            "UPDATE procqueue.sync_changes SET claimed_by = 4242 WHERE entity_id = %s",
            [listing_id],
        )
        claimed = (await admin.get(f"/jobs?entity={listing_id}")).text
        assert '<a href="/jobs/4242">#4242</a> is syncing it' in claimed
        await conn.execute("DELETE FROM procqueue.sync_changes WHERE entity_id = %s", [listing_id])
        assert (
            'data-testid="waiting-change"'
            not in (await admin.get(f"/jobs?entity={listing_id}")).text
        )


async def test_local_only_needs_no_sign_in_but_still_csrf(
    database: str, es_url: str, failed_job: int
) -> None:
    bare = make_settings(database, es_url)
    async with dashboard_client(bare, access_for(bare, "127.0.0.1", True)) as client:
        for path in pages(failed_job):
            assert (await client.get(path)).status_code == 200, path
        response = await client.post(f"/jobs/{failed_job}/retry", data={})
        assert response.status_code == 403
        assert (await client.get("/login")).status_code == 303


@pytest.mark.parametrize(
    ("path", "says"),
    [
        ("/jobs?task=a%00b", "parameter 'task' contains a NUL byte"),
        ("/jobs?entity=listing:%00", "parameter 'entity' contains a NUL byte"),
        ("/audit?before=99999999999999999999999", "before must be an id between 0 and"),
        ("/jobs?after=-1", "after must be an id between 0 and"),
        ("/jobs?before=soon", "before must be a whole number, not 'soon'"),
        ("/jobs/99999999999999999999999", "job_id must be an id between 0 and"),
    ],
)
async def test_bad_input_answers_400_with_one_line_not_500(
    admin: httpx.AsyncClient, path: str, says: str
) -> None:
    response = await admin.get(path)
    assert response.status_code == 400, response.text
    assert says in response.text and "\n" not in response.text.strip()
