"""What admins can do from the dashboard: retry failed jobs (one, a group, all)
and cancel a waiting job. Each action and its audit row (who, what, when)
commit in one transaction: there is no action without its record."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from procqueue.queries import query

Connection = psycopg.AsyncConnection[Any]


@dataclass(frozen=True)
class Actor:
    """Who acts: the name given at sign-in and the client address."""

    name: str
    remote_addr: str | None


@dataclass
class Outcome:
    done: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    message: str = ""


async def _record(
    conn: Connection,
    actor: Actor,
    action: str,
    target: dict[str, Any],
    job_ids: list[int],
    outcome: str,
) -> None:
    await conn.execute(
        query("dashboard_record_action"),
        {
            "actor": actor.name,
            "remote_addr": actor.remote_addr,
            "action": action,
            "target": Jsonb(target),
            "job_ids": job_ids,
            "outcome": outcome,
        },
    )


async def record(
    conn: Connection, actor: Actor, action: str, target: dict[str, Any], outcome: str
) -> None:
    """An audit row for something that is not a job action (sign-in)."""
    async with conn.transaction():
        await _record(conn, actor, action, target, [], outcome)


async def retry_failed(
    conn: Connection,
    actor: Actor,
    *,
    job_id: int | None = None,
    task: str | None = None,
    error_type: str | None = None,
) -> Outcome:
    """Put failed jobs back in the queue, due now: one job, a task + error type group, or all.

    A retried job gives up its queueing lock (migration 0008), so a newer waiting
    job with the same lock never blocks the retry."""
    action = "retry" if job_id is not None else "retry_group" if task is not None else "retry_all"
    target: dict[str, Any] = {
        key: value
        for key, value in {"job_id": job_id, "task": task, "error_type": error_type}.items()
        if value is not None
    }
    outcome = Outcome()
    async with conn.transaction():
        cursor = await conn.execute(
            query("dashboard_lock_failed_jobs"),
            {"job_id": job_id, "task": task, "error_type": error_type},
        )
        candidates = [row[0] for row in await cursor.fetchall()]
        for candidate in candidates:
            await conn.execute(query("retry_failed_job"), {"job_id": candidate})
            outcome.done.append(candidate)
        if job_id is not None and not candidates:
            outcome.problems.append(f"job {job_id} is not failed (or does not exist): not retried")
        outcome.message = f"retried {len(outcome.done)} job(s)" + (
            f", {len(outcome.problems)} left alone" if outcome.problems else ""
        )
        await _record(conn, actor, action, target, outcome.done, outcome.message)
    return outcome


async def cancel_waiting(conn: Connection, actor: Actor, job_id: int) -> Outcome:
    """Cancel a job that is still waiting; a running or finished job is left alone."""
    outcome = Outcome()
    async with conn.transaction():
        cursor = await conn.execute(query("dashboard_cancel_waiting_job"), {"job_id": job_id})
        row = await cursor.fetchone()
        if row is not None and row[0] is not None:
            outcome.done.append(job_id)
            outcome.message = f"job {job_id} cancelled"
        else:
            outcome.problems.append(
                f"job {job_id} is not waiting: only waiting jobs can be cancelled"
            )
            outcome.message = outcome.problems[0]
        await _record(conn, actor, "cancel", {"job_id": job_id}, outcome.done, outcome.message)
    return outcome
