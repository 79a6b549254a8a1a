"""The dashboard's pages and actions, as Starlette endpoints.

GET pages need a signed-in admin (else: the sign-in page); POST actions need
one too (else 401) and the session's CSRF token (else 403).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, urlencode

from psycopg_pool import AsyncConnectionPool
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from procqueue.dashboard import charts, store
from procqueue.dashboard.security import (
    CSRF_FIELD,
    CSRF_HEADER,
    Access,
    csrf_token,
    csrf_valid,
    current_user,
    safe_next,
    secret_matches,
    sign_in,
    sign_out,
)
from procqueue.queue.jobs import JobSpec
from procqueue.queue.maintenance import MAINTENANCE_QUEUE
from procqueue.queue.operations import Actor, Outcome, cancel, record, retry_failed
from procqueue.queue.server import HealthSource
from procqueue.settings import Settings

MAX_NAME_LENGTH = 64
REFRESH_SECONDS = 5

Page = Callable[["Dashboard", Request, str], Awaitable[Response]]
Action = Callable[["Dashboard", Request, Actor, FormData], Awaitable[Response]]


def page(handler: Page) -> Callable[[Dashboard, Request], Awaitable[Response]]:
    """A GET page: signed out, go to the sign-in page (and come back after)."""

    @functools.wraps(handler)
    async def wrapped(self: Dashboard, request: Request) -> Response:
        user = current_user(request, self.access)
        if user is None:
            here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"/login?next={quote(here, safe='')}", status_code=303)
        return await _answer_bad_input(handler(self, request, user), request)

    return wrapped


class BadInput(Exception):
    """A request parameter the dashboard cannot use; answered 400 with the message."""


async def _answer_bad_input(answer: Awaitable[Response], request: Request) -> Response:
    """The handler's answer, or 400 with one line for a parameter it cannot use."""
    try:
        for name, value in [*request.query_params.multi_items(), *request.path_params.items()]:
            if "\x00" in str(value):
                raise BadInput(f"parameter {name!r} contains a NUL byte: remove it")
            if isinstance(value, int):
                _checked_id(name, value)
        return await answer
    except BadInput as error:
        if inspect.iscoroutine(answer):
            answer.close()
        return PlainTextResponse(f"bad request: {error}", status_code=400)


def partial(handler: Page) -> Callable[[Dashboard, Request], Awaitable[Response]]:
    """A fragment fetched by the page's script: signed out, 401 (the script reloads)."""

    @functools.wraps(handler)
    async def wrapped(self: Dashboard, request: Request) -> Response:
        user = current_user(request, self.access)
        if user is None:
            return PlainTextResponse("sign in first", status_code=401)
        return await _answer_bad_input(handler(self, request, user), request)

    return wrapped


def action(handler: Action) -> Callable[[Dashboard, Request], Awaitable[Response]]:
    """A POST action: signed in (else 401) with this session's CSRF token (else 403)."""

    @functools.wraps(handler)
    async def wrapped(self: Dashboard, request: Request) -> Response:
        user = current_user(request, self.access)
        if user is None:
            return PlainTextResponse("sign in first: POST /login", status_code=401)
        form = await request.form()
        given = form.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER)
        if not csrf_valid(request, given if isinstance(given, str) else None):
            return PlainTextResponse(
                "missing or wrong CSRF token: reload the page and try again", status_code=403
            )
        actor = Actor(user, request.client.host if request.client else None)
        return await handler(self, request, actor, form)

    return wrapped


#: Job and audit ids are Postgres bigints.
LARGEST_ID = 2**63 - 1


def _checked_id(name: str, value: int) -> int:
    if not 0 <= value <= LARGEST_ID:
        raise BadInput(f"{name} must be an id between 0 and {LARGEST_ID}, not {value}")
    return value


def _int(value: Any, name: str = "id") -> int | None:
    """An id from the query string ("" or absent: None); BadInput if it is not one."""
    if value in (None, ""):
        return None
    try:
        return _checked_id(name, int(value))
    except (TypeError, ValueError):
        raise BadInput(f"{name} must be a whole number, not {str(value)[:40]!r}") from None


def _text(form: FormData, name: str) -> str | None:
    value = form.get(name)
    return value if isinstance(value, str) else None


