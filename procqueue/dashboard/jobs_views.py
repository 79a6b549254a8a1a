"""The job list, the job page and the actions on jobs (docs/dashboard.md, "Jobs").

- `/jobs`: filters (`state`, `task`, `queue`, `entity`, `q`, `since`, `until`), each
  row with its state, attempts and duration; `/jobs/rows` is the same list without
  the page around it, fetched every few seconds by dashboard.js (live refresh);
- `/jobs/<id>`: args, outcome (postponement, discard), timing, every attempt's error
  and traceback, and a link to the story of the entity a sync job names;
- actions through the operations facade (audited): retry, cancel, discard, delete of
  one job, of a selection (checkboxes), or of everything the filter matches after a
  confirmation page that states the count, counted again when it is submitted.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from procqueue.dashboard import store
from procqueue.dashboard.views import (
    REFRESH_SECONDS,
    BadInput,
    Dashboard,
    _int,
    _text,
    action,
    page,
    partial,
)
from procqueue.queue.maintenance import MAINTENANCE_QUEUE
from procqueue.queue.operations import Actor, Outcome, cancel_jobs, delete, discard, retry_jobs
from procqueue.queue.queues import job_worker
from procqueue.search.jobs import SINK as SEARCH_SINK

Verb = Callable[..., Awaitable[Outcome]]
#: The actions on jobs, by the name forms and URLs use.
VERBS: dict[str, Verb] = {
    "retry": retry_jobs,
    "cancel": cancel_jobs,
    "discard": discard,
    "delete": delete,
}
#: What the confirmation says each action takes.
TAKES = {
    "retry": "failed jobs (not discarded) are put back in the queue",
    "cancel": "waiting jobs are cancelled",
    "discard": "failed jobs are set aside for the record: out of the failed list and the "
    "health verdict, never retried",
    "delete": "jobs that are not running are deleted with their events and error records",
}
FILTER_FIELDS = ("state", "task", "queue", "entity", "q", "since", "until", "maintenance")
RELATIVE = re.compile(r"^(\d{1,6})\s*(m|min|h|d)$")
UNITS = {"m": "minutes", "min": "minutes", "h": "hours", "d": "days"}
#: Entities a bulk job names that the job page links to, at most.
MAX_ENTITY_LINKS = 20


def _when(value: str, name: str) -> datetime | None:
    """A time filter: ISO 8601 (no zone: UTC), or an age like 15m, 2h, 7d (ago)."""
    value = value.strip()
    if not value:
        return None
    if found := RELATIVE.match(value):
        return datetime.now(UTC) - timedelta(**{UNITS[found.group(2)]: int(found.group(1))})
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise BadInput(
            f"{name} must be a time (2026-12-07T14:00, UTC unless given) or an age "
            f"(15m, 2h, 7d), not {value[:40]!r}"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def job_filter(dashboard: Dashboard, params: Mapping[str, Any]) -> store.JobFilter:
    """The filters of a query string or form; BadInput for a value that is none."""

    def get(name: str) -> str:
        value = params.get(name)
        return value.strip() if isinstance(value, str) else ""

    state = get("state") or get("status")  # status: the name before issue 25
    if state and state not in store.STATUSES:
        raise BadInput(f"state must be one of {', '.join(store.STATUSES)}, not {state[:40]!r}")
    return store.JobFilter(
        status=state,
        task=get("task"),
        queue=get("queue"),
        entity=get("entity")[:200],
        q=get("q")[:200],
        since=_when(get("since"), "since"),
        until=_when(get("until"), "until"),
        maintenance=get("maintenance") == "1",
        specs=dashboard.job_specs,
    )


def _set(filters: store.JobFilter) -> dict[str, str]:
    """The filters that are set, as query parameters."""
    return {key: value for key, value in filters.query().items() if value}


def _url(path: str, params: dict[str, Any]) -> str:
    return f"{path}?{urlencode(params)}" if params else path


async def list_context(dashboard: Dashboard, request: Request) -> dict[str, Any]:
    params = request.query_params
    filters = job_filter(dashboard, params)
    async with dashboard.pool.connection() as conn:
        found = await store.job_page(
            conn,
            filters,
            before=_int(params.get("before"), "before"),
            after=_int(params.get("after"), "after"),
        )
    base = _set(filters)
    # As asked (an age like since=1h keeps sliding in the live refresh; status= is state=).
    kept = (*FILTER_FIELDS, "status", "before", "after")
    here = {key: value for key, value in params.items() if key in kept}
    return {
        "page": found,
        "filters": filters,
        "newer_url": _url("/jobs", {**base, "after": found.newer}) if found.newer else None,
        "older_url": _url("/jobs", {**base, "before": found.older}) if found.older else None,
        "first_url": _url("/jobs", base),
        "back": _url("/jobs", here),
        "rows_url": _url("/jobs/rows", here),
        "now_label": datetime.now(UTC).strftime("%H:%M:%S UTC"),
        "search_window": store.SEARCH_WINDOW,
    }


@page
async def jobs(self: Dashboard, request: Request, user: str) -> Response:
    context = await list_context(self, request)
    filters = context["filters"]
    async with self.pool.connection() as conn:
        tasks = await store.names(conn, "task")
        queues = await store.names(conn, "queue")
        changes = await store.waiting_changes(conn, filters)
    base = _set(filters)
    return self.render(
        request,
        "jobs.html",
        user,
        **context,
        changes=changes,
        statuses=store.STATUSES,
        tasks=tasks,
        queues=queues,
        verbs=VERBS,
        filter_fields=base,
        refresh_seconds=REFRESH_SECONDS,
        maintenance_queue=MAINTENANCE_QUEUE,
        maintenance_url=_url("/jobs", {**base, "maintenance": "1"}),
    )


@partial
async def rows(self: Dashboard, request: Request, user: str) -> Response:
    return self.render(request, "_jobs_rows.html", user, **await list_context(self, request))


def entity_links(dashboard: Dashboard, job: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(entity, id) of each row a sync job names, by its lock or its args of ids: the
    story of each is at /entities/<entity>/<id> (`procqueue why`)."""
    for spec in dashboard.job_specs:
        if spec.task_name != job["task_name"] or spec.sink != SEARCH_SINK:
            continue
        entity = spec.task_name.rsplit(":", 1)[0]
        if spec.lock_prefix and job["lock"] and (key := spec.key_of(job["lock"])):
            return [(spec.lock_prefix.rstrip(":"), key)]
        args = job["args"] if isinstance(job["args"], dict) else {}
        keys = args.get(spec.keys_arg) if spec.keys_arg else None
        if isinstance(keys, list):
            return [(entity, str(key)) for key in keys[:MAX_ENTITY_LINKS]]
    return []


