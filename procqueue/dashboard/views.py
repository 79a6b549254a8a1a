"""The dashboard's pages and actions, as Starlette endpoints.

GET pages need a signed-in user, admin or viewer (else: the sign-in page); POST
actions need one too (else 401), the session's CSRF token (else 403) and the admin
role (a viewer is answered 403 and the refusal audited). Every template gets
`role` and `can_act` (False for a viewer): action forms render only `if can_act`.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from psycopg_pool import AsyncConnectionPool
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from procqueue.dashboard import chart_store, charts, store
from procqueue.dashboard.chart_store import RANGES, Selection
from procqueue.dashboard.chart_views import charts_page, totals
from procqueue.dashboard.overview_snapshots import OverviewSnapshots
from procqueue.dashboard.queue_views import queue_routes
from procqueue.dashboard.roles import READ_ONLY
from procqueue.dashboard.security import (
    CSRF_FIELD,
    CSRF_HEADER,
    Access,
    csrf_token,
    csrf_valid,
    current_admin,
    safe_next,
    secret_matches,
    sign_in,
    sign_out,
)
from procqueue.dashboard.sessions import Admin, open_session, revoke_session
from procqueue.dashboard.signin_limits import SignInLimiter
from procqueue.dashboard.supabase_auth import AuthUnavailable, SignInRefused, SupabaseAuth
from procqueue.entities import Entity, load_entities
from procqueue.errors import ConfigError, JobError, ProcqueueError
from procqueue.features import Settings
from procqueue.images.jobs import CLEANUP
from procqueue.queue.jobs import JobSpec
from procqueue.queue.operations import Actor, Outcome, cancel, record, retry_failed
from procqueue.queue.server import HealthSource
from procqueue.search.why import NotFound, story_of

CSRF_REFUSED = "Missing or wrong CSRF token: reload the page and try again."
MAX_NAME_LENGTH = 64
MAX_EMAIL_LENGTH = 254
REFRESH_SECONDS = 5

Page = Callable[["Dashboard", Request, str], Awaitable[Response]]
Action = Callable[["Dashboard", Request, Actor, FormData], Awaitable[Response]]


async def signed_in(dashboard: Dashboard, request: Request) -> Admin | None:
    """The request's signed-in user, kept on `request.state.admin` for `render`."""
    admin = await current_admin(request, dashboard.access, dashboard.pool)
    request.state.admin = admin
    return admin


def page(handler: Page) -> Callable[[Dashboard, Request], Awaitable[Response]]:
    """A GET page: signed out, go to the sign-in page (and come back after)."""

    @functools.wraps(handler)
    async def wrapped(self: Dashboard, request: Request) -> Response:
        admin = await signed_in(self, request)
        if admin is None:
            here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"/login?next={quote(here, safe='')}", status_code=303)
        return await _answer_bad_input(handler(self, request, admin.name), request)

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
        admin = await signed_in(self, request)
        if admin is None:
            return PlainTextResponse("sign in first", status_code=401)
        return await _answer_bad_input(handler(self, request, admin.name), request)

    return wrapped


def action(handler: Action) -> Callable[[Dashboard, Request], Awaitable[Response]]:
    """A POST action: signed in (else 401) with this session's CSRF token (else 403)
    as an admin (a viewer: 403, and an `action_refused` audit row)."""

    @functools.wraps(handler)
    async def wrapped(self: Dashboard, request: Request) -> Response:
        admin = await signed_in(self, request)
        if admin is None:
            return PlainTextResponse("sign in first: POST /login", status_code=401)
        form = await request.form()
        given = form.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER)
        if not csrf_valid(request, given if isinstance(given, str) else None):
            return self.error_page(request, 403, CSRF_REFUSED)
        actor = Actor(admin.actor, _address(request))
        if not admin.can_act:
            async with self.pool.connection() as conn:
                target = {"path": request.url.path, "role": admin.role}
                await record(conn, actor, "action_refused", target, f"refused: {READ_ONLY}")
            return self.error_page(request, 403, READ_ONLY)
        response = await handler(self, request, actor, form)
        if self.overview_snapshots is not None:
            self.overview_snapshots.outdated()
        return response

    return wrapped


#: Job and audit ids are Postgres bigints.
LARGEST_ID = store.LARGEST_ID


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


def _address(request: Request) -> str | None:
    return request.client.host if request.client else None


