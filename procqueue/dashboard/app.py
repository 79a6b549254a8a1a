"""The dashboard's Starlette app: pages, actions, static assets, and the
`/metrics` + `/healthz` routes of procqueue.queue.server (reachable
without a session: signed out, `/healthz` answers its status only), all on one
small connection pool."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jinja2
import psycopg
import uvicorn
from psycopg_pool import AsyncConnectionPool
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from procqueue.dashboard import jobs_views
from procqueue.dashboard.errors import error_handlers
from procqueue.dashboard.overview_snapshots import OverviewSnapshots
from procqueue.dashboard.security import SECURITY_HEADERS, Access, current_admin
from procqueue.dashboard.signin_limits import SignInLimiter
from procqueue.dashboard.supabase_auth import SupabaseAuth
from procqueue.dashboard.views import REFRESH_SECONDS, Dashboard
from procqueue.engine.connections import async_pool, pool_lifespan
from procqueue.engine.preflight import RUN_MIGRATE
from procqueue.features import Settings, features
from procqueue.queue.health import human_bytes
from procqueue.queue.server import HealthSource, health_routes
from procqueue.redaction import redact

HERE = Path(__file__).resolve().parent
TEMPLATES_DIR = HERE / "templates"
STATIC_DIR = HERE / "static"
SESSION_COOKIE = "procqueue_dashboard"
FAVICON = "/static/favicon.svg"
POOL_TIMEOUT = 10.0  # seconds a request waits for a database connection
#: What Postgres answers when the queue's schemas, tables or functions are missing.
NOT_MIGRATED = (
    psycopg.errors.UndefinedTable,
    psycopg.errors.UndefinedFunction,
    psycopg.errors.InvalidSchemaName,
)

logger = logging.getLogger(__name__)


class SecurityHeaders:
    """Adds a strict CSP and friends to every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.headers = [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *self.headers]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _timestamp(value: datetime | None) -> str:
    if value is None:
        return "-"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0.0, float(seconds))
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _since(value: datetime | None) -> str:
    if value is None:
        return "-"
    return _age((datetime.now(UTC) - value).total_seconds()) + " ago"


def _duration(value: timedelta | None) -> str:
    """An attempt's run time: milliseconds under a second, else as `age`."""
    if value is None:
        return "-"
    seconds = value.total_seconds()
    return (
        f"{seconds * 1000:.0f} ms"
        if seconds < 1
        else f"{seconds:.1f} s"
        if seconds < 90
        else _age(seconds)
    )


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def make_templates(settings: Settings) -> Jinja2Templates:
    secrets = settings.secret_values()
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,
    )
    # The time a page is drawn at: a waiting job due later reads "scheduled".
    env.globals["utcnow"] = lambda: datetime.now(UTC)
    env.filters.update(
        ts=_timestamp,
        age=_age,
        since=_since,
        percent=_percent,
        duration=_duration,
        bytes=human_bytes,
        short_type=lambda value: (value or "").rsplit(".", 1)[-1] or "(no error recorded)",
        # Defence in depth: error records are redacted when written; redact again.
        redact=lambda value: redact(str(value), secrets) if value is not None else "",
        compact_json=lambda value: redact(
            json.dumps(value, ensure_ascii=False, separators=(", ", ": "), default=str), secrets
        ),
    )
    # Fail closed: a template rendered without Dashboard.render shows no action form.
    env.globals.update(can_act=False, role=None)
    return Jinja2Templates(env=env)


async def _configure(conn: psycopg.AsyncConnection[Any]) -> None:
    # Every dashboard query is a handful of index probes; JIT compiling them
    # would cost ~90 ms each (measured: benchmarks/dashboard_jobs.py).
    await conn.execute("SET jit = off")


async def _not_migrated(request: Request, error: Exception) -> Response:
    """Any page or action on a database `procqueue migrate` never ran on (or not
    fully): one line for the admin and one for the log, no traceback."""
    found = error.diag.message_primary if isinstance(error, psycopg.Error) else None
    line = f"the queue is not installed in this database ({found or error}): {RUN_MIGRATE}"
    logger.error("dashboard %s %s: %s", request.method, request.url.path, line)
    return PlainTextResponse(line, status_code=503)


