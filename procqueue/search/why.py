"""`procqueue why <entity> <id>`: the story of one row, for "where is my listing?".

Everything in one place, read-only: the row as it is now (present, deleted, or hidden
by row-level security), its waiting change (procqueue.sync_changes) and the jobs that
sync it (row jobs locked on it, bulk jobs carrying its id, the entity's drain job), why
they wait (an open circuit, a writer still in its transaction, a scheduled retry, or
simply queued), their last failed attempts, the document in the index against the one
the row would produce now (field by field), and the image cleanups waiting for URLs the
row or its document holds. Then a verdict with the one command that fixes it.

A row that row-level security hides from this connection is read as hidden (the read
runs with row security off, as the worker's do: PostgreSQL raises instead of hiding),
and so is one whose newest attempt failed with RowsHidden: the worker's role no longer
sees it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from procqueue.entities import Entity, EntityRegistry
from procqueue.errors import ProcqueueError, RowsHidden
from procqueue.queue.jobs import JobSpec
from procqueue.search.client import SearchIndex, translate_errors
from procqueue.search.document import Unindexable, document_from_row
from procqueue.search.jobs import SINK, bulk_job, drain_job, row_job
from procqueue.search.queries import query
from procqueue.search.settings import SearchConfig
from procqueue.search.sync import entity_query, unfiltered_read

Connection = psycopg.AsyncConnection[Any]

#: How many jobs, attempts and item errors the story shows (newest first).
SHOWN = 10
#: The start of a RowsHidden message names the role the row is hidden from.
_HIDDEN_FROM = re.compile(r"^role (?P<role>\S+) does not see every row")
#: A postponement's reason when the row's writer is still in its transaction
#: (procqueue/search/sync.py `still_written`).
_WRITER_OPEN = "is still in its transaction"
#: What `procqueue why` exits with: 0 when the row and its document agree.
IN_SYNC, NOT_IN_SYNC = 0, 1


@dataclass(frozen=True)
class Row:
    """The row as it is now: "present", "deleted" or "hidden" (from `hidden_from`)."""

    state: str
    hidden_from: str | None = None
    #: The document the row would produce now (None: deleted, hidden or unindexable).
    document: dict[str, Any] | None = None
    #: Why the row can have no document (too large, unreadable), if so.
    unindexable: str | None = None


@dataclass(frozen=True)
class Change:
    """The row's waiting change (procqueue.sync_changes)."""

    changed_at: datetime
    changes: int
    claimed_by: int | None
    claimed_until: datetime | None
    claim_live: bool


@dataclass(frozen=True)
class Job:
    id: int
    task_name: str
    kind: str  # "row", "bulk" or "drain"
    status: str
    attempts: int
    scheduled_at: datetime | None
    postponed_reason: str | None
    postponed_times: int | None

    @property
    def pending(self) -> bool:
        return self.status in ("todo", "doing")


@dataclass(frozen=True)
class Attempt:
    job_id: int
    task_name: str
    attempt: int
    error_type: str
    message: str
    transient: bool
    final: bool
    occurred_at: datetime


@dataclass(frozen=True)
class ItemError:
    job_id: int | None
    index_name: str
    status: int
    reason: str
    occurred_at: datetime


@dataclass(frozen=True)
class FieldDiff:
    field: str
    indexed: Any
    current: Any


@dataclass(frozen=True)
class Document:
    """The row's document in the index (behind its alias)."""

    alias: str
    present: bool
    alias_missing: bool = False
    #: Its external version: the stamp of the read that wrote it (docs/bulk.md).
    version: int | None = None
    source: dict[str, Any] | None = None
    #: Fields whose indexed value differs from what the row would produce now.
    differs: list[FieldDiff] = field(default_factory=list)


@dataclass(frozen=True)
class ImageCleanup:
    job_id: int
    status: str
    scheduled_at: datetime | None
    urls: list[str]


@dataclass(frozen=True)
class OpenCircuit:
    sink: str
    opened_at: datetime | None
    reason: str


@dataclass(frozen=True)
class Verdict:
    """`kind`: in_sync, hidden, circuit, writer, postponed, retry_scheduled, running,
    queued, failed, unindexable or drift; `fix`: the one command that fixes it (None:
    nothing to run, it syncs by itself or needs a change of the row)."""

    kind: str
    in_sync: bool
    summary: str
    fix: str | None = None


