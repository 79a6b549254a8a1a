"""What the dashboard reads from Postgres: job pages, one job, failure groups,
activity buckets and the audit log. Every query is a named block in
procqueue/dashboard/queries.sql; this module only picks and fills them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from procqueue.dashboard.queries import query, query_with
from procqueue.queue.jobs import JobSpec
from procqueue.queue.maintenance import MAINTENANCE_QUEUE
from procqueue.queue.queries import query as queue_query

Connection = psycopg.AsyncConnection[Any]

#: The statuses Procrastinate gives a job, and "postponed": a waiting (`todo`) job
#: that a sink's outage, a writer or a rate limit sent back to wait, no attempt spent.
STATUSES = (
    "todo", "postponed", "doing", "succeeded", "failed", "cancelled", "aborting", "aborted",
)  # fmt: skip
POSTPONED = sql.SQL(
    "(j.status = 'todo' AND EXISTS (SELECT FROM procqueue.job_postponements AS pp"
    " WHERE pp.job_id = j.id AND pp.attempts = j.attempts))"
)
PAGE_SIZE = 50


async def rows(
    conn: Connection, statement: sql.SQL | sql.Composed, params: dict[str, Any]
) -> list[dict[str, Any]]:
    cursor = conn.cursor(row_factory=dict_row)
    await cursor.execute(statement, params)
    return await cursor.fetchall()


@dataclass(frozen=True)
class JobFilter:
    """The job list's filters; empty strings mean "any"."""

    status: str = ""
    task: str = ""
    queue: str = ""
    entity: str = ""
    #: Show the maintenance queue's periodic jobs (rescue, prune, reconcile) too.
    maintenance: bool = False
    #: The features' job specs, to tell a lock ("listing:<id>") from a bare id.
    specs: tuple[JobSpec, ...] = ()

    def query(self) -> dict[str, str]:
        """The filters as the job list's query parameters."""
        return {
            "status": self.status, "task": self.task, "queue": self.queue, "entity": self.entity,
            "maintenance": "1" if self.maintenance else "",
        }  # fmt: skip

    @property
    def hides_maintenance(self) -> bool:
        """Maintenance jobs run every few seconds and would bury the others: hidden
        unless asked for, or a queue or task is picked (then it is what was asked)."""
        return not (self.maintenance or self.queue or self.task)

    def entity_id(self) -> str:
        """The id in the entity filter: a job's lock (`listing:<id>`,
        `notification:email:<id>`), else what follows its last ':', else all of it."""
        value = self.entity.strip()
        for spec in self.specs:
            if (key := spec.key_of(value)) is not None:
                return key
        return value.rsplit(":", 1)[-1].strip()

    def conditions(self) -> tuple[list[sql.Composable], dict[str, Any]]:
        """One-line SQL conditions (only the filters that are set) and their parameters."""
        conditions: list[sql.Composable] = []
        params: dict[str, Any] = {}
        if self.status == "postponed":
            conditions.append(POSTPONED)
        elif self.status:
            conditions.append(sql.SQL("j.status = %(status)s"))
            params["status"] = self.status
        if self.task:
            conditions.append(sql.SQL("j.task_name = %(task)s"))
            params["task"] = self.task
        if self.queue:
            conditions.append(sql.SQL("j.queue_name = %(queue)s"))
            params["queue"] = self.queue
        if self.hides_maintenance:
            conditions.append(sql.SQL("j.queue_name <> %(maintenance_queue)s"))
            params["maintenance_queue"] = MAINTENANCE_QUEUE
        if self.entity:
            conditions.append(self.entity_condition(self.entity_id()))
        return conditions, params

    def entity_condition(self, key: str) -> sql.Composable:
        """Jobs of one row or object by their lock (`listing:<id>`, indexed), jobs of
        many keys by their task and the key in their args."""
        locks = [lock for spec in self.specs if (lock := spec.lock(key)) is not None]
        alternatives: list[sql.Composable] = [
            sql.SQL("j.lock = ANY({locks})").format(locks=sql.Literal(locks))
        ]
        alternatives += [
            sql.SQL("(j.task_name = {task} AND j.args -> {member} ? {key})").format(
                task=sql.Literal(spec.task_name),
                member=sql.Literal(spec.keys_arg),
                key=sql.Literal(key),
            )
            for spec in self.specs
            if spec.keys_arg is not None
        ]
        return sql.SQL("({})").format(sql.SQL(" OR ").join(alternatives))