@dataclass
class Dashboard:
    settings: Settings
    access: Access
    pool: AsyncConnectionPool[Any]
    health: HealthSource
    templates: Jinja2Templates
    job_specs: tuple[JobSpec, ...] = ()

    def render(
        self,
        request: Request,
        name: str,
        user: str | None,
        status_code: int = 200,
        **context: Any,
    ) -> Response:
        context.update(
            user=user,
            csrf_token=csrf_token(request),
            csrf_field=CSRF_FIELD,
            flash=request.session.pop("flash", None),
            open_locally=self.access.open_locally,
            path=request.url.path,
        )
        return self.templates.TemplateResponse(request, name, context, status_code=status_code)

    def finish(self, request: Request, form: FormData, outcome: Outcome) -> Response:
        # A single refusal is the message itself: list only what it does not say.
        problems = [problem for problem in outcome.problems if problem != outcome.message]
        request.session["flash"] = {
            "message": outcome.message,
            "problems": problems[:20],
            "ok": bool(outcome.done) or not outcome.problems,
        }
        return RedirectResponse(safe_next(_text(form, "back")), status_code=303)

    # Sign-in ---------------------------------------------------------------

    async def login_form(self, request: Request) -> Response:
        if current_user(request, self.access) is not None:
            return RedirectResponse(safe_next(request.query_params.get("next")), 303)
        return self.render(
            request,
            "login.html",
            None,
            next=safe_next(request.query_params.get("next")),
            error=None,
        )

    async def login(self, request: Request) -> Response:
        form = await request.form()
        given = _text(form, CSRF_FIELD)
        target = safe_next(_text(form, "next"))
        if not csrf_valid(request, given):
            return PlainTextResponse(
                "missing or wrong CSRF token: reload the sign-in page and try again", 403
            )
        name = (_text(form, "name") or "").strip()[:MAX_NAME_LENGTH]
        secret = _text(form, "secret") or ""
        actor = Actor(name or "?", request.client.host if request.client else None)
        if not name or not secret_matches(self.access, secret):
            async with self.pool.connection() as conn:
                await record(conn, actor, "sign_in_refused", {}, "wrong name or secret")
            return self.render(
                request,
                "login.html",
                None,
                status_code=401,
                next=target,
                error="Wrong secret (or no name given): try again.",
            )
        sign_in(request, name)
        async with self.pool.connection() as conn:
            await record(conn, actor, "sign_in", {}, "signed in")
        return RedirectResponse(target, status_code=303)

    async def logout(self, request: Request) -> Response:
        form = await request.form()
        if not csrf_valid(request, _text(form, CSRF_FIELD)):
            return PlainTextResponse("missing or wrong CSRF token", status_code=403)
        sign_out(request)
        return RedirectResponse("/login", status_code=303)

    # Pages -----------------------------------------------------------------

    async def overview_context(self) -> dict[str, Any]:
        async with self.pool.connection() as conn:
            failed = await store.failed_per_queue(conn)
            hour = await store.activity(conn, timedelta(hours=1), timedelta(minutes=1))
            day = await store.activity(conn, timedelta(days=1), timedelta(minutes=30))
        # After the dashboard's own reads: an unmigrated database fails those with
        # one line (app.py), before the health SQL would log its own warning.
        read = await self.health.read()
        snapshot, verdict = read if read else (None, None)
        queues = [
            {**vars(queue), "failed": failed.get(queue.queue_name, 0)}
            for queue in (snapshot.queues if snapshot else [])
        ]
        known = {queue["queue_name"] for queue in queues}
        queues += [
            {
                "queue_name": name,
                "failed": count,
                "waiting": 0,
                "running": 0,
                "lag_seconds": 0.0,
                "scheduled": 0,
                "retry_scheduled": 0,
                "failed_last_hour": 0,
                "failed_last_day": 0,
            }
            for name, count in sorted(failed.items())
            if name not in known
        ]
        return {
            "snapshot": snapshot,
            "verdict": verdict,
            "queues": queues,
            "hour_totals": _totals(hour),
            "day_totals": _totals(day),
            "charts": {
                "hour_throughput": charts.throughput_chart(
                    hour, "Attempts ended per minute, last hour"
                ),
                "hour_errors": charts.error_rate_chart(
                    hour, "Failed attempts ÷ attempts ended, per minute, last hour"
                ),
                "day_throughput": charts.throughput_chart(
                    day, "Attempts ended per 30 min, last day", with_date=True
                ),
                "day_errors": charts.error_rate_chart(
                    day, "Failed attempts ÷ attempts ended, per 30 min, last day", with_date=True
                ),
            },
            "storage_total": sum(t.total_bytes for t in snapshot.tables) if snapshot else 0,
            "refresh_seconds": REFRESH_SECONDS,
            "failed_kept": self.settings.prune_failed_after,
            "now_label": datetime.now(UTC).strftime("%H:%M:%S UTC"),
        }

    @page
    async def overview(self, request: Request, user: str) -> Response:
        return self.render(request, "overview.html", user, **await self.overview_context())

    @partial
    async def overview_panel(self, request: Request, user: str) -> Response:
        return self.render(request, "_overview_panel.html", user, **await self.overview_context())

    @page
    async def jobs(self, request: Request, user: str) -> Response:
        params = request.query_params
        status = params.get("status", "")
        filters = store.JobFilter(
            status=status if status in store.STATUSES else "",
            task=params.get("task", "").strip(),
            queue=params.get("queue", "").strip(),
            entity=params.get("entity", "").strip()[:200],
            maintenance=params.get("maintenance") == "1",
            specs=self.job_specs,
        )
        async with self.pool.connection() as conn:
            found = await store.job_page(
                conn,
                filters,
                before=_int(params.get("before"), "before"),
                after=_int(params.get("after"), "after"),
            )
            tasks = await store.names(conn, "task")
            queues = await store.names(conn, "queue")
        base = {key: value for key, value in filters.query().items() if value}
        return self.render(
            request,
            "jobs.html",
            user,
            page=found,
            filters=filters,
            statuses=store.STATUSES,
            tasks=tasks,
            queues=queues,
            newer_url=_page_url(base, "after", found.newer),
            older_url=_page_url(base, "before", found.older),
            first_url=f"/jobs?{urlencode(base)}",
            maintenance_queue=MAINTENANCE_QUEUE,
            maintenance_url=f"/jobs?{urlencode({**base, 'maintenance': '1'})}",
        )

    @page
    async def job(self, request: Request, user: str) -> Response:
        job_id: int = request.path_params["job_id"]
        async with self.pool.connection() as conn:
            detail = await store.job_detail(conn, job_id)
        if detail is None:
            return self.render(
                request,
                "missing.html",
                user,
                status_code=404,
                message=f"Job {job_id} does not exist (it may have been pruned).",
            )
        return self.render(
            request, "job.html", user, detail=detail, args=store.pretty_json(detail.job["args"])
        )

    @page
    async def failures(self, request: Request, user: str) -> Response:
        async with self.pool.connection() as conn:
            groups = await store.failure_groups(conn)
            failed = await store.failed_jobs(conn)
        return self.render(
            request,
            "failures.html",
            user,
            groups=groups,
            failed=failed,
            total=sum(group["jobs"] for group in groups),
        )

    @page
    async def audit(self, request: Request, user: str) -> Response:
        before = _int(request.query_params.get("before"), "before")
        async with self.pool.connection() as conn:
            entries = await store.audit(conn, before)
        older = entries[-1]["id"] if len(entries) == store.PAGE_SIZE else None
        return self.render(request, "audit.html", user, entries=entries, older=older)

    # Actions ---------------------------------------------------------------

    @action
    async def retry_job(self, request: Request, actor: Actor, form: FormData) -> Response:
        job_id: int = request.path_params["job_id"]
        async with self.pool.connection() as conn:
            outcome = await retry_failed(conn, actor, job_id=job_id)
        return self.finish(request, form, outcome)

    @action
    async def retry_many(self, request: Request, actor: Actor, form: FormData) -> Response:
        scope = _text(form, "scope")
        task = _text(form, "task")
        if scope == "group" and task:
            error_type = _text(form, "error_type") or ""
            async with self.pool.connection() as conn:
                outcome = await retry_failed(conn, actor, task=task, error_type=error_type)
        elif scope == "all":
            async with self.pool.connection() as conn:
                outcome = await retry_failed(conn, actor)
        else:
            return PlainTextResponse(
                "say what to retry: scope=group with task (and error_type), or scope=all", 400
            )
        return self.finish(request, form, outcome)

    @action
    async def cancel_job(self, request: Request, actor: Actor, form: FormData) -> Response:
        job_id: int = request.path_params["job_id"]
        async with self.pool.connection() as conn:
            outcome = await cancel(conn, actor, job_id)
        return self.finish(request, form, outcome)

    def routes(self) -> list[Route]:
        return [
            Route("/", self.overview, name="overview"),
            Route("/overview/panel", self.overview_panel),
            Route("/jobs", self.jobs, name="jobs"),
            Route("/jobs/{job_id:int}", self.job, name="job"),
            Route("/jobs/{job_id:int}/retry", self.retry_job, methods=["POST"]),
            Route("/jobs/{job_id:int}/cancel", self.cancel_job, methods=["POST"]),
            Route("/failures", self.failures, name="failures"),
            Route("/failures/retry", self.retry_many, methods=["POST"]),
            Route("/audit", self.audit, name="audit"),
            Route("/login", self.login_form, methods=["GET"]),
            Route("/login", self.login, methods=["POST"]),
            Route("/logout", self.logout, methods=["POST"]),
        ]


def _page_url(base: dict[str, str], key: str, job_id: int | None) -> str | None:
    return f"/jobs?{urlencode({**base, key: job_id})}" if job_id is not None else None


def _totals(buckets: list[store.Bucket]) -> dict[str, Any]:
    """Attempts that ended in the buckets, by outcome; the error rate is failed
    attempts (retried or not) ÷ attempts ended."""
    succeeded = sum(b.succeeded for b in buckets)
    retried = sum(b.retried for b in buckets)
    failed = sum(b.failed for b in buckets)
    attempts = succeeded + retried + failed
    return {
        "succeeded": succeeded,
        "retried": retried,
        "failed": failed,
        "error_rate": (retried + failed) / attempts if attempts else None,
    }


__all__ = ["CSRF_HEADER", "Dashboard"]