@dataclass(frozen=True)
class Story:
    entity: str
    entity_id: str
    row: Row
    change: Change | None
    jobs: list[Job]
    attempts: list[Attempt]
    item_errors: list[ItemError]
    document: Document
    images: list[ImageCleanup]
    circuit: OpenCircuit | None
    verdict: Verdict

    @property
    def exit_status(self) -> int:
        return IN_SYNC if self.verdict.in_sync else NOT_IN_SYNC


class NotFound(ProcqueueError):
    """No row, no document and no trace of work for the id."""


async def _rows(conn: Connection, name: str, params: Mapping[str, Any]) -> list[dict[str, Any]]:
    cursor = conn.cursor(row_factory=dict_row)
    await cursor.execute(query(name), params)
    return await cursor.fetchall()


async def _read_row(conn: Connection, entity: Entity, entity_id: str) -> Row:
    cursor = conn.cursor(row_factory=dict_row)
    try:
        async with unfiltered_read(conn, entity, f"the story of {entity.name} {entity_id}"):
            await cursor.execute(entity_query("read_entity_row", entity), {"id": entity_id})
            found = await cursor.fetchone()
    except RowsHidden as hidden:
        return Row("hidden", hidden_from=hidden.role)
    except psycopg.errors.DataError as error:
        detail = error.diag.message_primary or str(error)
        raise ProcqueueError(
            f"{entity_id!r} is not a key of {entity.table} ({entity.primary_key}: {detail}): "
            f"give the {entity.name}'s {entity.primary_key} as it is in the table"
        ) from None
    if found is None:
        return Row("deleted")
    try:
        return Row("present", document=document_from_row(entity, found))
    except Unindexable as error:
        return Row("present", unindexable=str(error))


async def _read_document(
    search: SearchIndex, entity: Entity, entity_id: str, current: dict[str, Any] | None
) -> Document:
    alias = search.alias(entity)
    with translate_errors(f"reading {entity.name} {entity_id} from {alias}"):
        if not await search.client.indices.exists_alias(name=alias):
            return Document(alias, present=False, alias_missing=True)
        found = await search.client.options(ignore_status=404).get(index=alias, id=entity_id)
    answer: dict[str, Any] = found.body
    if not answer.get("found"):
        return Document(alias, present=False)
    source: dict[str, Any] = answer["_source"]
    differs = []
    if current is not None:
        differs = [
            FieldDiff(name, source.get(name), current.get(name))
            for name in sorted(set(source) | set(current))
            if source.get(name) != current.get(name)
        ]
    return Document(alias, True, version=answer.get("_version"), source=source, differs=differs)


def _image_urls(entity: Entity, *documents: Mapping[str, Any] | None) -> list[str]:
    urls: set[str] = set()
    for document in documents:
        for column in entity.image_columns:
            value = (document or {}).get(column)
            values = value if isinstance(value, list) else [value]
            urls.update(url for url in values if isinstance(url, str) and url)
    return sorted(urls)


def _job_kind(entity: Entity, task_name: str) -> str:
    if task_name == bulk_job(entity).task_name:
        return "bulk"
    if task_name == drain_job(entity).task_name:
        return "drain"
    return "row"