async def _favicon(request: Request) -> Response:
    return RedirectResponse(FAVICON, status_code=301)


def _health_routes(health: HealthSource, dashboard: Dashboard) -> list[Route]:
    """`/metrics` as procqueue.queue.server serves it, and its `/healthz` with the
    same verdict and HTTP code (200 healthy or degraded, 503 unhealthy) for anyone,
    a load balancer's probe say, as `{"status": ...}` only: the report behind it
    (reasons, queues, task and worker names, error counts) is for a signed-in admin."""
    routes = health_routes(health)
    report = next(route.endpoint for route in routes if route.path == "/healthz")

    async def healthz(request: Request) -> Response:
        answer: Response = await report(request)
        try:
            admin = await current_admin(request, dashboard.access, dashboard.pool)
        except psycopg.Error:  # the database is away: the verdict says so already
            admin = None
        if admin is not None:
            return answer
        status = json.loads(bytes(answer.body))["status"]
        return JSONResponse({"status": status}, status_code=answer.status_code)

    return [Route("/healthz", healthz) if route.path == "/healthz" else route for route in routes]


def create_app(
    settings: Settings,
    access: Access,
    clock: Callable[[], float] = time.monotonic,
    overview_clock: Callable[[], float] = time.monotonic,
) -> Starlette:
    """The dashboard app; `clock` (monotonic seconds) times sign-in lock-outs,
    `overview_clock` the overview's snapshot refreshes (`app.state.overview_snapshots`)."""
    # Through a transaction pooler a session SET would reach other clients of the
    # pooled server connection: the dashboard then leaves jit as the server has it.
    pooled = settings.uses_transaction_pooler
    pool: AsyncConnectionPool[Any] = async_pool(
        settings.dsn,
        transaction_pooler=pooled,
        application_name="procqueue-dashboard",
        autocommit=True,
        min_size=1,
        max_size=4,
        # With the database away a page says so (errors.py) after this long, not 30 s.
        timeout=POOL_TIMEOUT,
        configure=None if pooled else _configure,
    )
    health = HealthSource(settings.health, pool)
    snapshots = OverviewSnapshots(health, REFRESH_SECONDS, clock=overview_clock)
    specs = tuple(
        spec for feature in features() for spec in feature.job_specs(settings.schema_config())
    )
    dashboard = Dashboard(
        settings,
        access,
        pool,
        health,
        make_templates(settings),
        specs,
        limiter=SignInLimiter(clock),
        supabase=SupabaseAuth(access.supabase, clock) if access.supabase else None,
        overview_snapshots=snapshots,
    )
    open_pool = pool_lifespan(pool)

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        async with open_pool(app), snapshots.running():
            yield

    starlette = Starlette(
        routes=[
            *_health_routes(health, dashboard),
            *jobs_views.routes(dashboard),  # the job list, job page, actions on jobs
            *dashboard.routes(),
            Route("/favicon.ico", _favicon),
            Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
        ],
        middleware=[
            Middleware(SecurityHeaders),
            Middleware(
                SessionMiddleware,
                secret_key=access.session_key,
                session_cookie=SESSION_COOKIE,
                max_age=int(access.session_lifetime.total_seconds()),
                same_site="strict",
                https_only=access.cookie_secure,
            ),
        ],
        exception_handlers={
            **error_handlers(dashboard),
            **dict.fromkeys(NOT_MIGRATED, _not_migrated),
        },
        lifespan=lifespan,
    )
    starlette.state.overview_snapshots = snapshots
    return starlette


def make_server(settings: Settings, access: Access, host: str, port: int) -> uvicorn.Server:
    config = uvicorn.Config(
        create_app(settings, access),
        host=host,
        port=port,
        log_level="warning",
        lifespan="on",
        proxy_headers=False,
    )
    return uvicorn.Server(config)