@dataclass(frozen=True)
class JobPage:
    jobs: list[dict[str, Any]]
    newer: int | None  # pass as ?after= for the page of newer jobs
    older: int | None  # pass as ?before= for the page of older jobs


async def job_page(
    conn: Connection,
    filters: JobFilter,
    before: int | None = None,
    after: int | None = None,
    limit: int = PAGE_SIZE,
) -> JobPage:
    """One page of jobs, newest first, by keyset: `before`/`after` are ids seen."""
    conditions, params = filters.conditions()
    if after is not None:
        conditions.append(sql.SQL("j.id > %(after)s"))
        params["after"] = after
        order = sql.SQL("ASC")
    else:
        if before is not None:
            conditions.append(sql.SQL("j.id < %(before)s"))
            params["before"] = before
        order = sql.SQL("DESC")
    where = sql.SQL(" AND ").join(conditions) if conditions else sql.SQL("true")
    params["limit"] = limit + 1
    found = await rows(conn, query_with("dashboard_jobs", filters=where, order=order), params)
    more = len(found) > limit
    found = found[:limit]
    if after is not None:
        found.reverse()
        newer = found[0]["id"] if more and found else None
        older = found[-1]["id"] if found else None
    else:
        newer = found[0]["id"] if before is not None and found else None
        older = found[-1]["id"] if more and found else None
    return JobPage(found, newer, older)


async def names(conn: Connection, which: str) -> list[str]:
    """Task or queue names present in the jobs table (`which`: "task" or "queue")."""
    if which not in ("task", "queue"):
        raise ValueError(f"no {which!r} names: ask for 'task' or 'queue'")
    found = await rows(conn, query_with("dashboard_distinct_names", column=f"{which}_name"), {})
    return [row["name"] for row in found]


async def waiting_changes(conn: Connection, filters: JobFilter) -> list[dict[str, Any]]:
    """The changes of the filtered entity id that wait for a drain job (a change in
    procqueue.sync_changes has no job of its own until it fails)."""
    if not filters.entity:
        return []
    return await rows(conn, query("dashboard_waiting_changes"), {"key": filters.entity_id()})


@dataclass(frozen=True)
class JobDetail:
    job: dict[str, Any]
    events: list[dict[str, Any]]
    errors: list[dict[str, Any]]


async def job_detail(conn: Connection, job_id: int) -> JobDetail | None:
    found = await rows(conn, query("dashboard_job"), {"job_id": job_id})
    if not found:
        return None
    params = {"job_id": job_id}
    events = await rows(conn, query("dashboard_job_events"), params)
    errors = await rows(conn, query("dashboard_job_errors"), params)
    return JobDetail(found[0], events, errors)


@dataclass(frozen=True)
class Bucket:
    start: datetime
    succeeded: int
    retried: int
    failed: int

    @property
    def attempts(self) -> int:
        return self.succeeded + self.retried + self.failed

    @property
    def error_rate(self) -> float | None:
        """Failed attempts (final or retried) among all finished attempts."""
        return (self.retried + self.failed) / self.attempts if self.attempts else None


async def failed_per_queue(conn: Connection) -> dict[str, int]:
    found = await rows(conn, query("dashboard_failed_per_queue"), {})
    return {row["queue_name"]: row["failed"] for row in found}


async def failure_groups(conn: Connection) -> list[dict[str, Any]]:
    return await rows(conn, query("dashboard_failure_groups"), {})


async def failed_jobs(conn: Connection, limit: int = PAGE_SIZE) -> list[dict[str, Any]]:
    """The newest failed jobs with their last error (the `procqueue failed` query)."""
    return await rows(conn, queue_query("failed_jobs"), {"task": None, "limit": limit})


async def audit(
    conn: Connection, before: int | None = None, limit: int = PAGE_SIZE
) -> list[dict[str, Any]]:
    return await rows(conn, query("dashboard_audit"), {"before": before, "limit": limit})


def pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)