async def explain(
    conn: Connection, search: SearchIndex, entity: Entity, entity_id: str, *,
    image_cleanup: JobSpec | None = None,
) -> Story:  # fmt: skip
    """The story of one row; `conn` in autocommit mode. NotFound when there is no
    row, no document and no trace of work for it (a mistyped id, most likely)."""
    row = await _read_row(conn, entity, entity_id)
    params = {"entity": entity.name, "id": entity_id, "limit": SHOWN}
    changes = await _rows(conn, "why_change", params)
    change = Change(**changes[0]) if changes else None
    found_jobs = await _rows(conn, "why_jobs", {
        **params, "lock": row_job(entity, "update").lock(entity_id),
        "bulk_task": bulk_job(entity).task_name, "drain_task": drain_job(entity).task_name,
        "claimed_by": change.claimed_by if change else None,
        "changed_at": change.changed_at if change else None,
    })  # fmt: skip
    jobs = [Job(kind=_job_kind(entity, job["task_name"]), **job) for job in found_jobs]
    attempts = [
        Attempt(**attempt)
        for attempt in await _rows(
            conn, "why_attempts", {"job_ids": [job.id for job in jobs], "limit": SHOWN}
        )
    ]
    item_errors = [ItemError(**item) for item in await _rows(conn, "why_item_errors", params)]
    circuits = await _rows(conn, "why_circuit", {"sink": SINK})
    circuit = OpenCircuit(**circuits[0]) if circuits else None
    document = await _read_document(search, entity, entity_id, row.document)
    images: list[ImageCleanup] = []
    urls = _image_urls(entity, row.document, document.source)
    if image_cleanup is not None and urls:
        images = [
            ImageCleanup(job_id=job["id"], status=job["status"],
                         scheduled_at=job["scheduled_at"], urls=list(job["urls"]))
            for job in await _rows(
                conn, "why_image_cleanups", {"task": image_cleanup.task_name, "urls": urls}
            )
        ]  # fmt: skip
    if row.state == "deleted" and not document.present and change is None and not jobs:
        raise NotFound(
            f"{entity.name} {entity_id} not found: no row in {entity.table}, no document in "
            f"{document.alias}, no waiting change and no sync job; check the id and the entity"
        )
    row = _hidden_from_worker(row, jobs, attempts)
    verdict = judge(entity, entity_id, row, change, jobs, attempts, document, circuit)
    return Story(
        entity.name, entity_id, row, change, jobs, attempts, item_errors, document, images,
        circuit, verdict,
    )  # fmt: skip


async def story_of(
    conn: Connection, config: SearchConfig, entities: Sequence[Entity], name: str,
    entity_id: str, *, image_cleanup: JobSpec | None = None,
) -> Story:  # fmt: skip
    """`explain` for the entity called `name` (its name or table; ConfigError if none
    is), with a client of its own to the index."""
    entity = EntityRegistry(tuple(entities)).by_table_or_name(name)
    search = SearchIndex.from_config(config)
    try:
        return await explain(conn, search, entity, entity_id, image_cleanup=image_cleanup)
    finally:
        await search.aclose()


def _hidden_from_worker(row: Row, jobs: Sequence[Job], attempts: Sequence[Attempt]) -> Row:
    """A present row whose newest attempt failed with RowsHidden, no job pending: the
    worker's role does not see it (RLS switched on, or BYPASSRLS lost)."""
    if row.state != "present" or not attempts or any(job.pending for job in jobs):
        return row
    newest = attempts[0]
    match = _HIDDEN_FROM.match(newest.message)
    if not newest.error_type.endswith(f".{RowsHidden.__qualname__}") or match is None:
        return row
    return Row("hidden", hidden_from=match["role"], document=row.document)


def _in_sync(row: Row, document: Document) -> bool:
    if row.state == "hidden" and row.document is None:
        return False  # this connection cannot read it: nothing to compare
    if row.unindexable is not None:
        return False  # a row with no possible document is not in its index: its own verdict
    if row.state == "deleted":
        return not document.present
    return document.present and not document.differs


def _when(moment: datetime | None) -> str:
    if moment is None:
        return "now"
    return moment.astimezone(UTC).isoformat(timespec="seconds")


def _first_line(text: str) -> str:
    line = (text.splitlines() or [""])[0]
    return line if len(line) <= 300 else line[:297] + "..."


