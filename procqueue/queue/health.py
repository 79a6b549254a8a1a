"""Read the health functions of migration 0006 and judge the queue from them.

`read_snapshot` runs the four health queries on one connection; `evaluate`
turns a snapshot into a verdict (healthy / degraded / unhealthy, with reasons)
using the thresholds of a HealthConfig (`Settings.health`). The CLI, `/healthz`
and the Prometheus gauges all read the same snapshot. `roll_up_task_stats`
keeps the hourly rollups of long task_stats windows current (maintenance).
"""

from __future__ import annotations

import asyncio
import enum
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from procqueue.engine.refusals import UnknownTask
from procqueue.queue.queries import query
from procqueue.queue.queues import PausedQueue

#: The longest history health reads (PROCQUEUE_HEALTH_WINDOW, `health --window`): ten
#: years, far past any prune setting; a longer one reaches before the timestamps
#: Postgres can hold.
MAX_WINDOW = timedelta(days=3650)

#: The queue's own periodic tasks (procqueue/queue/maintenance.py) are named so.
MAINTENANCE_PREFIX = "procqueue:"


@dataclass(frozen=True)
class HealthConfig:
    """What `evaluate` judges by and how much history `read_snapshot` reads
    (PROCQUEUE_HEALTH_*; `stalled_after` is PROCQUEUE_STALLED_TIMEOUT)."""

    lag_degraded: float = 60.0  # seconds the oldest waiting job has waited
    lag_unhealthy: float = 600.0
    # Failure rates (see `evaluate`): jobs failed for good ÷ jobs finished in the window,
    # per task and over all tasks, once at least `min_failures` jobs failed.
    failure_rate_degraded: float = 0.05
    failure_rate_unhealthy: float = 0.5
    min_failures: int = 3
    min_workers: int = 1
    window: timedelta = timedelta(hours=1)  # task history
    stalled_after: timedelta = timedelta(seconds=30)  # a worker's heartbeat age


class Status(enum.IntEnum):
    """The verdict; its value is the `procqueue health` exit code."""

    HEALTHY = 0
    DEGRADED = 1
    UNHEALTHY = 2


@dataclass(frozen=True)
class QueueHealth:
    queue_name: str
    waiting: int
    running: int
    scheduled: int
    retry_scheduled: int
    failed_last_hour: int
    failed_last_day: int
    lag_seconds: float
    finished_per_minute_5m: float
    finished_per_minute_60m: float


@dataclass(frozen=True)
class TaskHealth:
    task_name: str
    runs: int
    succeeded: int
    failed: int
    retries: int
    aborted: int
    success_rate: float | None
    failure_rate: float | None
    p50_seconds: float | None
    p95_seconds: float | None
    max_seconds: float | None


@dataclass(frozen=True)
class WorkerHealth:
    worker_id: int
    last_heartbeat: datetime
    heartbeat_age_seconds: float
    jobs_in_hand: int
    healthy: bool


@dataclass(frozen=True)
class TableHealth:
    schema_name: str
    table_name: str
    table_bytes: int
    index_bytes: int
    total_bytes: int
    live_tuples: int | None
    dead_tuples: int | None
    last_vacuum: datetime | None


@dataclass(frozen=True)
class CircuitHealth:
    """An outside service the workers found down (procqueue/queue/circuit.py)."""

    sink: str
    opened_at: datetime | None
    reason: str
    updated_at: datetime


@dataclass(frozen=True)
class UnknownTaskHealth:
    """Jobs of a task the workers that took them do not have: waiting for one that has
    it (a rolling upgrade in progress), or for an operator (a typo)."""

    task_name: str
    waiting: int
    waiting_since: datetime


@dataclass(frozen=True)
class ChangeBacklog:
    """An entity's row changes waiting for its drain job: the work behind one job."""

    entity: str
    waiting: int
    claimed: int
    oldest_at: datetime
    #: The queue of the entity's drain job, while it has one waiting or running.
    drain_queue: str | None = None


