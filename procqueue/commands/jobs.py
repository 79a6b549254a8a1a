"""`procqueue failed`, `retry`, `cancel`, `discard`, `delete`: jobs by hand, through
the same audited operations as the dashboard (procqueue/queue/operations.py)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import psycopg

from procqueue.commands.arguments import JOB_ID, POSITIVE
from procqueue.commands.output import print_json, refuse, table
from procqueue.engine.connections import connect_async
from procqueue.features import Settings, get_settings
from procqueue.queue import operations


@contextlib.asynccontextmanager
async def _connect(settings: Settings) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """A connection refused, or a queue not installed, is one line at the CLI's boundary."""
    async with await connect_async(
        settings.dsn, transaction_pooler=settings.uses_transaction_pooler, autocommit=True
    ) as conn:
        yield conn


async def _failed_jobs(settings: Settings, task: str | None, limit: int) -> list[dict[str, Any]]:
    async with _connect(settings) as conn:
        return await operations.failed_jobs(conn, task, limit)


def show_failed(args: argparse.Namespace) -> int:
    rows = asyncio.run(_failed_jobs(get_settings(), args.task, args.limit))
    if args.json:
        print_json(rows)
        return 0
    if not rows:
        print("no failed jobs")
        return 0
    print(
        table(
            ["job", "task", "queue", "attempts", "failed at", "error"],
            [
                [
                    row["id"],
                    row["task_name"],
                    row["queue_name"],
                    row["attempts"],
                    row["failed_at"].isoformat(timespec="seconds") if row["failed_at"] else None,
                    _one_line(row),
                ]
                for row in rows
            ],
        )
    )
    if args.traceback:
        for row in rows:
            print(f"\n--- job {row['id']} ({row['task_name']})\n{row['traceback'] or '-'}")
    return 0


def _one_line(row: dict[str, Any]) -> str:
    if row["error_type"] is None:
        return "(no error recorded)"
    message = (row["message"] or "").splitlines()[0] if row["message"] else ""
    text = f"{row['error_type'].rsplit('.', 1)[-1]}: {message}"
    return text if len(text) <= 100 else text[:97] + "..."


async def _retry(settings: Settings, args: argparse.Namespace) -> operations.Outcome:
    async with _connect(settings) as conn:
        return await operations.retry_failed(
            conn,
            operations.Actor.command_line(),
            job_id=args.job_id,
            task=None if args.all_failed else args.task,
        )


def retry(args: argparse.Namespace) -> int:
    outcome = asyncio.run(_retry(get_settings(), args))
    for problem in outcome.problems:
        refuse(problem)
    if args.job_id is not None and not outcome.done:
        return 1
    print(f"retried {len(outcome.done)} job(s){': ' + _ids(outcome.done) if outcome.done else ''}")
    return 0


def _ids(job_ids: list[int]) -> str:
    shown = ", ".join(map(str, job_ids[:20]))
    return shown + (f" and {len(job_ids) - 20} more" if len(job_ids) > 20 else "")


async def _cancel(settings: Settings, job_id: int, abort: bool) -> operations.Outcome:
    async with _connect(settings) as conn:
        return await operations.cancel(conn, operations.Actor.command_line(), job_id, abort=abort)


def cancel(args: argparse.Namespace) -> int:
    outcome = asyncio.run(_cancel(get_settings(), args.job_id, args.abort))
    if not outcome.done:
        refuse(outcome.message)
        return 1
    print(outcome.message)
    return 0


#: `procqueue discard ID...` and `procqueue delete ID...`: the facade's action and help.
MANY = {
    "discard": (
        operations.discard,
        "set failed jobs aside for good: out of `failed` and health, kept for the record",
    ),
    "delete": (operations.delete, "delete jobs and their records (never a running one)"),
}


async def _many(settings: Settings, verb: str, job_ids: list[int]) -> operations.Outcome:
    async with _connect(settings) as conn:
        return await MANY[verb][0](conn, operations.Actor.command_line(), job_ids)


def many(args: argparse.Namespace) -> int:
    outcome = asyncio.run(_many(get_settings(), args.verb, args.job_ids))
    for problem in outcome.problems:
        if problem != outcome.message:
            refuse(problem)
    if outcome.done:
        print(outcome.message)
    elif outcome.problems:
        refuse(outcome.message)
    else:
        print(outcome.message)
    return 0 if not outcome.problems else 1


def register(commands: Any) -> None:
    failed = commands.add_parser("failed", help="failed jobs with their last error")
    failed.add_argument("--task", default=None, help="only this task")
    failed.add_argument(
        "--limit", type=POSITIVE, default=50, help="at most this many (newest first)"
    )
    failed.add_argument("--json", action="store_true", help="print JSON")
    failed.add_argument("--traceback", action="store_true", help="print each job's traceback")
    failed.set_defaults(handler=show_failed)

    retry_parser = commands.add_parser("retry", help="put failed jobs back in the queue")
    which = retry_parser.add_mutually_exclusive_group(required=True)
    which.add_argument("job_id", nargs="?", type=JOB_ID, default=None, help="one failed job")
    which.add_argument("--task", default=None, help="every failed job of this task")
    which.add_argument("--all-failed", action="store_true", help="every failed job")
    retry_parser.set_defaults(handler=retry)

    cancel_parser = commands.add_parser(
        "cancel", help="cancel a waiting job (with --abort: also stop a running one)"
    )
    cancel_parser.add_argument("job_id", type=JOB_ID, help="the job's id")
    cancel_parser.add_argument(
        "--abort", action="store_true", help="a running job: ask its worker to abort it"
    )
    cancel_parser.set_defaults(handler=cancel)

    for verb, (_, summary) in MANY.items():
        parser = commands.add_parser(verb, help=summary)
        parser.add_argument("job_ids", nargs="+", type=JOB_ID, metavar="ID")
        parser.set_defaults(handler=many, verb=verb)
