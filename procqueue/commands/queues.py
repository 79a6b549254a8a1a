"""`procqueue queues`, `procqueue pause QUEUE`, `procqueue resume QUEUE`: the queues
with their state, and pausing them, through the same audited operations as the
dashboard (procqueue/queue/operations.py).

A queue may be paused before it has any job when procqueue's features use it (a
task's queue) or a worker serves it by name; any other name is refused (exit 1), since
a typo would pause nothing. Pausing a paused queue or resuming one that is not paused
is refused too (exit 1), and says so."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any

import psycopg

from procqueue.commands.output import table
from procqueue.engine.connections import connect_async
from procqueue.features import Settings, features, get_settings
from procqueue.queue import operations, queues
from procqueue.queue.maintenance import MAINTENANCE_QUEUE

Run = Callable[[psycopg.AsyncConnection[Any]], Awaitable[Any]]


def feature_queues(settings: Settings) -> set[str]:
    """The queues procqueue's own tasks use, whether or not they have jobs yet."""
    specs = (spec for feature in features() for spec in feature.job_specs(settings.schema_config()))
    return queues.known_queues(specs, MAINTENANCE_QUEUE)


async def _with_connection(settings: Settings, run: Run) -> Any:
    async with await connect_async(
        settings.dsn, transaction_pooler=settings.uses_transaction_pooler, autocommit=True
    ) as conn:
        return await run(conn)


def show(args: argparse.Namespace) -> int:
    settings = get_settings()

    async def read(conn: psycopg.AsyncConnection[Any]) -> list[queues.QueueState]:
        return await queues.queue_states(
            conn, feature_queues(settings), settings.health.stalled_after
        )

    states: list[queues.QueueState] = asyncio.run(_with_connection(settings, read))
    if args.json:
        print(json.dumps([asdict(state) for state in states], default=str, indent=2))
        return 0
    counts = ("waiting", "scheduled", "running", "failed", "workers", "slots")
    rows = [
        [s.queue_name, "paused" if s.paused else "active", *(getattr(s, c) for c in counts)]
        for s in states
    ]
    print(table(["queue", "state", *counts], rows))
    for state in states:
        if state.paused and state.paused_at is not None:
            why = f": {state.reason}" if state.reason else ""
            print(
                f"{state.queue_name} paused since {state.paused_at:%Y-%m-%d %H:%M:%S %Z} by "
                f"{state.paused_by}{why} (`procqueue resume {state.queue_name}`)"
            )
    print(
        "waiting: due now; workers: live workers that take the queue's jobs (by name, or "
        "serving every queue); slots: their concurrency summed, shared with the other "
        "queues they serve"
    )
    return 0


def _finish(outcome: operations.Outcome) -> int:
    print(outcome.message, file=sys.stderr if outcome.problems else sys.stdout)
    return 1 if outcome.problems else 0


def pause(args: argparse.Namespace) -> int:
    settings = get_settings()
    actor = operations.Actor.command_line()

    async def run(conn: psycopg.AsyncConnection[Any]) -> operations.Outcome:
        return await operations.pause_queue(
            conn, actor, args.queue, known=feature_queues(settings), reason=args.reason
        )

    outcome: operations.Outcome = asyncio.run(_with_connection(settings, run))
    return _finish(outcome)


def resume(args: argparse.Namespace) -> int:
    actor = operations.Actor.command_line()

    async def run(conn: psycopg.AsyncConnection[Any]) -> operations.Outcome:
        return await operations.resume_queue(conn, actor, args.queue)

    outcome: operations.Outcome = asyncio.run(_with_connection(get_settings(), run))
    return _finish(outcome)


def register(commands: Any) -> None:
    listing = commands.add_parser(
        "queues", help="every queue: paused or not, jobs waiting and running, workers"
    )
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(handler=show)

    pause_parser = commands.add_parser(
        "pause", help="pause a queue: workers take none of its jobs (running ones finish)"
    )
    pause_parser.add_argument("queue", help="the queue's name (see `procqueue queues`)")
    pause_parser.add_argument("--reason", default=None, help="why, for the audit log and others")
    pause_parser.set_defaults(handler=pause)

    resume_parser = commands.add_parser(
        "resume", help="resume a paused queue: workers take its jobs again at once"
    )
    resume_parser.add_argument("queue", help="the paused queue's name")
    resume_parser.set_defaults(handler=resume)
