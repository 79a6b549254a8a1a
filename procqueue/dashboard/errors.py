"""The dashboard's error pages: in its layout, one line saying what went wrong and
what to do. 404 and 405 (no such page), the database not answering (503), and
anything unexpected (500; Starlette's ServerErrorMiddleware logs the traceback, the
page shows none). 403s (CSRF, a viewer's action) come from views.py's `@action`."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
from psycopg_pool import PoolTimeout
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from procqueue.dashboard.security import SECURITY_HEADERS
from procqueue.dashboard.views import Dashboard, signed_in

NOT_FOUND = "There is no page at this address: check it, or start again from the overview."
WRONG_METHOD = "This address only answers the page's own buttons: go back and use them."
DATABASE_DOWN = (
    "The database does not answer: check that Postgres is up and that DATABASE_URL "
    "points at it, then reload this page."
)
SERVER_ERROR = (
    "The dashboard failed to answer this page (the error is in its log): reload it; "
    "if it fails again, tell the operator."
)

logger = logging.getLogger(__name__)

Handler = Callable[[Request, Exception], Awaitable[Response]]


def error_handlers(dashboard: Dashboard) -> dict[Any, Handler]:
    """Starlette exception handlers rendering the dashboard's error page."""

    async def http_error(request: Request, error: Exception) -> Response:
        status = error.status_code if isinstance(error, HTTPException) else 500
        message = {404: NOT_FOUND, 405: WRONG_METHOD}.get(status)
        if message is None:
            message = f"{getattr(error, 'detail', 'Error')}: go back and try again."
        # The header's navigation for a signed-in user; none if the database is away.
        with contextlib.suppress(psycopg.Error, PoolTimeout):
            await signed_in(dashboard, request)
        return dashboard.error_page(request, status, message)

    async def database_down(request: Request, error: Exception) -> Response:
        found = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
        logger.error(
            "dashboard %s %s: the database does not answer (%s: %s)",
            request.method,
            request.url.path,
            type(error).__name__,
            found,
        )
        return dashboard.error_page(request, 503, DATABASE_DOWN)

    async def server_error(request: Request, error: Exception) -> Response:
        # Outside the session and header middlewares: no cookie is written, and the
        # security headers are added here.
        request.scope.setdefault("session", {})
        response = dashboard.error_page(request, 500, SERVER_ERROR)
        response.headers.update(SECURITY_HEADERS)
        return response

    return {
        HTTPException: http_error,
        psycopg.OperationalError: database_down,
        PoolTimeout: database_down,
        Exception: server_error,
    }
