"""The dashboard's error pages (issue 25): 404, 405, 403 (CSRF), 500 and the database
not answering are pages in the dashboard's layout with one line saying what to do —
never a bare text, a traceback or a secret."""

from __future__ import annotations

import contextlib
import logging
import re
import uuid
from collections.abc import AsyncIterator

import httpx
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from procqueue.dashboard.app import create_app
from procqueue.dashboard.errors import DATABASE_DOWN, NOT_FOUND, SERVER_ERROR, WRONG_METHOD
from procqueue.dashboard.security import SECURITY_HEADERS, access_for
from procqueue.dashboard.views import CSRF_REFUSED
from tests.conftest import make_settings
from tests.support.dashboard import dashboard_client, exposed_client, sign_in
from tests.support.proxy import TcpProxy, started_proxy

SECRET = "errors-secret-" + uuid.uuid4().hex
ERROR_LINE = re.compile(r'<p class="flash bad" role="alert" data-testid="error-message">(.*?)</p>')


def error_line(html: str) -> str:
    """The error page's one line; the page must be in the layout (header, stylesheet)."""
    assert "<header>" in html and "/static/dashboard.css" in html, html[:300]
    found = ERROR_LINE.findall(html)
    assert len(found) == 1, html
    assert "\n" not in found[0] and "Traceback" not in html
    return str(found[0]).replace("&#39;", "'")


@pytest.fixture
async def client(database: str, es_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with exposed_client(make_settings(database, es_url, dashboard_secret=SECRET)) as http:
        yield http


async def test_an_unknown_address_is_a_404_page(client: httpx.AsyncClient) -> None:
    signed_out = await client.get("/no/such/page")
    assert signed_out.status_code == 404
    assert error_line(signed_out.text) == NOT_FOUND
    assert 'href="/failures"' not in signed_out.text  # no navigation before sign-in
    assert (await sign_in(client, "alice", SECRET)).status_code == 303
    signed_in = await client.get("/no/such/page")
    assert signed_in.status_code == 404 and error_line(signed_in.text) == NOT_FOUND
    assert "signed in as <strong>alice</strong>" in signed_in.text  # the header as on any page
    for name, value in SECURITY_HEADERS.items():
        assert signed_in.headers[name] == value


async def test_a_visit_to_an_action_is_a_405_page(client: httpx.AsyncClient) -> None:
    assert (await sign_in(client, "alice", SECRET)).status_code == 303
    response = await client.get("/failures/retry")
    assert response.status_code == 405 and error_line(response.text) == WRONG_METHOD


async def test_a_missing_csrf_token_is_a_403_page(client: httpx.AsyncClient) -> None:
    assert (await sign_in(client, "alice", SECRET)).status_code == 303
    for path in ("/failures/retry", "/logout"):
        response = await client.post(path, data={"scope": "all", "csrf_token": "forged"})
        assert response.status_code == 403, path
        assert error_line(response.text) == CSRF_REFUSED, path
    signed_in_again = await client.post("/login", data={"name": "x", "secret": SECRET})
    assert signed_in_again.status_code == 403
    assert "reload the sign-in page" in error_line(signed_in_again.text)


async def test_an_unexpected_error_is_a_500_page_without_a_traceback(
    fresh_database: str, es_url: str
) -> None:
    """A real fault: the audit table lost a column the page reads (schema drift)."""
    async with await psycopg.AsyncConnection.connect(fresh_database, autocommit=True) as conn:
        await conn.execute(
            "ALTER TABLE procqueue.dashboard_actions RENAME COLUMN outcome TO outcome_gone"
        )
    local = make_settings(fresh_database, es_url)
    app = create_app(local, access_for(local, "127.0.0.1", True))
    async with app.router.lifespan_context(app):
        # The app re-raises after answering (for the server's log): take the answer.
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            assert (await http.get("/")).status_code == 200
            response = await http.get("/audit")
    assert response.status_code == 500
    assert error_line(response.text) == SERVER_ERROR
    assert "outcome" not in response.text and "psycopg" not in response.text
    for name, value in SECURITY_HEADERS.items():
        assert response.headers[name] == value


@contextlib.asynccontextmanager
async def through_proxy(dsn: str) -> AsyncIterator[tuple[str, TcpProxy]]:
    params = conninfo_to_dict(dsn)
    target = f"tcp://{params.get('host') or '127.0.0.1'}:{params.get('port') or 5432}"
    async with started_proxy(target) as proxy:
        yield make_conninfo(dsn, host="127.0.0.1", port=str(proxy.port)), proxy


async def test_a_database_that_does_not_answer_is_a_503_page(
    database: str, es_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with through_proxy(database) as (dsn, proxy):
        local = make_settings(dsn, es_url)
        async with dashboard_client(local, access_for(local, "127.0.0.1", True)) as http:
            assert (await http.get("/jobs")).status_code == 200
            await proxy.go_down()
            with caplog.at_level(logging.ERROR, logger="procqueue.dashboard.errors"):
                response = await http.get("/jobs")
    assert response.status_code == 503
    assert error_line(response.text) == DATABASE_DOWN
    [logged] = [r for r in caplog.records if r.name == "procqueue.dashboard.errors"]
    assert "the database does not answer" in logged.getMessage() and logged.exc_info is None
