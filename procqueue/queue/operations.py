"""What operators do to jobs by hand, from the CLI and the dashboard alike: list
failed jobs, retry failed jobs (one, some, a group, all), cancel a waiting job,
abort a running one, discard a failed job that can never succeed, delete jobs that
are not running, and pause or resume a queue. Each action and its audit row (who,
what, when) commit in one transaction: there is no action without its record.

The cancel rule: a waiting job is cancelled; a running job is left alone unless
the operator asks for an abort (`procqueue cancel --abort`), which asks its worker
to stop it; a finished job is never touched.

Discard (migration 0024): a failed job is set aside for the record (its row, events
and errors stay; procqueue.discarded_jobs says who discarded it and when); it leaves
the failed list and the health verdict's failure counts, and is never retried.
Delete: the job's row and its records (events, errors, postponement, discard) are
gone; a running job is never deleted."""

from __future__ import annotations

import getpass
import json
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from procrastinate.manager import get_channel_for_queues
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from procqueue.queue import queues
from procqueue.queue.queries import query

Connection = psycopg.AsyncConnection[Any]


@dataclass(frozen=True)
class Actor:
    """Who acts: the dashboard's signed-in admin and the client address, or
    `cli:<os user>` for the command line."""

    name: str
    remote_addr: str | None

    @classmethod
    def command_line(cls) -> Actor:
        return cls(name=f"cli:{getpass.getuser()}", remote_addr=None)


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
        query("record_action"),
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

    A retry by hand is not an attempt: `attempts` still counts the runs, so the
    retried job has the automatic retries it had left (none, after it failed for
    good on exhausted retries: a transient error then fails it again at once). A
    retried job gives up its queueing lock (migration 0008), so a newer waiting job
    with the same lock never blocks the retry."""
    action = "retry" if job_id is not None else "retry_group" if task is not None else "retry_all"
    target: dict[str, Any] = {
        key: value
        for key, value in {"job_id": job_id, "task": task, "error_type": error_type}.items()
        if value is not None
    }
    outcome = Outcome()
    async with conn.transaction():
        cursor = await conn.execute(
            query("lock_failed_jobs"),
            {"job_id": job_id, "task": task, "error_type": error_type, "job_ids": None},
        )
        candidates = [row[0] for row in await cursor.fetchall()]
        for candidate in candidates:
            await conn.execute(query("retry_failed_job"), {"job_id": candidate})
            outcome.done.append(candidate)
        if job_id is not None and not candidates:
            outcome.problems.append(await _not_failed(conn, job_id))
        outcome.message = f"retried {len(outcome.done)} job(s)" + (
            f", {len(outcome.problems)} left alone" if outcome.problems else ""
        )
        await _record(conn, actor, action, target, outcome.done, outcome.message)
    return outcome


async def cancel(conn: Connection, actor: Actor, job_id: int, *, abort: bool = False) -> Outcome:
    """Cancel a waiting job; with `abort`, also ask the worker running it to stop."""
    outcome = Outcome()
    async with conn.transaction():
        status = await _status(conn, job_id)
        cancelled = await (
            await conn.execute(
                query("cancel_job" if abort else "cancel_waiting_job"), {"job_id": job_id}
            )
        ).fetchone()
        if cancelled is not None and cancelled[0] is not None:
            outcome.done.append(job_id)
            outcome.message = (
                f"job {job_id} is running: its worker was asked to abort it"
                if status == "doing"
                else f"job {job_id} cancelled"
            )
        else:
            outcome.problems.append(_not_cancellable(job_id, status, abort=abort))
            outcome.message = outcome.problems[0]
        action = "abort" if abort else "cancel"
        await _record(conn, actor, action, {"job_id": job_id}, outcome.done, outcome.message)
    return outcome


async def retry_jobs(
    conn: Connection, actor: Actor, job_ids: Sequence[int], *, target: dict[str, Any] | None = None
) -> Outcome:
    """Retry the failed jobs among `job_ids` (a selection, or what a filter matched);
    the others are left alone, each with its reason. `target` describes the
    selection for the audit row."""

    async def act() -> list[int]:
        cursor = await conn.execute(
            query("lock_failed_jobs"),
            {"job_id": None, "task": None, "error_type": None, "job_ids": list(job_ids)},
        )
        done = [row[0] for row in await cursor.fetchall()]
        for candidate in done:
            await conn.execute(query("retry_failed_job"), {"job_id": candidate})
        return done

    return await _on_jobs(conn, actor, "retry", job_ids, target, act, _why_not_retried)


async def cancel_jobs(
    conn: Connection, actor: Actor, job_ids: Sequence[int], *, target: dict[str, Any] | None = None
) -> Outcome:
    """Cancel the waiting jobs among `job_ids`; running and finished ones are left alone."""

    async def act() -> list[int]:
        done = []
        for job_id in sorted(set(job_ids)):
            cursor = await conn.execute(query("cancel_waiting_job"), {"job_id": job_id})
            row = await cursor.fetchone()
            if row is not None and row[0] is not None:
                done.append(job_id)
        return done

    return await _on_jobs(conn, actor, "cancel", job_ids, target, act, _why_not_cancelled)


async def discard(
    conn: Connection,
    actor: Actor,
    job_ids: Sequence[int],
    *,
    reason: str = "",
    target: dict[str, Any] | None = None,
) -> Outcome:
    """Set failed jobs aside for good (see the module's doc); others are left alone."""

    async def act() -> list[int]:
        cursor = await conn.execute(
            query("discard_failed_jobs"),
            {"job_ids": list(job_ids), "actor": actor.name, "reason": reason[:2000]},
        )
        return sorted(row[0] for row in await cursor.fetchall())

    return await _on_jobs(conn, actor, "discard", job_ids, target, act, _why_not_discarded)


async def delete(
    conn: Connection, actor: Actor, job_ids: Sequence[int], *, target: dict[str, Any] | None = None
) -> Outcome:
    """Delete jobs and their records; running jobs are refused (abort them first)."""

    async def act() -> list[int]:
        params = {"job_ids": list(job_ids)}
        await conn.execute(query("unlink_periodic_defers"), params)
        cursor = await conn.execute(query("delete_jobs"), params)
        return [row[0] for row in await cursor.fetchall()]

    return await _on_jobs(conn, actor, "delete", job_ids, target, act, _why_not_deleted)


#: Past tense of each verb, for the outcome's message.
_DONE = {"retry": "retried", "cancel": "cancelled", "discard": "discarded", "delete": "deleted"}


async def _on_jobs(
    conn: Connection,
    actor: Actor,
    verb: str,
    job_ids: Sequence[int],
    target: dict[str, Any] | None,
    act: Callable[[], Awaitable[list[int]]],
    why_not: Callable[[int, str | None, bool], str],
) -> Outcome:
    """Run `act` on `job_ids` in one transaction with its audit row: one job is the
    action `verb` (`{"job_id": id}`), more are `<verb>_many` with `target`; every job
    left alone gets its reason from `why_not(id, status or None, discarded)`."""
    wanted = sorted(set(job_ids))
    single = target is None and len(wanted) == 1
    outcome = Outcome()
    async with conn.transaction():
        outcome.done = await act()
        done = set(outcome.done)
        left = [job_id for job_id in wanted if job_id not in done]
        if left:
            cursor = await conn.execute(query("job_statuses"), {"job_ids": left})
            found = {row[0]: (str(row[1]), bool(row[2])) for row in await cursor.fetchall()}
            for job_id in left:
                status, discarded = found.get(job_id, (None, False))
                outcome.problems.append(why_not(job_id, status, discarded))
        if single:
            outcome.message = (
                f"job {wanted[0]} {_DONE[verb]}" if outcome.done else outcome.problems[0]
            )
        else:
            outcome.message = f"{_DONE[verb]} {len(outcome.done)} job(s)" + (
                f", {len(outcome.problems)} left alone" if outcome.problems else ""
            )
        action = verb if single else f"{verb}_many"
        recorded = {"job_id": wanted[0]} if single else {"jobs": len(wanted), **(target or {})}
        await _record(conn, actor, action, recorded, outcome.done, outcome.message)
    return outcome


def _why_not_retried(job_id: int, status: str | None, discarded: bool) -> str:
    if status is None:
        return f"job {job_id} does not exist: not retried"
    if discarded:
        return f"job {job_id} was discarded: not retried (delete it if it is not needed)"
    return f"job {job_id} is {status}, not failed: not retried"


def _why_not_cancelled(job_id: int, status: str | None, discarded: bool) -> str:
    return _not_cancellable(job_id, status, abort=False)


def _why_not_discarded(job_id: int, status: str | None, discarded: bool) -> str:
    if status is None:
        return f"job {job_id} does not exist: not discarded"
    if discarded:
        return f"job {job_id} was discarded already"
    return f"job {job_id} is {status}, not failed: only failed jobs are discarded"


def _why_not_deleted(job_id: int, status: str | None, discarded: bool) -> str:
    if status is None:
        return f"job {job_id} does not exist: not deleted"
    return (
        f"job {job_id} is running: running jobs are not deleted "
        f"(abort it first: procqueue cancel --abort {job_id})"
    )


#: The longest queue name an operator may pause (Procrastinate's are far shorter).
MAX_QUEUE_NAME = 200
#: The longest reason kept for a pause.
MAX_REASON = 500


async def pause_queue(
    conn: Connection,
    actor: Actor,
    queue: str,
    *,
    known: Collection[str] = (),
    reason: str | None = None,
) -> Outcome:
    """Pause `queue`: workers claim none of its jobs (their fetch reads the paused
    queues in the same statement, so from the next fetch on) until it is resumed;
    running jobs finish. A queue is known, and may be paused before it has any job,
    when it is in `known` (the features' queues), jobs hold its name, or a worker
    serves it by name; any other name is refused (a typo would pause nothing)."""
    outcome = Outcome()
    reason = _audited(reason, MAX_REASON) if reason else None
    async with conn.transaction():
        if not (_storable(queue) and (queue in known or await queues.in_use(conn, queue))):
            outcome.problems.append(
                f"queue {queue[:MAX_QUEUE_NAME]!r} is unknown (no job, worker or task of "
                "procqueue uses it): check the name with `procqueue queues`"
            )
        else:
            cursor = await conn.execute(
                query("pause_queue"), {"queue": queue, "actor": actor.name, "reason": reason}
            )
            if await cursor.fetchone() is None:
                outcome.problems.append(await _already_paused(conn, queue))
            else:
                outcome.message = (
                    f"queue {queue!r} paused: workers take none of its jobs until it is "
                    "resumed; running jobs finish"
                )
        outcome.message = outcome.message or outcome.problems[0]
        target = {"queue": _audited(queue), **({"reason": reason} if reason else {})}
        await _record(conn, actor, "pause_queue", target, [], outcome.message)
    return outcome


async def resume_queue(conn: Connection, actor: Actor, queue: str) -> Outcome:
    """Resume a paused queue and wake the workers that take it at once: a NOTIFY on
    its channel and the any-queue channel, as a deferred job sends (sent at commit;
    workers that poll, through a transaction pooler, take its jobs at their next poll)."""
    outcome = Outcome()
    async with conn.transaction():
        row = None
        if _storable(queue):
            row = await (await conn.execute(query("resume_queue"), {"queue": queue})).fetchone()
        if row is None:
            outcome.problems.append(
                f"queue {queue[:MAX_QUEUE_NAME]!r} is not paused: nothing to resume"
            )
            outcome.message = outcome.problems[0]
        else:
            channels = [*get_channel_for_queues([queue]), *get_channel_for_queues(None)]
            payload = json.dumps({"type": "queue_resumed", "queue": queue})
            await conn.execute(query("notify_channels"), {"channels": channels, "payload": payload})
            outcome.message = (
                f"queue {queue!r} resumed (paused since {row[0]:%Y-%m-%d %H:%M:%S %Z} by "
                f"{row[1]}): workers take its jobs again"
            )
        await _record(conn, actor, "resume_queue", {"queue": _audited(queue)}, [], outcome.message)
    return outcome


def _storable(queue: str) -> bool:
    """A name a queue can have: not empty, not too long, no NUL (Postgres stores none)."""
    return 0 < len(queue) <= MAX_QUEUE_NAME and "\x00" not in queue


def _audited(text: str, length: int = MAX_QUEUE_NAME) -> str:
    """`text` as Postgres can keep it: NUL bytes escaped, cut to `length`."""
    return text.replace("\x00", "\\x00")[:length]


async def _already_paused(conn: Connection, queue: str) -> str:
    paused = await queues.paused_queue(conn, queue)
    if paused is None:  # resumed between the two statements
        return f"queue {queue!r} was paused and resumed meanwhile: try again"
    return (
        f"queue {queue!r} is already paused (since {paused.paused_at:%Y-%m-%d %H:%M:%S %Z} "
        f"by {paused.paused_by})"
    )


async def failed_jobs(conn: Connection, task: str | None, limit: int) -> list[dict[str, Any]]:
    """Failed jobs, newest first, each with its last recorded error."""
    cursor = conn.cursor(row_factory=dict_row)
    await cursor.execute(query("failed_jobs"), {"task": task, "limit": limit})
    return await cursor.fetchall()


async def _status(conn: Connection, job_id: int) -> str | None:
    row = await (await conn.execute(query("job_status"), {"job_id": job_id})).fetchone()
    return None if row is None else str(row[0])


async def _not_failed(conn: Connection, job_id: int) -> str:
    cursor = await conn.execute(query("job_statuses"), {"job_ids": [job_id]})
    row = await cursor.fetchone()
    return _why_not_retried(job_id, *((str(row[1]), bool(row[2])) if row else (None, False)))


def _not_cancellable(job_id: int, status: str | None, *, abort: bool) -> str:
    if status is None:
        return f"job {job_id} does not exist"
    if status == "doing" and not abort:
        return f"job {job_id} is running: only waiting jobs are cancelled (--abort stops it)"
    return f"job {job_id} is {status}: only waiting or running jobs can be cancelled"