@dataclass
class Dashboard:
    settings: Settings
    access: Access
    pool: AsyncConnectionPool[Any]
    health: HealthSource
    templates: Jinja2Templates
    job_specs: tuple[JobSpec, ...] = ()
    limiter: SignInLimiter = field(default_factory=SignInLimiter)
    supabase: SupabaseAuth | None = None  # admins sign in with Supabase Auth accounts
    #: The overview's health snapshot, kept fresh in the background (app.py's lifespan).
    overview_snapshots: OverviewSnapshots | None = None

    def __post_init__(self) -> None:
        if self.overview_snapshots is None:
            self.overview_snapshots = OverviewSnapshots(self.health, REFRESH_SECONDS)

    def render(
        self,
        request: Request,
        name: str,
        user: str | None,
        status_code: int = 200,
        **context: Any,
    ) -> Response:
        admin: Admin | None = getattr(request.state, "admin", None)
        context.update(
            user=user,
            csrf_token=csrf_token(request),
            csrf_field=CSRF_FIELD,
            flash=request.session.pop("flash", None),
            open_locally=self.access.open_locally,
            path=request.url.path,
            role=admin.role if admin else None,
            can_act=admin is not None and admin.can_act,
            entity_url=self.entity_url,
        )
        return self.templates.TemplateResponse(request, name, context, status_code=status_code)

    def error_page(
        self, request: Request, status_code: int, message: str, user: str | None = None
    ) -> Response:
        """A styled error page in the dashboard's layout: one line, what to do."""
        admin: Admin | None = getattr(request.state, "admin", None)
        return self.render(
            request,
            "error.html",
            user or (admin.name if admin else None),
            status_code=status_code,
            status=status_code,
            message=message,
        )

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
        if await current_admin(request, self.access, self.pool) is not None:
            return RedirectResponse(safe_next(request.query_params.get("next")), 303)
        return self.login_page(request, safe_next(request.query_params.get("next")), None)

    def login_page(
        self, request: Request, target: str, error: str | None, status: int = 200
    ) -> Response:
        return self.render(
            request,
            "login.html",
            None,
            status_code=status,
            next=target,
            error=error,
            supabase_sign_in=self.supabase is not None,
        )

    async def authenticate(self, form: FormData) -> Admin:
        """The admin these credentials prove; SignInRefused or AuthUnavailable if none."""
        if self.supabase is not None:
            email = (_text(form, "email") or "").strip()[:MAX_EMAIL_LENGTH]
            return await self.supabase.sign_in(email, _text(form, "password") or "")
        name = (_text(form, "name") or "").strip()[:MAX_NAME_LENGTH]
        if not name or not secret_matches(self.access, _text(form, "secret") or ""):
            raise SignInRefused(
                "wrong name or secret", "Wrong secret (or no name given): try again."
            )
        return Admin(name, name)

    async def login(self, request: Request) -> Response:
        form = await request.form()
        given = _text(form, CSRF_FIELD)
        target = safe_next(_text(form, "next"))
        if not csrf_valid(request, given):
            return self.error_page(
                request, 403, "Missing or wrong CSRF token: reload the sign-in page and try again."
            )
        address = _address(request)
        wait = self.limiter.wait(address)
        if wait is not None:
            return PlainTextResponse(
                f"too many failed sign-ins: try again in {wait} s",
                status_code=429,
                headers={"Retry-After": str(wait)},
            )
        try:
            admin = await self.authenticate(form)
        except AuthUnavailable as error:
            return self.login_page(request, target, str(error), 503)
        except SignInRefused as refused:
            claimed = _text(form, "email" if self.supabase else "name") or ""
            actor = Actor(claimed.strip()[:MAX_EMAIL_LENGTH] or "?", address)
            who = {"user_id": refused.user_id, "email": refused.email} if refused.user_id else {}
            lock = self.limiter.failed(address)
            async with self.pool.connection() as conn:
                await record(conn, actor, "sign_in_refused", who, str(refused))
                if lock is not None:
                    scope = {"scope": "all addresses" if lock.everyone else "address"}
                    await record(conn, actor, "sign_in_locked", scope, lock.describe())
            return self.login_page(request, target, refused.shown, 401)
        self.limiter.succeeded(address)
        async with self.pool.connection() as conn:
            token = await open_session(conn, admin, address, self.access.session_lifetime)
            who = {"user_id": admin.user_id, "email": admin.email} if admin.user_id else {}
            await record(conn, Actor(admin.actor, address), "sign_in", who, "signed in")
        sign_in(request, token)
        return RedirectResponse(target, status_code=303)

    async def logout(self, request: Request) -> Response:
        form = await request.form()
        if not csrf_valid(request, _text(form, CSRF_FIELD)):
            return self.error_page(request, 403, CSRF_REFUSED)
        admin = await current_admin(request, self.access, self.pool)
        token = sign_out(request)
        if token is not None:
            async with self.pool.connection() as conn:
                await revoke_session(conn, token)
                if admin is not None:
                    actor = Actor(admin.actor, _address(request))
                    await record(conn, actor, "sign_out", {}, "signed out")
        return RedirectResponse("/login", status_code=303)

    # Rows: where is my listing? -------------------------------------------

    @functools.cached_property
    def entities(self) -> tuple[Entity, ...]:
        return load_entities(self.settings.entities_file)

    def entity_url(self, job: Any) -> str | None:
        """The page of the one row a job syncs (`listing:update` {"id": …}), or None."""
        args = job.get("args") if hasattr(job, "get") else None
        entity_id = args.get("id") if isinstance(args, dict) else None
        if not isinstance(entity_id, str):
            return None
        for entity in self.entities:
            if str(job.get("task_name", "")).startswith(f"{entity.name}:"):
                return f"/entities/{quote(entity.name, safe='')}/{quote(entity_id, safe='')}"
        return None

    @page
    async def entity_search(self, request: Request, user: str) -> Response:
        """The search box: an entity and an id lead to that row's page."""
        name = request.query_params.get("entity", "").strip()
        entity_id = request.query_params.get("id", "").strip()
        if name and entity_id:
            target = f"/entities/{quote(name, safe='')}/{quote(entity_id, safe='')}"
            return RedirectResponse(target, status_code=303)
        return self.render_entity(request, user, name, entity_id)

    def render_entity(
        self, request: Request, user: str, name: str, entity_id: str, status_code: int = 200,
        **context: Any,
    ) -> Response:  # fmt: skip
        return self.render(
            request, "entity.html", user, status_code=status_code,
            **{"story": None, "error": None, **context},
            entity_names=[entity.name for entity in self.entities], entity=name,
            entity_id=entity_id,
        )  # fmt: skip

    @page
    async def entity(self, request: Request, user: str) -> Response:
        """One row's story (procqueue/search/why.py): read-only, the fix as text."""
        name: str = request.path_params["entity"]
        entity_id: str = request.path_params["entity_id"]
        try:
            async with self.pool.connection() as conn:
                story = await story_of(
                    conn, self.settings.search, self.entities, name, entity_id,
                    image_cleanup=CLEANUP,
                )  # fmt: skip
        except ProcqueueError as error:
            status = (
                404 if isinstance(error, NotFound | ConfigError)
                else 503 if isinstance(error, JobError) else 400
            )  # fmt: skip
            return self.render_entity(request, user, name, entity_id, status, error=str(error))
        return self.render_entity(request, user, name, entity_id, story=story)

    # Pages -----------------------------------------------------------------

    async def _overview_reads(self) -> tuple[dict[str, int], list[Any], list[Any]]:
        async with self.pool.connection() as conn:
            failed = await store.failed_per_queue(conn)
            # The Charts page's rollups (migration 0023): constant cost, however many jobs
            hour = await chart_store.attempts(conn, Selection("", "", RANGES["hour"]))
            day = await chart_store.attempts(conn, Selection("", "", RANGES["day"]))
        return failed, hour, day

    async def overview_context(self) -> dict[str, Any]:
        # The dashboard's own reads now, beside the newest health snapshot (read in
        # the background while the overview is watched: overview_snapshots.py).
        assert self.overview_snapshots is not None
        own, reading = await asyncio.gather(
            self._overview_reads(), self.overview_snapshots.current(), return_exceptions=True
        )
        # The dashboard's own reads first: an unmigrated database fails those with one
        # line (app.py), and the health SQL's failure then logs nothing more.
        if isinstance(own, BaseException):
            raise own
        if isinstance(reading, BaseException):
            raise reading
        self.overview_snapshots.log_failure()
        failed, hour, day = own
        snapshot, verdict = reading.snapshot, reading.verdict
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
            "hour_totals": totals(hour),
            "day_totals": totals(day),
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
            # The time the snapshot was read, not the page drawn: the page reads true.
            "now_label": reading.read_at.strftime("%H:%M:%S UTC"),
            "reading": reading,
        }

    @page
    async def overview(self, request: Request, user: str) -> Response:
        return self.render(request, "overview.html", user, **await self.overview_context())

    @partial
    async def overview_panel(self, request: Request, user: str) -> Response:
        return self.render(request, "_overview_panel.html", user, **await self.overview_context())

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
            Route("/jobs/{job_id:int}/retry", self.retry_job, methods=["POST"]),
            Route("/jobs/{job_id:int}/cancel", self.cancel_job, methods=["POST"]),
            Route("/failures", self.failures, name="failures"),
            Route("/failures/retry", self.retry_many, methods=["POST"]),
            Route("/audit", self.audit, name="audit"),
            Route("/charts", functools.partial(page(charts_page), self), name="charts"),
            Route("/entities", self.entity_search, name="entities"),
            Route("/entities/{entity}/{entity_id}", self.entity, name="entity"),
            *queue_routes(self, page, action),
            Route("/login", self.login_form, methods=["GET"]),
            Route("/login", self.login, methods=["POST"]),
            Route("/logout", self.logout, methods=["POST"]),
        ]


__all__ = ["CSRF_HEADER", "Dashboard"]
