"""What the dashboard reads from Postgres: job pages, one job, failure groups,
activity buckets and the audit log. Every query is a named block in
procqueue/dashboard/queries.sql; this module only picks and fills them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from procqueue.dashboard.queries import query, query_with
from procqueue.queue.jobs import JobSpec
from procqueue.queue.maintenance import MAINTENANCE_QUEUE
from procqueue.queue.queries import query as queue_query

Connection = psycopg.AsyncConnection[Any]

#: The states the job list filters by (`?state=`): Procrastinate's statuses, and
#: "postponed": a waiting (`todo`) job that a sink's outage, a writer or a rate limit
#: sent back to wait, no attempt spent; "scheduled": a waiting job due in the future
#: (not postponed); "discarded": a failed job set aside for good (migration 0024),
#: no longer in "failed". "todo" is every waiting job, postponed and scheduled ones too.
STATUSES = (
    "todo", "scheduled", "postponed", "doing", "succeeded", "failed", "discarded",
    "cancelled", "aborting", "aborted",
)  # fmt: skip
POSTPONED = sql.SQL(
    "(j.status = 'todo' AND EXISTS (SELECT FROM procqueue.job_postponements AS pp"
    " WHERE pp.job_id = j.id AND pp.attempts = j.attempts))"
)
DISCARDED = sql.SQL("EXISTS (SELECT FROM procqueue.discarded_jobs AS dd WHERE dd.job_id = j.id)")
STATE_CONDITIONS: dict[str, sql.Composable] = {
    "postponed": POSTPONED,
    "scheduled": sql.SQL("(j.status = 'todo' AND j.scheduled_at > now() AND NOT {})").format(
        POSTPONED
    ),
    "failed": sql.SQL("(j.status = 'failed' AND NOT {})").format(DISCARDED),
    "discarded": sql.SQL("(j.status = 'failed' AND {})").format(DISCARDED),
}
#: A search (`q`) looks through at most this many of the newest jobs the other
#: filters match per page, then offers to go on (keeps a page fast at any size).
SEARCH_WINDOW = 2_000
PAGE_SIZE = 50
#: Job ids are Postgres bigints.
LARGEST_ID = 2**63 - 1


async def rows(
    conn: Connection, statement: sql.SQL | sql.Composed, params: dict[str, Any]
) -> list[dict[str, Any]]:
    cursor = conn.cursor(row_factory=dict_row)
    await cursor.execute(statement, params)
    return await cursor.fetchall()


@dataclass(frozen=True)
class JobFilter:
    """The job list's filters; empty strings mean "any"."""

    status: str = ""  # one of STATUSES (the `state` parameter)
    task: str = ""
    queue: str = ""
    entity: str = ""
    #: Text looked for in the args and in the recorded errors (message, type).
    q: str = ""
    #: Jobs queued at or after `since`, before `until`.
    since: datetime | None = None
    until: datetime | None = None
    #: Show the maintenance queue's periodic jobs (rescue, prune, reconcile) too.
    maintenance: bool = False
    #: The features' job specs, to tell a lock ("listing:<id>") from a bare id.
    specs: tuple[JobSpec, ...] = ()

    def query(self) -> dict[str, str]:
        """The filters as the job list's query parameters."""
        return {
            "state": self.status, "task": self.task, "queue": self.queue, "entity": self.entity,
            "q": self.q, "since": _iso(self.since), "until": _iso(self.until),
            "maintenance": "1" if self.maintenance else "",
        }  # fmt: skip

    @property
    def pattern(self) -> str:
        """`q` as an ILIKE pattern (its own % and _ taken literally)."""
        escaped = self.q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        return f"%{escaped}%"

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
        if self.status in STATE_CONDITIONS:
            conditions.append(STATE_CONDITIONS[self.status])
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
        if self.q:
            params["pattern"] = self.pattern
        return conditions, params

    async def resolved(self, conn: Connection) -> tuple[list[sql.Composable], dict[str, Any]]:
        """`conditions()` with the time range as job id bounds (migration 0024's
        procqueue.first_job_queued_at: ids grow with the time jobs are queued)."""
        conditions, params = self.conditions()
        for name, at, operator in (("since_id", self.since, ">="), ("until_id", self.until, "<")):
            if at is not None:
                found = await rows(conn, query("dashboard_first_job_queued_at"), {"at": at})
                conditions.append(sql.SQL(f"j.id {operator} %({name})s"))
                params[name] = found[0]["id"]
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
    #: With a search whose window ended before the page was full: the last job id it
    #: looked through (the pager goes on from there); None when nothing was left out.
    searched: int | None = None


def _where(conditions: list[sql.Composable]) -> sql.Composable:
    return sql.SQL(" AND ").join(conditions) if conditions else sql.SQL("true")