@dataclass(frozen=True)
class Snapshot:
    queues: list[QueueHealth]
    tasks: list[TaskHealth]
    workers: list[WorkerHealth]
    tables: list[TableHealth]
    window: timedelta
    open_circuits: list[CircuitHealth] = field(default_factory=list)
    unknown_tasks: list[UnknownTaskHealth] = field(default_factory=list)
    changes: list[ChangeBacklog] = field(default_factory=list)
    paused: list[PausedQueue] = field(default_factory=list)

    def paused_names(self) -> set[str]:
        return {queue.queue_name for queue in self.paused}


@dataclass(frozen=True)
class Verdict:
    status: Status
    reasons: list[str] = field(default_factory=list)
    #: One per reason: the jobs-list filter showing the jobs behind it (the dashboard's
    #: `/jobs?state=&task=&queue=`), empty when no list of jobs does.
    filters: list[dict[str, str]] = field(default_factory=list)


async def _rows(
    conn: psycopg.AsyncConnection[Any], name: str, params: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    cursor = conn.cursor(row_factory=dict_row)
    await cursor.execute(query(name), params or {})
    return await cursor.fetchall()


#: The snapshot's queries, by the name of their rows; the first (per-queue counts) is
#: read on the second connection of a split read (`read_snapshot`).
SNAPSHOT_QUERIES: tuple[tuple[str, str], ...] = (
    ("queues", "health_queues"),
    ("tasks", "health_tasks"),
    ("workers", "health_workers"),
    ("tables", "health_storage"),
    ("circuits", "open_circuits"),
    ("unknown", "health_unknown_tasks"),
    ("changes", "health_changes"),
    ("paused", "health_paused"),
)


async def _read_all(
    conn: psycopg.AsyncConnection[Any], names: tuple[tuple[str, str], ...], config: HealthConfig
) -> dict[str, list[dict[str, Any]]]:
    params = {
        "since": config.window,
        "stalled_after": config.stalled_after,
        "reason": UnknownTask.REASON,
    }
    return {key: await _rows(conn, name, params) for key, name in names}


async def read_snapshot(
    conn: psycopg.AsyncConnection[Any],
    config: HealthConfig,
    second: psycopg.AsyncConnection[Any] | None = None,
) -> Snapshot:
    """Every health view, read in one repeatable-read snapshot of the database. With a
    `second` connection, the per-queue counts are read there, side by side with the
    rest, in the same snapshot (exported from `conn`'s transaction and imported)."""
    async with conn.transaction():
        await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        if second is None:
            found = await _read_all(conn, SNAPSHOT_QUERIES, config)
        else:
            cursor = await conn.execute("SELECT pg_export_snapshot()")
            exported = await cursor.fetchone()
            assert exported is not None
            async with second.transaction():
                await second.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                await second.execute(
                    sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(exported[0]))
                )
                split, rest = await asyncio.gather(
                    _read_all(second, SNAPSHOT_QUERIES[:1], config),
                    _read_all(conn, SNAPSHOT_QUERIES[1:], config),
                )
            found = {**split, **rest}
    return Snapshot(
        queues=[QueueHealth(**row) for row in found["queues"]],
        tasks=[TaskHealth(**row) for row in found["tasks"]],
        workers=[WorkerHealth(**row) for row in found["workers"]],
        tables=[TableHealth(**row) for row in found["tables"]],
        window=config.window,
        open_circuits=[CircuitHealth(**row) for row in found["circuits"]],
        unknown_tasks=[UnknownTaskHealth(**row) for row in found["unknown"]],
        changes=[ChangeBacklog(**row) for row in found["changes"]],
        paused=[PausedQueue(**row) for row in found["paused"]],
    )


