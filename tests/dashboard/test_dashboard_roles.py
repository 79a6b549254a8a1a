"""Dashboard roles (issue 25): an admin acts, a *viewer* (app_metadata.procqueue_role =
"viewer") sees every page and changes nothing. The POST routes and GET pages are read
off the app itself, so a route added later is covered without touching this file.
Signed in through the loopback GoTrue (real signed tokens)."""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import BaseRoute, Mount, Route

from procqueue.dashboard.app import create_app
from procqueue.dashboard.roles import READ_ONLY
from procqueue.dashboard.security import access_for
from procqueue.engine.app import ProcqueueApp
from procqueue.errors import ConfigError
from procqueue.features import Settings
from tests.conftest import make_settings
from tests.support import tasks
from tests.support.dashboard import audit_rows, csrf_from, job_status, post_login
from tests.support.gotrue_server import GoTrueState, gotrue_server
from tests.support.worker import drain

PASSWORD = "roles " + uuid.uuid4().hex
#: Routes that are not pages or actions: sign-in and sign-out (viewers need both),
#: the open metrics and health probes, static files.
NOT_PAGES = {"/login", "/logout", "/metrics", "/healthz", "/favicon.ico"}
POST_FORM = re.compile(r"<form\b[^>]*\bmethod=\"post\"[^>]*>", re.IGNORECASE)
ACTION_ATTR = re.compile(r'\baction="([^"]*)"')


@pytest.fixture(scope="module")
def gotrue() -> Iterator[GoTrueState]:
    with gotrue_server("HS256") as state:
        yield state


@pytest.fixture(scope="module")
def settings(database: str, es_url: str, gotrue: GoTrueState) -> Settings:
    return make_settings(
        database,
        es_url,
        supabase_url=gotrue.url,
        supabase_anon_key=gotrue.anon_key,
        supabase_jwt_secret=gotrue.jwt_secret,
        dashboard_viewer_claim="app_metadata.teams=support",
    )


@pytest.fixture(scope="module")
async def application(settings: Settings) -> AsyncIterator[ProcqueueApp]:
    async with tasks.opened_app(settings) as app:
        yield app


async def failed_job(application: ProcqueueApp) -> int:
    job_id: int = await application.configure_task("test:broken").defer_async(reason="roles")
    await drain(application)
    return job_id


@pytest.fixture(scope="module")
async def jobs(application: ProcqueueApp) -> dict[str, int]:
    """A failed job (retry buttons), a waiting one (cancel button), a succeeded one."""
    done = await application.configure_task("test:flaky").defer_async(failures=0)
    failed = await failed_job(application)
    later = application.configure_task("test:flaky", schedule_in={"hours": 1})
    waiting: int = await later.defer_async(failures=0)
    return {"failed": failed, "waiting": waiting, "succeeded": done}


@contextlib.asynccontextmanager
async def dashboard(settings: Settings) -> AsyncIterator[tuple[Starlette, Any]]:
    """The app and a maker of HTTP clients (each its own cookie jar)."""
    app = create_app(settings, access_for(settings, "0.0.0.0", False))
    async with app.router.lifespan_context(app), contextlib.AsyncExitStack() as stack:

        def client() -> httpx.AsyncClient:
            transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
            http = httpx.AsyncClient(transport=transport, base_url="http://testserver")
            stack.push_async_callback(http.aclose)
            return http

        yield app, client


async def signed_in(
    client: Any, gotrue: GoTrueState, **app_metadata: Any
) -> tuple[httpx.AsyncClient, str]:
    email = f"u-{uuid.uuid4().hex[:8]}@example.com"
    gotrue.add_user(email, PASSWORD, **app_metadata)
    http: httpx.AsyncClient = client()
    response = await post_login(http, email=email, password=PASSWORD)
    assert response.status_code == 303, response.text
    return http, email


def routes(app: Starlette) -> Iterator[Route]:
    """Every Route of the app, inside mounts too."""

    def walk(found: list[BaseRoute]) -> Iterator[Route]:
        for route in found:
            if isinstance(route, Mount):
                yield from walk(route.routes)
            elif isinstance(route, Route):
                yield route

    yield from walk(app.routes)


def concrete(route: Route, job_id: int) -> str:
    """The route's path with its parameters filled: ids with a real job's."""
    path = re.sub(r"\{[^}:]+:int\}", str(job_id), route.path)
    return re.sub(r"\{[^}]+\}", "tests", path)


def post_routes(app: Starlette) -> list[Route]:
    return [r for r in routes(app) if "POST" in (r.methods or set()) and r.path not in NOT_PAGES]


def page_routes(app: Starlette) -> list[Route]:
    return [r for r in routes(app) if "GET" in (r.methods or set()) and r.path not in NOT_PAGES]


def action_forms(html: str) -> list[str]:
    """The targets of the page's POST forms, sign-out aside."""
    targets = [ACTION_ATTR.search(form) for form in POST_FORM.findall(html)]
    return [t.group(1) if t else "?" for t in targets if not t or t.group(1) != "/logout"]


