"""The Charts page: per queue and/or task, over the last hour or day, attempts
(throughput), error rate, durations (p50/p95), and the queue's depth and lag as
sampled once a minute. It reads only migration 0023's rollups and samples
(procqueue/dashboard/chart_store.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from procqueue.dashboard import chart_store, charts
from procqueue.dashboard.chart_store import RANGES, AttemptBucket, DepthBucket, Selection

if TYPE_CHECKING:
    from procqueue.dashboard.views import Dashboard

MAX_NAME = 200
WAITING, RUNNING, P50, P95, LAG = "#1565c0", "#6a1b9a", "#2e7d32", "#ef6c00", "#c62828"


def duration(seconds: float) -> str:
    """A duration as the charts show it: `850 µs`, `12.3 ms`, `4.20 s`, `2.5 min`."""
    if seconds == 0:
        return "0 s"
    if seconds < 0.001:
        return f"{seconds * 1_000_000:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1000:.1f} ms"
    if seconds < 120:
        return f"{seconds:.2f} s"
    return f"{seconds / 60:.1f} min"


def count(value: float) -> str:
    return f"{value:.0f}"


def selection_of(request: Request) -> Selection | str:
    """The page's selection, or what is wrong with the request (answered 400)."""
    params = request.query_params
    name = params.get("range", "hour") or "hour"
    if name not in RANGES:
        return f"range must be one of {', '.join(RANGES)}, not {name[:40]!r}"
    return Selection(
        queue=params.get("queue", "").strip()[:MAX_NAME],
        task=params.get("task", "").strip()[:MAX_NAME],
        range=RANGES[name],
    )


def totals(buckets: list[AttemptBucket]) -> dict[str, Any]:
    """Attempts that ended in the buckets, by outcome, and their durations; the error
    rate is failed attempts (retried or not) ÷ attempts ended (the overview's too)."""
    succeeded = sum(b.succeeded for b in buckets)
    retried = sum(b.retried for b in buckets)
    failed = sum(b.failed for b in buckets)
    attempts = succeeded + retried + failed
    return {
        "succeeded": succeeded, "retried": retried, "failed": failed,
        "aborted": sum(b.aborted for b in buckets),
        "error_rate": (retried + failed) / attempts if attempts else None,
        "p50": chart_store.percentile_of(buckets, 0.5),
        "p95": chart_store.percentile_of(buckets, 0.95),
    }  # fmt: skip


def render_charts(
    selection: Selection, ended: list[AttemptBucket], sampled: list[DepthBucket]
) -> dict[str, Any]:
    span, step, dated = selection.range.label, selection.range.step_label, selection.range.with_date
    return {
        "throughput": charts.throughput_chart(ended, f"Attempts ended per {step}, {span}", dated),
        "errors": charts.error_rate_chart(
            ended, f"Failed attempts ÷ attempts ended, per {step}, {span}", dated
        ),
        "durations": charts.line_chart(
            ended,
            [
                charts.Line("p50", P50, [b.p50_seconds for b in ended]),
                charts.Line("p95", P95, [b.p95_seconds for b in ended]),
            ],
            f"Attempt duration p50 and p95 per {step}, {span}",
            duration,
            dated,
        ),
        "depth": charts.line_chart(
            sampled,
            [
                charts.Line("waiting", WAITING, [b.waiting for b in sampled]),
                charts.Line("running", RUNNING, [b.running for b in sampled]),
            ],
            f"Jobs waiting and running (highest sample per {step}), {span}",
            count,
            dated,
        ),
        "lag": charts.line_chart(
            sampled,
            [charts.Line("lag", LAG, [b.lag_seconds for b in sampled])],
            f"Lag, the oldest waiting job's wait (highest sample per {step}), {span}",
            duration,
            dated,
        ),
    }


def chart_url(selection: Selection, **changes: str) -> str:
    query = {"queue": selection.queue, "task": selection.task, "range": selection.range.name}
    query.update(changes)
    return "/charts?" + urlencode({key: value for key, value in query.items() if value})


async def charts_page(dashboard: Dashboard, request: Request, user: str) -> Response:
    """GET /charts (the `page` decorator of views.py signs in first)."""
    selection = selection_of(request)
    if isinstance(selection, str):
        return PlainTextResponse(f"bad request: {selection}", status_code=400)
    async with dashboard.pool.connection() as conn:
        ended = await chart_store.attempts(conn, selection)
        sampled = await chart_store.depth(conn, selection)
        queues, tasks = await chart_store.names(conn)
    latest = next((b for b in reversed(sampled) if b.samples), None)
    return dashboard.render(
        request,
        "charts.html",
        user,
        selection=selection,
        ranges=RANGES.values(),
        queues=sorted({*queues, selection.queue} - {""}),
        tasks=sorted({*tasks, selection.task} - {""}),
        totals=totals(ended),
        latest=latest,
        sampled_minutes=sum(b.samples for b in sampled),
        charts=render_charts(selection, ended, sampled),
        range_urls={name: chart_url(selection, range=name) for name in RANGES},
        jobs_url="/jobs?"
        + urlencode(
            {
                key: value
                for key, value in [("queue", selection.queue), ("task", selection.task)]
                if value
            }
        ),
        duration=duration,
    )