async def job_page(
    conn: Connection,
    filters: JobFilter,
    before: int | None = None,
    after: int | None = None,
    limit: int = PAGE_SIZE,
) -> JobPage:
    """One page of jobs, newest first, by keyset: `before`/`after` are ids seen. A
    search reads at most SEARCH_WINDOW jobs of the other filters per page."""
    conditions, params = await filters.resolved(conn)
    if after is not None:
        conditions.append(sql.SQL("j.id > %(after)s"))
        params["after"] = after
        order = sql.SQL("ASC")
    else:
        if before is not None:
            conditions.append(sql.SQL("j.id < %(before)s"))
            params["before"] = before
        order = sql.SQL("DESC")
    where = _where(conditions)
    params["limit"] = limit + 1
    source = "dashboard_search_jobs" if filters.q else "dashboard_page_jobs"
    if filters.q:
        params["window"] = SEARCH_WINDOW
    found = await rows(
        conn,
        query_with(
            "dashboard_jobs", source=query_with(source, filters=where, order=order), order=order
        ),
        params,
    )
    more = len(found) > limit
    found = found[:limit]
    edge = None
    if filters.q and not more:  # fewer hits than a page: did the window end the search?
        statement = query_with("dashboard_search_window_end", filters=where, order=order)
        ended = await rows(conn, statement, params)
        edge = ended[0]["id"] if ended else None
    if after is not None:
        found.reverse()
        newer = found[0]["id"] if more and found else edge
        older = found[-1]["id"] if found else None
    else:
        newer = found[0]["id"] if before is not None and found else None
        older = found[-1]["id"] if more and found else edge
    return JobPage(found, newer, older, edge)


#: An action on "everything matching" acts on at most this many jobs at a time.
MAX_MATCHING = 10_000


async def matching_ids(
    conn: Connection, filters: JobFilter, extra: sql.Composable, limit: int = MAX_MATCHING + 1
) -> list[int]:
    """The ids of the jobs the filters (and `extra`, an action's own condition)
    match, newest first, at most `limit`; a search reads every job (no window)."""
    conditions, params = await filters.resolved(conn)
    conditions.append(extra)
    source = "dashboard_search_jobs" if filters.q else "dashboard_page_jobs"
    picked = query_with(source, filters=_where(conditions), order=sql.SQL("DESC"))
    params.update(limit=limit, window=LARGEST_ID)
    found = await rows(conn, query_with("dashboard_matching_ids", source=picked), params)
    return [row["id"] for row in found]


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


#: The events that end an attempt or a job.
END_EVENTS = ("succeeded", "failed", "cancelled", "aborted")
FINAL_STATUSES = ("succeeded", "failed", "cancelled", "aborted")


@dataclass(frozen=True)
class JobDetail:
    job: dict[str, Any]
    events: list[dict[str, Any]]
    errors: list[dict[str, Any]]

    def _last(self, *types: str) -> datetime | None:
        return max((e["at"] for e in self.events if e["type"] in types), default=None)

    @property
    def queued_at(self) -> datetime | None:
        return min((e["at"] for e in self.events if e["type"] == "deferred"), default=None)

    @property
    def started_at(self) -> datetime | None:
        """When its last attempt started."""
        return self._last("started")

    @property
    def finished_at(self) -> datetime | None:
        """When it ended for good (None while it waits or runs)."""
        return self._last(*END_EVENTS) if self.job["status"] in FINAL_STATUSES else None

    @property
    def duration(self) -> timedelta | None:
        """How long its last attempt ran (so far, while it runs)."""
        started = self.started_at
        if started is None:
            return None
        if self.job["status"] == "doing":
            return datetime.now(started.tzinfo) - started
        ended = self._last(*END_EVENTS, "deferred_for_retry")
        return ended - started if ended is not None and ended >= started else None


#: An action's own condition on the jobs it applies to (an action on everything
#: matching counts and takes only these; the operations facade checks again).
ELIGIBLE: dict[str, sql.Composable] = {
    "retry": STATE_CONDITIONS["failed"],
    "discard": STATE_CONDITIONS["failed"],
    "cancel": sql.SQL("j.status = 'todo'"),
    "delete": sql.SQL("j.status <> 'doing'"),
}


async def job_detail(conn: Connection, job_id: int) -> JobDetail | None:
    found = await rows(conn, query("dashboard_job"), {"job_id": job_id})
    if not found:
        return None
    params = {"job_id": job_id}
    events = await rows(conn, query("dashboard_job_events"), params)
    errors = await rows(conn, query("dashboard_job_errors"), params)
    return JobDetail(found[0], events, errors)


async def finished_attempt(conn: Connection, job_id: int) -> dict[str, Any] | None:
    """The logged first-attempt success of a job that left the jobs table, if any."""
    found = await rows(conn, query("dashboard_finished_attempt"), {"job_id": job_id})
    return found[0] if found else None


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


def _iso(value: datetime | None) -> str:
    return value.isoformat(timespec="seconds") if value is not None else ""


def pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)