@page
async def job(self: Dashboard, request: Request, user: str) -> Response:
    job_id: int = request.path_params["job_id"]
    async with self.pool.connection() as conn:
        detail = await store.job_detail(conn, job_id)
        worker = await job_worker(conn, job_id)  # host and pid, for job.html
        left = await store.finished_attempt(conn, job_id) if detail is None else None
    if detail is None:
        if left is not None:
            ended = left["finished_at"].astimezone(UTC)
            return self.render(
                request,
                "missing.html",
                user,
                heading=f"Job {job_id} succeeded",
                message=(
                    f"Job {job_id} ({left['task_name']} on queue {left['queue_name']}) "
                    f"succeeded on its first attempt at {ended:%Y-%m-%d %H:%M:%S} UTC and left "
                    "the jobs table at once, as drain and maintenance jobs do; its attempt "
                    "counts in Charts and the task stats."
                ),
            )
        return self.render(
            request,
            "missing.html",
            user,
            status_code=404,
            message=f"Job {job_id} does not exist (it may have been pruned or deleted).",
        )
    return self.render(
        request,
        "job.html",
        user,
        detail=detail,
        args=store.pretty_json(detail.job["args"]),
        entities=entity_links(self, detail.job),
        worker=worker,
    )


def _ids(form: FormData) -> list[int]:
    found = [_int(value, "job") for value in form.getlist("job")]
    return [job_id for job_id in found if job_id is not None]


def _verb(name: str | None) -> str:
    if name not in VERBS:
        raise BadInput(f"say what to do: verb must be one of {', '.join(VERBS)}")
    return name


async def _act(
    dashboard: Dashboard, actor: Actor, verb: str, ids: Sequence[int], target: dict[str, Any] | None
) -> Outcome:
    async with dashboard.pool.connection() as conn:
        return await VERBS[verb](conn, actor, ids, target=target)