async def roll_up_task_stats(
    pool: AsyncConnectionPool[Any], deadline: float, hours_per_call: int = 24
) -> int:
    """Roll up every completed hour not rolled up yet (migration 0017), oldest
    first, `hours_per_call` per short transaction, until none is left or
    `time.monotonic()` passes `deadline`; the hours rolled up."""
    total = 0
    while True:
        async with pool.connection() as conn:
            cursor = await conn.execute(query("roll_up_task_stats"), {"max_hours": hours_per_call})
            row = await cursor.fetchone()
        done: int = row[0] if row else 0
        total += done
        if done < hours_per_call or time.monotonic() >= deadline:
            return total


def _worse(current: Status, new: Status) -> Status:
    return max(current, new)


def evaluate(snapshot: Snapshot, config: HealthConfig) -> Verdict:
    """Judge the queue: no healthy worker, an outside service down (an open circuit),
    lag (of jobs, and of row changes waiting for a drain job), and failure rates per
    task and over all tasks (`_failure_level`)."""
    status = Status.HEALTHY
    reasons: list[str] = []
    filters: list[dict[str, str]] = []

    def reason(text: str, **jobs_filter: str) -> None:
        reasons.append(text)
        filters.append(jobs_filter)

    healthy_workers = sum(1 for worker in snapshot.workers if worker.healthy)
    if healthy_workers < config.min_workers:
        status = Status.UNHEALTHY
        reason(
            f"{healthy_workers} healthy worker(s), at least {config.min_workers} "
            "needed: start `procqueue worker` (or check why workers stopped heartbeating)"
        )
    for circuit in snapshot.open_circuits:
        status = Status.UNHEALTHY
        since = f" since {circuit.opened_at:%Y-%m-%d %H:%M:%S %Z}" if circuit.opened_at else ""
        reason(
            f"{circuit.sink} is unavailable{since}: its jobs wait (spending no retries) "
            f"until it answers; last error: {circuit.reason[:300]}",
            state="postponed",
        )
    for unknown in snapshot.unknown_tasks:
        waited = (datetime.now(UTC) - unknown.waiting_since).total_seconds()
        level = Status.UNHEALTHY if waited >= config.lag_unhealthy else Status.DEGRADED
        status = _worse(status, level)
        reason(
            f"{unknown.waiting} job(s) of task {unknown.task_name!r} have waited {waited:.0f} s "
            "for a worker that has the task: finish deploying the version that has it, or "
            "cancel them if the name is a typo",
            state="todo",
            task=unknown.task_name,
        )
    stalled = [worker.worker_id for worker in snapshot.workers if not worker.healthy]
    if stalled:
        status = _worse(status, Status.DEGRADED)
        reason(
            f"worker(s) {', '.join(map(str, stalled))} stopped heartbeating; their jobs "
            "are retried by the stalled-job rescue",
            state="doing",
        )
    for queue_name, text in _paused_reasons(snapshot):
        status = _worse(status, Status.DEGRADED)
        reason(text, state="todo", queue=queue_name)
    paused = snapshot.paused_names()
    for queue in snapshot.queues:
        if queue.queue_name in paused:
            continue  # its jobs wait because an operator paused it: not lag
        lag = queue.lag_seconds
        if lag >= config.lag_unhealthy:
            level = Status.UNHEALTHY
        elif lag >= config.lag_degraded:
            level = Status.DEGRADED
        else:
            continue
        status = _worse(status, level)
        reason(
            f"queue {queue.queue_name!r}: oldest waiting job has waited {lag:.0f} s "
            f"({queue.waiting} waiting): add workers or find what slows them",
            state="todo",
            queue=queue.queue_name,
        )
    for backlog in snapshot.changes:
        if backlog.drain_queue in paused:
            continue  # said with its paused queue
        waited = (datetime.now(UTC) - backlog.oldest_at).total_seconds()
        if waited >= config.lag_unhealthy:
            level = Status.UNHEALTHY
        elif waited >= config.lag_degraded:
            level = Status.DEGRADED
        else:
            continue
        status = _worse(status, level)
        reason(
            f"{backlog.waiting} change(s) of {backlog.entity} wait for its drain job, the "
            f"oldest for {waited:.0f} s: add workers, or see why its drain job does not run "
            "(`procqueue failed`, an open circuit above)"
        )
    window = _describe_window(snapshot.window)
    worst_task = Status.HEALTHY
    for task in snapshot.tasks:
        level = _failure_level(task.failed, task.succeeded + task.failed, config)
        if level is Status.HEALTHY:
            continue
        worst_task = _worse(worst_task, level)
        reason(
            f"task {task.task_name!r}: {_failed_of(task.failed, task.succeeded + task.failed)} "
            f"in the last {window}: see `procqueue failed --task {task.task_name}`",
            state="failed",
            task=task.task_name,
        )
    # All tasks together, but the queue's own periodic ones: they run every few seconds
    # and would dilute the rate of the work they serve.
    work = [task for task in snapshot.tasks if not task.task_name.startswith(MAINTENANCE_PREFIX)]
    failed = sum(task.failed for task in work)
    finished = sum(task.succeeded + task.failed for task in work)
    level = _failure_level(failed, finished, config)
    status = _worse(status, _worse(worst_task, level))
    if level > worst_task:  # no single task tells it: say it for all of them
        reason(
            f"{_failed_of(failed, finished)} in the last {window}, across "
            f"{sum(1 for task in work if task.failed)} task(s): see `procqueue failed`",
            state="failed",
        )
    return Verdict(status, reasons, filters)


