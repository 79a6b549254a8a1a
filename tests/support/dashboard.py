"""Helpers for the dashboard tests: the real app over HTTP (httpx through ASGI,
or a real uvicorn on a free loopback port) and the sign-in dance."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import psycopg
import uvicorn

from procqueue.dashboard.app import create_app
from procqueue.dashboard.security import Access, access_for

CSRF_INPUT = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_from(html: str) -> str:
    found = CSRF_INPUT.search(html)
    assert found, "no CSRF token in the page"
    return found.group(1)


@contextlib.asynccontextmanager
async def dashboard_client(
    settings: Any, access: Access, **options: Any
) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client talking to a fresh dashboard app (lifespan run, pool open);
    `options` go to create_app, and the app is the client's `app` attribute."""
    app = create_app(settings, access, **options)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            client.app = app  # type: ignore[attr-defined]
            yield client


@contextlib.asynccontextmanager
async def exposed_client(settings: Any) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the dashboard as started on a server (0.0.0.0, sign-in needed)."""
    async with dashboard_client(settings, access_for(settings, "0.0.0.0", False)) as client:
        yield client


async def post_login(client: httpx.AsyncClient, **fields: str) -> httpx.Response:
    """Fetch the sign-in page (for its CSRF token) and post the sign-in form."""
    form = await client.get("/login")
    token = csrf_from(form.text)
    return await client.post("/login", data={"csrf_token": token, "next": "/", **fields})


async def sign_in(client: httpx.AsyncClient, name: str, secret: str) -> httpx.Response:
    return await post_login(client, name=name, secret=secret)


@contextlib.asynccontextmanager
async def signed_in_admin(settings: Any, secret: str) -> AsyncIterator[httpx.AsyncClient]:
    """An exposed dashboard's client, signed in as the admin alice with the shared secret."""
    async with exposed_client(settings) as client:
        response = await sign_in(client, "alice", secret)
        assert response.status_code == 303, response.text
        yield client


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def served(settings: Any, access: Access) -> AsyncIterator[str]:
    """The dashboard on a real uvicorn server; yields its base URL."""
    port = free_port()
    config = uvicorn.Config(
        create_app(settings, access), host="127.0.0.1", port=port, log_level="warning"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def job_status(dsn: str, job_id: int) -> str:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        row = await (
            await conn.execute(
                "SELECT status::text FROM procrastinate.procrastinate_jobs WHERE id = %s", [job_id]
            )
        ).fetchone()
    assert row is not None
    return str(row[0])


async def audit_rows(dsn: str) -> list[dict[str, Any]]:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cursor = conn.cursor(row_factory=psycopg.rows.dict_row)
        await cursor.execute("SELECT * FROM procqueue.dashboard_actions ORDER BY id")
        return await cursor.fetchall()