@pytest.mark.parametrize(
    ("app_metadata", "role"),
    [
        ({"procqueue_role": "admin"}, "admin"),
        ({"procqueue_role": "viewer"}, "viewer"),
        ({"role": "admin"}, "admin"),  # PROCQUEUE_DASHBOARD_ADMIN_CLAIM, as before roles
        ({"teams": ["ops", "support"]}, "viewer"),  # PROCQUEUE_DASHBOARD_VIEWER_CLAIM
        ({"role": "admin", "procqueue_role": "viewer"}, "viewer"),  # the named role decides
        ({"role": "editor"}, None),
        ({"procqueue_role": "owner"}, None),
    ],
)
async def test_the_role_comes_from_app_metadata_and_shows_in_the_header(
    settings: Settings,
    gotrue: GoTrueState,
    database: str,
    app_metadata: dict[str, Any],
    role: str | None,
) -> None:
    email = f"r-{uuid.uuid4().hex[:8]}@example.com"
    gotrue.add_user(email, PASSWORD, **app_metadata)
    async with dashboard(settings) as (_, client):
        http = client()
        response = await post_login(http, email=email, password=PASSWORD)
        if role is None:
            assert response.status_code == 401
            assert "not a dashboard admin or viewer" in response.text
            assert (
                "app_metadata.procqueue_role = &#39;admin&#39; or &#39;viewer&#39;" in response.text
            )
            assert (await http.get("/")).status_code == 303
            refused = [r for r in await audit_rows(database) if email in r["actor"]]
            assert [r["action"] for r in refused] == ["sign_in_refused"]
            assert "no dashboard role" in refused[0]["outcome"]
            return
        assert response.status_code == 303, response.text
        header = (await http.get("/")).text.split("</header>")[0]
        badge = re.search(r'<span class="role (\w+)" data-testid="role"[^>]*>(\w+)</span>', header)
        assert badge and badge.groups() == (role, role), header


async def test_a_viewer_is_refused_every_post_route_with_403(
    settings: Settings, gotrue: GoTrueState, jobs: dict[str, int], database: str
) -> None:
    async with dashboard(settings) as (app, client):
        viewer, email = await signed_in(client, gotrue, procqueue_role="viewer")
        token = csrf_from((await viewer.get("/")).text)
        actions = post_routes(app)
        assert {"/jobs/{job_id:int}/retry", "/jobs/{job_id:int}/cancel", "/failures/retry"} <= {
            r.path for r in actions
        }
        for route, job in [(r, jobs[k]) for r in actions for k in ("failed", "waiting")]:
            form = {"csrf_token": token, "scope": "all", "task": "test:broken", "back": "/"}
            response = await viewer.post(concrete(route, job), data=form)
            assert response.status_code == 403, (route.path, response.status_code)
            assert READ_ONLY.replace("'", "&#39;") in response.text, route.path
            assert 'class="error-page"' in response.text and "<header>" in response.text
            # The same refusal through the header a script would send.
            scripted = await viewer.post(
                concrete(route, job), headers={"X-CSRF-Token": token}, data={"scope": "all"}
            )
            assert scripted.status_code == 403, route.path
    assert await job_status(database, jobs["failed"]) == "failed"
    assert await job_status(database, jobs["waiting"]) == "todo"
    refused = [r for r in await audit_rows(database) if email in r["actor"]]
    assert {r["action"] for r in refused} >= {"sign_in", "action_refused"}
    refusals = [r for r in refused if r["action"] == "action_refused"]
    assert len(refusals) == 4 * len(actions) and not any(r["job_ids"] for r in refusals)
    assert {r["target"]["path"] for r in refusals} == {
        concrete(route, jobs[k]) for route in actions for k in ("failed", "waiting")
    }
    assert all(r["target"]["role"] == "viewer" for r in refusals)


async def test_a_viewer_sees_every_page_and_no_action_form(
    settings: Settings, gotrue: GoTrueState, jobs: dict[str, int]
) -> None:
    async with dashboard(settings) as (app, client):
        viewer, _ = await signed_in(client, gotrue, procqueue_role="viewer")
        admin, _ = await signed_in(client, gotrue, procqueue_role="admin")
        pages = page_routes(app)
        assert {"/", "/jobs", "/jobs/{job_id:int}", "/failures", "/audit"} <= {
            r.path for r in pages
        }
        admin_forms: set[str] = set()
        for route, job in [(r, jobs[k]) for r in pages for k in ("failed", "waiting")]:
            path = concrete(route, job)
            seen = await viewer.get(path)
            # A made-up text parameter (an entity's name) may name nothing: its page then.
            made_up = re.search(r"\{[^}:]+(:(str|path))?\}", route.path) is not None
            assert seen.status_code in ((200, 404) if made_up else (200,)), (path, seen)
            assert action_forms(seen.text) == [], path
            assert not re.search(r'data-testid="(retry|cancel)-', seen.text), path
            admin_forms.update(action_forms((await admin.get(path)).text))
        # The same pages show an admin every kind of action form: the check above sees some.
        assert {
            f"/jobs/{jobs['failed']}/retry",
            f"/jobs/{jobs['waiting']}/cancel",
            "/failures/retry",
        } <= admin_forms


async def test_an_admin_still_acts(
    settings: Settings, gotrue: GoTrueState, application: ProcqueueApp, database: str
) -> None:
    job_id = await failed_job(application)
    async with dashboard(settings) as (_, client):
        admin, email = await signed_in(client, gotrue, role="admin")  # the default admin claim
        page = (await admin.get(f"/jobs/{job_id}")).text
        assert f'action="/jobs/{job_id}/retry"' in page
        response = await admin.post(
            f"/jobs/{job_id}/retry", data={"csrf_token": csrf_from(page), "back": "/"}
        )
        assert response.status_code == 303
    assert await job_status(database, job_id) == "todo"
    rows = await audit_rows(database)
    [retry] = [r for r in rows if email in r["actor"] and r["action"] == "retry"]
    assert retry["job_ids"] == [job_id]


def test_a_wrong_viewer_claim_is_one_clear_line(database: str, es_url: str) -> None:
    with pytest.raises(ConfigError, match="PROCQUEUE_DASHBOARD_VIEWER_CLAIM is invalid") as error:
        make_settings(database, es_url, dashboard_viewer_claim="viewer")
    assert "\n" not in str(error.value)
    assert make_settings(database, es_url, dashboard_viewer_claim="").supabase_auth is None