def _paused_reasons(snapshot: Snapshot) -> list[tuple[str, str]]:
    """A paused queue with work waiting reads paused, not as lag: degraded (work is
    held on purpose, but a forgotten pause holds it for good), saying who paused it and
    how to resume. A paused queue with nothing waiting is no reason. (queue, reason) pairs."""
    waiting = {queue.queue_name: queue.waiting for queue in snapshot.queues}
    reasons = []
    for paused in snapshot.paused:
        jobs = waiting.get(paused.queue_name, 0)
        held = [b for b in snapshot.changes if b.drain_queue == paused.queue_name]
        if not jobs and not held:
            continue
        changes = "".join(f" and {b.waiting} change(s) of {b.entity}" for b in held)
        name, since = paused.queue_name, f"{paused.paused_at:%Y-%m-%d %H:%M:%S}"
        text = (
            f"queue {name!r} is paused (since {since} by {paused.paused_by}): {jobs} job(s)"
            f"{changes} wait; `procqueue resume {name}` to run them"
        )
        reasons.append((name, text))
    return reasons


def _failure_level(failed: int, finished: int, config: HealthConfig) -> Status:
    """The rule: at least `min_failures` jobs failed for good in the window (fewer is
    a blip, whatever the rate), and they are `failure_rate_degraded` (5 %) of the
    jobs finished, or `failure_rate_unhealthy` (50 %). No minimum number of runs: 5
    failures in 31 runs (16 %) is degraded, 10 in 10,000 (0.1 %) healthy."""
    if failed < config.min_failures or finished == 0:
        return Status.HEALTHY
    rate = failed / finished
    if rate >= config.failure_rate_unhealthy:
        return Status.UNHEALTHY
    if rate >= config.failure_rate_degraded:
        return Status.DEGRADED
    return Status.HEALTHY


def _failed_of(failed: int, finished: int) -> str:
    return f"{failed} of {finished} jobs failed for good ({failed / finished:.0%})"


def _describe_window(window: timedelta) -> str:
    seconds = int(window.total_seconds())
    if seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    if seconds % 60 == 0:
        return f"{seconds // 60} min"
    return f"{seconds} s"


def as_json(snapshot: Snapshot, verdict: Verdict) -> dict[str, Any]:
    """The snapshot and verdict as JSON-ready data."""
    data = asdict(snapshot)
    data["window_seconds"] = snapshot.window.total_seconds()
    del data["window"]
    return {"status": verdict.status.name.lower(), "reasons": verdict.reasons, **data}


def human_bytes(size: int) -> str:
    """A storage size as the CLI and the dashboard show it (`12.3 MB`)."""
    amount = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if amount < 1024 or unit == "GB":
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    return f"{amount:.1f} TB"
