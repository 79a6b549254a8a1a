"""`procqueue failed`, `procqueue retry`, `procqueue cancel`: failed jobs by hand."""

from __future__ import annotations

import argparse
import json
from typing import Any

import psycopg
from psycopg.rows import dict_row

from procqueue.commands.output import table
from procqueue.connections import connect
from procqueue.errors import ConfigError
from procqueue.queries import query
from procqueue.settings import Settings, get_settings


def _connect(settings: Settings) -> psycopg.Connection[Any]:
    try:
        return connect(
            settings.dsn, transaction_pooler=settings.uses_transaction_pooler, autocommit=True
        )
    except psycopg.OperationalError as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"cannot connect to the database (DATABASE_URL): {first}") from None


def failed_jobs(settings: Settings, task: str | None, limit: int) -> list[dict[str, Any]]:
    with _connect(settings) as conn:
        cursor = conn.cursor(row_factory=dict_row)
        cursor.execute(query("failed_jobs"), {"task": task, "limit": limit})
        return cursor.fetchall()


def show_failed(args: argparse.Namespace) -> int:
    rows = failed_jobs(get_settings(), args.task, args.limit)
    if args.json:
        print(json.dumps(rows, default=str, indent=2))
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


def retry_jobs(settings: Settings, job_ids: list[int]) -> tuple[list[int], list[str]]:
    """Put failed jobs back in the queue; (retried ids, one line per job left alone)."""
    retried: list[int] = []
    problems: list[str] = []
    with _connect(settings) as conn:
        for job_id in job_ids:
            status = _status(conn, job_id)
            if status != "failed":
                problems.append(
                    f"job {job_id} "
                    + ("does not exist" if status is None else f"is {status}, not failed")
                )
                continue
            conn.execute(query("retry_failed_job"), {"job_id": job_id})
            retried.append(job_id)
    return retried, problems


def _status(conn: psycopg.Connection[Any], job_id: int) -> str | None:
    row = conn.execute(query("job_status"), {"job_id": job_id}).fetchone()
    return None if row is None else str(row[0])


def _failed_ids(settings: Settings, task: str | None) -> list[int]:
    with _connect(settings) as conn:
        return [row[0] for row in conn.execute(query("failed_job_ids"), {"task": task})]


def retry(args: argparse.Namespace) -> int:
    settings = get_settings()
    if args.job_id is not None:
        job_ids = [args.job_id]
    else:
        job_ids = _failed_ids(settings, None if args.all_failed else args.task)
    retried, problems = retry_jobs(settings, job_ids)
    for problem in problems:
        print(problem)
    print(f"retried {len(retried)} job(s){': ' + _ids(retried) if retried else ''}")
    return 1 if args.job_id is not None and not retried else 0


def _ids(job_ids: list[int]) -> str:
    shown = ", ".join(map(str, job_ids[:20]))
    return shown + (f" and {len(job_ids) - 20} more" if len(job_ids) > 20 else "")


def cancel_job(settings: Settings, job_id: int) -> tuple[bool, str]:
    with _connect(settings) as conn:
        before = _status(conn, job_id)
        row = conn.execute(query("cancel_job"), {"job_id": job_id}).fetchone()
    if row is not None and row[0] is not None:
        if before == "doing":
            return True, f"job {job_id} is running: its worker was asked to abort it"
        return True, f"job {job_id} cancelled"
    if before is None:
        return False, f"job {job_id} does not exist"
    return False, f"job {job_id} is {before}: only waiting or running jobs can be cancelled"


def cancel(args: argparse.Namespace) -> int:
    done, message = cancel_job(get_settings(), args.job_id)
    print(message)
    return 0 if done else 1


def register(commands: Any) -> None:
    failed = commands.add_parser("failed", help="failed jobs with their last error")
    failed.add_argument("--task", default=None, help="only this task")
    failed.add_argument("--limit", type=int, default=50, help="at most this many (newest first)")
    failed.add_argument("--json", action="store_true", help="print JSON")
    failed.add_argument("--traceback", action="store_true", help="print each job's traceback")
    failed.set_defaults(handler=show_failed)

    retry_parser = commands.add_parser("retry", help="put failed jobs back in the queue")
    which = retry_parser.add_mutually_exclusive_group(required=True)
    which.add_argument("job_id", nargs="?", type=int, default=None, help="one failed job")
    which.add_argument("--task", default=None, help="every failed job of this task")
    which.add_argument("--all-failed", action="store_true", help="every failed job")
    retry_parser.set_defaults(handler=retry)

    cancel_parser = commands.add_parser(
        "cancel", help="cancel a waiting job or abort a running one"
    )
    cancel_parser.add_argument("job_id", type=int)
    cancel_parser.set_defaults(handler=cancel)