def one_job(verb: str) -> Callable[[Dashboard, Request], Awaitable[Response]]:
    """POST /jobs/<id>/<verb>: the action on one job."""

    @action
    async def act(self: Dashboard, request: Request, actor: Actor, form: FormData) -> Response:
        outcome = await _act(self, actor, verb, [request.path_params["job_id"]], None)
        return self.finish(request, form, outcome)

    return act


@action
async def selected(self: Dashboard, request: Request, actor: Actor, form: FormData) -> Response:
    """POST /jobs/selected: an action on the jobs ticked in the list."""
    try:
        verb, ids = _verb(_text(form, "verb")), _ids(form)
    except BadInput as error:
        return PlainTextResponse(f"bad request: {error}", status_code=400)
    if not ids:
        refused = "no job selected: tick the jobs first"
        return self.finish(request, form, Outcome(problems=[refused], message=refused))
    outcome = await _act(self, actor, verb, ids, {"selection": len(ids)})
    return self.finish(request, form, outcome)


async def _matching(dashboard: Dashboard, filters: store.JobFilter, verb: str) -> list[int]:
    async with dashboard.pool.connection() as conn:
        return await store.matching_ids(conn, filters, store.ELIGIBLE[verb])


def _confirmation(
    dashboard: Dashboard,
    request: Request,
    user: str,
    filters: store.JobFilter,
    verb: str,
    ids: list[int],
    changed_from: int | None = None,
) -> Response:
    count = min(len(ids), store.MAX_MATCHING)
    return dashboard.render(
        request,
        "jobs_confirm.html",
        user,
        status_code=409 if changed_from is not None else 200,
        verb=verb,
        takes=TAKES[verb],
        count=count,
        more=len(ids) > store.MAX_MATCHING,
        max_matching=store.MAX_MATCHING,
        changed_from=changed_from,
        filters=filters,
        filter_fields=_set(filters),
        back=_url("/jobs", _set(filters)),
    )


@page
async def confirm(self: Dashboard, request: Request, user: str) -> Response:
    """GET /jobs/confirm?verb=…&<filters>: how many jobs an action on everything
    matching would take, and the button that does it."""
    filters = job_filter(self, request.query_params)
    if not request.query_params.get("verb"):  # no action named yet: offer them
        return self.render(
            request, "jobs_confirm.html", user, verb=None, verbs=VERBS,
            filter_fields=_set(filters), back=_url("/jobs", _set(filters)),
        )  # fmt: skip
    verb = _verb(request.query_params.get("verb"))
    return _confirmation(self, request, user, filters, verb, await _matching(self, filters, verb))


@action
async def matching(self: Dashboard, request: Request, actor: Actor, form: FormData) -> Response:
    """POST /jobs/matching: the confirmed action on everything matching; when the
    match set changed since the count was shown, nothing is done: the confirmation
    comes back with the new count (409)."""
    try:
        filters = job_filter(self, form)
        verb = _verb(_text(form, "verb"))
        expected = _int(_text(form, "expected"), "expected")
        if expected is None:
            raise BadInput("the count you confirmed is missing: confirm on /jobs/confirm")
    except BadInput as error:
        return PlainTextResponse(f"bad request: {error}", status_code=400)
    ids = await _matching(self, filters, verb)
    count = min(len(ids), store.MAX_MATCHING)
    if expected != count:
        return _confirmation(self, request, actor.name, filters, verb, ids, changed_from=expected)
    target = {"filter": _set(filters), "matched": count}
    outcome = await _act(self, actor, verb, ids[: store.MAX_MATCHING], target)
    return self.finish(request, form, outcome)


def routes(dashboard: Dashboard) -> list[Route]:
    def bound(endpoint: Callable[..., Awaitable[Response]]) -> Callable[[Request], Any]:
        return functools.partial(endpoint, dashboard)

    return [
        Route("/jobs", bound(jobs), name="jobs"),
        Route("/jobs/rows", bound(rows)),
        Route("/jobs/confirm", bound(confirm)),
        Route("/jobs/selected", bound(selected), methods=["POST"]),
        Route("/jobs/matching", bound(matching), methods=["POST"]),
        Route("/jobs/{job_id:int}", bound(job), name="job"),
        *(
            Route(f"/jobs/{{job_id:int}}/{verb}", bound(one_job(verb)), methods=["POST"])
            for verb in ("discard", "delete")  # retry and cancel: views.py
        ),
    ]
