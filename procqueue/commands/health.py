"""`procqueue health`: the queue's health as a table or JSON; the exit code is the
verdict (0 healthy, 1 degraded, 2 unhealthy), so it serves as a cron or
Kubernetes probe."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from procqueue.commands.arguments import positive_seconds
from procqueue.commands.output import print_json, table
from procqueue.engine.connections import connect_async
from procqueue.features import Settings, get_settings
from procqueue.queue.health import (
    MAX_WINDOW,
    HealthConfig,
    Snapshot,
    Status,
    Verdict,
    as_json,
    evaluate,
    human_bytes,
    read_snapshot,
)


def render(snapshot: Snapshot, verdict: Verdict) -> str:
    window = int(snapshot.window.total_seconds())
    parts = [
        "Queues",
        table(
            [
                "queue",
                "waiting",
                "running",
                "scheduled",
                "retrying",
                "failed for good 1h",
                "failed for good 1d",
                "lag s",
                "done/min 5m",
                "done/min 60m",
            ],
            [
                [
                    q.queue_name,
                    q.waiting,
                    q.running,
                    q.scheduled,
                    q.retry_scheduled,
                    q.failed_last_hour,
                    q.failed_last_day,
                    q.lag_seconds,
                    q.finished_per_minute_5m,
                    q.finished_per_minute_60m,
                ]
                for q in snapshot.queues
            ],
        ),
        f"\nTasks (attempts ended in the last {window} s)",
        table(
            [
                "task",
                "attempts",
                "ok",
                "failed for good",
                "retried",
                "failure rate (jobs)",
                "p50 s",
                "p95 s",
                "max s",
            ],
            [
                [
                    t.task_name,
                    t.runs,
                    t.succeeded,
                    t.failed,
                    t.retries,
                    None if t.failure_rate is None else f"{t.failure_rate:.1%}",
                    t.p50_seconds,
                    t.p95_seconds,
                    t.max_seconds,
                ]
                for t in snapshot.tasks
            ],
        ),
        "\nChanges waiting for a drain job",
        table(
            ["entity", "waiting", "in a drain", "oldest s"],
            [
                [c.entity, c.waiting, c.claimed, _age(c.oldest_at)]
                for c in snapshot.changes
            ],
        ),
        "\nWorkers",
        table(
            ["worker", "heartbeat age s", "jobs", "healthy"],
            [
                [w.worker_id, w.heartbeat_age_seconds, w.jobs_in_hand, "yes" if w.healthy else "NO"]
                for w in snapshot.workers
            ],
        ),
        "\nStorage",
        table(
            ["table", "heap", "indexes", "total", "dead tuples"],
            [
                [
                    f"{s.schema_name}.{s.table_name}",
                    human_bytes(s.table_bytes),
                    human_bytes(s.index_bytes),
                    human_bytes(s.total_bytes),
                    s.dead_tuples,
                ]
                for s in snapshot.tables
            ],
        ),
        f"\nstatus: {verdict.status.name.lower()}",
        *[f"  - {reason}" for reason in verdict.reasons],
    ]
    return "\n".join(parts)


def _age(since: datetime) -> float:
    return round((datetime.now(UTC) - since).total_seconds(), 1)


async def read_snapshot_from(settings: Settings, config: HealthConfig) -> Snapshot:
    """One snapshot, on a connection of its own to the settings' database."""
    async with await connect_async(
        settings.dsn,
        transaction_pooler=settings.uses_transaction_pooler,
        application_name="procqueue-health",
    ) as conn:
        return await read_snapshot(conn, config)


def check(settings: Settings, *, as_json_output: bool, window: float | None = None) -> int:
    config = settings.health
    if window:
        config = dataclasses.replace(config, window=timedelta(seconds=window))
    try:
        snapshot = asyncio.run(read_snapshot_from(settings, config))
    except psycopg.OperationalError as error:
        reason = f"cannot reach the database: {str(error).strip().splitlines()[0]}"
        verdict: dict[str, Any] = {"status": "unhealthy", "reasons": [reason]}
        if as_json_output:
            print_json(verdict)
        else:
            print(f"status: unhealthy\n  - {reason}")
        return int(Status.UNHEALTHY)
    result = evaluate(snapshot, config)
    if as_json_output:
        print_json(as_json(snapshot, result))
    else:
        print(render(snapshot, result))
    return int(result.status)


def run(args: argparse.Namespace) -> int:
    return check(get_settings(), as_json_output=args.json, window=args.window)


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "health",
        help="queue health; exit 0 healthy, 1 degraded, 2 unhealthy",
        description=__doc__,
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument(
        "--window",
        type=positive_seconds(MAX_WINDOW.total_seconds()),
        default=None,
        help="seconds of task history (default: setting)",
    )
    parser.set_defaults(handler=run)
