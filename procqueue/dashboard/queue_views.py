"""The Queues page (each queue: paused or not, its jobs, the workers that take it,
pause and resume buttons) and the Workers page (each worker: host, pid, queues,
concurrency, start, jobs done and in hand, heartbeat). Pausing and resuming go
through the audited operations (procqueue/queue/operations.py), as `procqueue
pause|resume` do; the data comes from procqueue/queue/queues.py."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from procqueue.queue import queues
from procqueue.queue.maintenance import MAINTENANCE_QUEUE
from procqueue.queue.operations import Actor, pause_queue, resume_queue

if TYPE_CHECKING:
    from procqueue.dashboard.views import Dashboard

Endpoint = Callable[[Request], Awaitable[Response]]
#: views.py's `page` or `action` decorator.
Wrap = Callable[[Any], Callable[["Dashboard", Request], Awaitable[Response]]]


def known_queues(dashboard: Dashboard) -> set[str]:
    """The queues of procqueue's own tasks: listed, and pausable, before any job."""
    return queues.known_queues(dashboard.job_specs, MAINTENANCE_QUEUE)


async def queues_page(dashboard: Dashboard, request: Request, user: str) -> Response:
    async with dashboard.pool.connection() as conn:
        states = await queues.queue_states(
            conn, known_queues(dashboard), dashboard.settings.health.stalled_after
        )
    return dashboard.render(
        request,
        "queues.html",
        user,
        states=states,
        paused=[state for state in states if state.paused],
    )


async def workers_page(dashboard: Dashboard, request: Request, user: str) -> Response:
    async with dashboard.pool.connection() as conn:
        found = await queues.workers(conn, dashboard.settings.health.stalled_after)
    return dashboard.render(request, "workers.html", user, workers=found)


def _queue(form: FormData) -> str:
    value = form.get("queue")
    return value if isinstance(value, str) else ""


async def pause(dashboard: Dashboard, request: Request, actor: Actor, form: FormData) -> Response:
    reason = form.get("reason")
    text = reason.strip() if isinstance(reason, str) else ""
    async with dashboard.pool.connection() as conn:
        outcome = await pause_queue(
            conn, actor, _queue(form), known=known_queues(dashboard), reason=text or None
        )
    return dashboard.finish(request, form, outcome)


async def resume(dashboard: Dashboard, request: Request, actor: Actor, form: FormData) -> Response:
    async with dashboard.pool.connection() as conn:
        outcome = await resume_queue(conn, actor, _queue(form))
    return dashboard.finish(request, form, outcome)


def queue_routes(dashboard: Dashboard, page: Wrap, action: Wrap) -> list[Route]:
    """The routes, their handlers wrapped by views.py's `page` (sign-in) and `action`
    (sign-in, CSRF, actor) decorators, passed in: this module does not import views.py."""

    def bound(handler: Callable[[Dashboard, Request], Awaitable[Response]]) -> Endpoint:
        async def endpoint(request: Request) -> Response:
            return await handler(dashboard, request)

        return endpoint

    return [
        Route("/queues", bound(page(queues_page)), name="queues"),
        Route("/queues/pause", bound(action(pause)), methods=["POST"]),
        Route("/queues/resume", bound(action(resume)), methods=["POST"]),
        Route("/workers", bound(page(workers_page)), name="workers"),
    ]