def judge(
    entity: Entity, entity_id: str, row: Row, change: Change | None, jobs: Sequence[Job],
    attempts: Sequence[Attempt], document: Document, circuit: OpenCircuit | None,
) -> Verdict:  # fmt: skip
    """What the story comes to, and the one command that fixes it."""
    what = f"{entity.name} {entity_id}"
    failed = next((job for job in jobs if job.status == "failed"), None)
    if _in_sync(row, document):
        if row.state == "deleted":
            return Verdict("in_sync", True, f"{what} is deleted and has no document: in sync, "
                           "nothing to do")  # fmt: skip
        return Verdict("in_sync", True, f"{what} is in its index as it is in the table: in "
                       "sync, nothing to do")  # fmt: skip
    if row.state == "hidden":
        then = f"; then `procqueue retry {failed.id}`" if failed else ""
        return Verdict(
            "hidden", False,
            f"row-level security hides {what} from role {row.hidden_from}: its sync stopped "
            f"rather than read it as deleted; give the role BYPASSRLS or a policy that sees "
            f"every row of {entity.table}{then}",
            f"ALTER ROLE {row.hidden_from} BYPASSRLS",
        )  # fmt: skip
    if row.unindexable is not None:
        return Verdict("unindexable", False, f"{what} can have no document: {row.unindexable}")
    pending = [job for job in jobs if job.pending]
    live_change = change is not None and (
        change.claim_live or any(job.kind == "drain" for job in pending)
    )
    if pending or live_change:
        return _waiting(what, change, pending, attempts, circuit)
    if failed is not None:
        error = next((a for a in attempts if a.job_id == failed.id), None)
        reason = (
            f"{error.error_type.rsplit('.', 1)[-1]}: {_first_line(error.message)}"
            if error else "no error recorded"
        )  # fmt: skip
        return Verdict(
            "failed", False,
            f"{what}'s sync job {failed.id} ({failed.task_name}) failed after "
            f"{failed.attempts} attempt(s): {reason}",
            f"procqueue retry {failed.id}",
        )  # fmt: skip
    state = (
        "has no document" if not document.present
        else "has a document though its row is deleted" if row.state == "deleted"
        else f"has a stale document ({', '.join(d.field for d in document.differs)} differ)"
    )  # fmt: skip
    return Verdict(
        "drift", False,
        f"{what} {state}, and no change or job is waiting to sync it",
        f"procqueue verify --repair {entity.name} {entity_id}",
    )  # fmt: skip


def _waiting(
    what: str, change: Change | None, pending: Sequence[Job], attempts: Sequence[Attempt],
    circuit: OpenCircuit | None,
) -> Verdict:  # fmt: skip
    """Why the row's waiting change or job has not synced it yet."""
    if circuit is not None:
        return Verdict(
            "circuit", False,
            f"{what} waits behind an open circuit: {circuit.sink} is unavailable since "
            f"{_when(circuit.opened_at)} ({_first_line(circuit.reason)}); its sync runs when "
            "a probe gets through, no retry spent: nothing to run",
        )  # fmt: skip
    postponed = next((job for job in pending if job.postponed_reason), None)
    if postponed is not None:
        reason = postponed.postponed_reason or ""
        kind = "writer" if _WRITER_OPEN in reason else "postponed"
        return Verdict(
            kind, False,
            f"{what}'s job {postponed.id} ({postponed.task_name}) is postponed until "
            f"{_when(postponed.scheduled_at)}: {_first_line(reason)}; no retry spent, "
            "nothing to run",
        )  # fmt: skip
    running = next((job for job in pending if job.status == "doing"), None)
    if running is not None or (change is not None and change.claim_live):
        job_id = running.id if running else change.claimed_by if change else None
        return Verdict("running", False, f"{what} is being synced now by job {job_id}")
    retrying = next((job for job in pending if job.attempts > 0), None)
    if retrying is not None:
        error = next((a for a in attempts if a.job_id == retrying.id), None)
        last = (
            f" after {error.error_type.rsplit('.', 1)[-1]}: {_first_line(error.message)}"
            if error else ""
        )  # fmt: skip
        return Verdict(
            "retry_scheduled", False,
            f"{what}'s job {retrying.id} ({retrying.task_name}) retries at "
            f"{_when(retrying.scheduled_at)}{last}: nothing to run",
        )  # fmt: skip
    if change is not None:
        drain = next((job for job in pending if job.kind == "drain"), None)
        by = f"{drain.task_name} job {drain.id}" if drain else "drain job"
        return Verdict(
            "queued", False,
            f"{what} has a change waiting since {_when(change.changed_at)} "
            f"({change.changes} write(s)) for the {by}: it syncs when a worker takes it, "
            "nothing to run",
        )  # fmt: skip
    first = pending[0]
    return Verdict(
        "queued", False,
        f"{what}'s job {first.id} ({first.task_name}) waits for a worker"
        + (f" (due {_when(first.scheduled_at)})" if first.scheduled_at else "")
        + ": nothing to run",
    )  # fmt: skip
