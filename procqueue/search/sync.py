"""Entity sync: make the entity's search document match its current row.

The job carries an id, never a snapshot. The worker takes the entity's sync key
exclusively before reading, which waits for every writer whose job was coalesced
into this one to commit; then the row it reads is at least as new as theirs.
Present row: index it. Missing row: delete the document. A row that cannot have
a document (too large, procqueue/search/document.py): delete it, and fail with
the reason.

Ordering against bulk jobs (docs/bulk.md): the worker holds its entity's publish
key shared from before the read until the write is done, a bulk job holds it
exclusively, so reads-and-writes of one row never interleave; every write also
carries the read's stamp from `procqueue.sync_version` as an external version,
so a late request of an older read is refused (409) instead of applied.

Hidden rows: every read of an entity's table runs with `SET LOCAL row_security = off`
(`row_security_off`, transaction-local, safe behind a transaction pooler), so that
row-level security switched on (or FORCEd) after the worker started makes
PostgreSQL raise instead of filtering: a hidden row never reads as missing, which
would delete its document. The job then fails with RowsHidden (procqueue/errors.py).

Backpressure: items Elasticsearch refuses with 429/503 (`ItemFailure.backpressure`)
are the cluster asking to slow down: the job's error is then a SinkUnavailable, so
it is postponed spending no attempt and the sink's circuit says so in health.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from procqueue.entities import Entity
from procqueue.errors import (
    JobError,
    PermanentError,
    RowsHidden,
    SinkUnavailable,
    TransientError,
    is_row_security_refusal,
)
from procqueue.search.client import ItemFailure, SearchIndex, Write
from procqueue.search.document import (
    DOCUMENT_COLUMN,
    Unindexable,
    document_columns,
    document_json,
)
from procqueue.search.jobs import SINK
from procqueue.search.queries import query, query_with

LOCK_RETRY_SECONDS = (0.002, 0.01, 0.05)
READ_SAVEPOINT = sql.SQL("SAVEPOINT procqueue_read")
RELEASE_READ_KEY = sql.SQL("ROLLBACK TO SAVEPOINT procqueue_read")
#: A `_bulk` request carries at most this many bytes of documents (one larger
#: document goes alone): Elasticsearch refuses a request over its
#: http.max_content_length whole, which would fail every row in it.
MAX_REQUEST_BYTES = 8 * 1024 * 1024
#: Errors of reading one row that are about its values (a read of the chunk that
#: raises one is done again row by row, docs/bulk.md); others (a missing column,
#: a missing privilege) are about the entity and fail the job.
ROW_READ_ERRORS = (psycopg.errors.DataError, psycopg.errors.ProgramLimitExceeded)
READ_ERRORS = (*ROW_READ_ERRORS, psycopg.errors.SyntaxErrorOrAccessRuleViolation)


def entity_query(
    name: str, entity: Entity, **extra: str | sql.Composable
) -> sql.SQL | sql.Composed:
    """A named query over an entity's table (alias t), reading its key and its
    search document (procqueue/search/document.py). Without `extra` it is rendered
    once per entity and query: composing it took about 1 ms of CPU, more than the rest
    of a row job's own work (benchmarks/RESULTS.md, "Micro-batched sync")."""
    if extra:
        return _composed(name, entity, **extra)
    key = (name, entity.table, entity.primary_key, tuple(entity.fields.items()),
           entity.max_document_bytes, entity.max_array_length)  # fmt: skip
    rendered = _RENDERED.get(key)
    if rendered is None:
        rendered = _RENDERED[key] = sql.SQL(_composed(name, entity).as_string(None))
    return rendered


_RENDERED: dict[tuple[object, ...], sql.SQL] = {}


def _composed(name: str, entity: Entity, **extra: str | sql.Composable) -> sql.Composed:
    return query_with(
        name,
        columns=document_columns(entity),
        schema=entity.schema_name,
        table=entity.table_name,
        primary_key=entity.primary_key,
        **extra,
    )


def read_error(entity: Entity, entity_id: str, error: psycopg.Error) -> str:
    detail = error.diag.message_primary or str(error) or type(error).__name__
    return f"cannot read {entity.table} row {entity_id!r}: {detail}"


def worker_role(conn: psycopg.AsyncConnection[Any]) -> str:
    """The role the connection reads as (reported by the server at login; no query,
    so that it can be told from inside a failed transaction)."""
    return conn.info.parameter_status("session_authorization") or conn.info.user


def rows_hidden(
    conn: psycopg.AsyncConnection[Any], entity: Entity, what: str, error: psycopg.Error
) -> RowsHidden:
    """The error of `what`, a read of `entity`'s table that PostgreSQL refused with
    `error` because row-level security now filters it (`is_row_security_refusal`)."""
    assert is_row_security_refusal(error), error
    return RowsHidden(entity.table, worker_role(conn), what)


@contextlib.asynccontextmanager
async def unfiltered_read(
    conn: psycopg.AsyncConnection[Any], entity: Entity, what: str
) -> AsyncIterator[None]:
    """A transaction (or a savepoint in the caller's) whose reads of `entity`'s table
    raise rather than skip rows row-level security would hide: RowsHidden then."""
    try:
        async with conn.transaction():
            await conn.execute(query("row_security_off"))
            yield
    except psycopg.errors.InsufficientPrivilege as error:
        if not is_row_security_refusal(error):
            raise
        raise rows_hidden(conn, entity, what, error) from error


@dataclass(frozen=True)
class Stamp:
    """What a read learns besides rows: its external version, and the indexes a
    reindex is building (written too, so they miss no change)."""

    version: int
    targets: tuple[str, ...]


async def _stamp(conn: psycopg.AsyncConnection[Any], entity: Entity) -> Stamp:
    row = await (await conn.execute(query("sync_stamp"), {"entity": entity.name})).fetchone()
    assert row is not None
    return Stamp(int(row[0]), tuple(row[1]))


async def _locked_read(
    conn: psycopg.AsyncConnection[Any], entity: Entity, params: dict[str, str]
) -> tuple[bool, Stamp, dict[str, Any] | None]:
    """Inside the caller's transaction, sent as one pipeline: read with row security
    off (a row hidden by row-level security raises, never reads as missing), hold the
    publish key shared (until that transaction ends), try the row's sync key, stamp
    and read the row, then give the sync key back (rolling back to a savepoint
    releases it), so writers of the row never wait for Elasticsearch. The read is its
    own statement: its snapshot is taken after the key is held."""
    async with conn.pipeline():
        await conn.execute(query("row_security_off"))
        await conn.execute(query("lock_publish_shared"), params)
        await conn.execute(READ_SAVEPOINT)
        lock = await conn.execute(query("try_lock_entity"), params)
        stamp = await conn.execute(query("sync_stamp"), params)
        read = conn.cursor(row_factory=dict_row)
        await read.execute(entity_query("read_entity_row", entity), params)
        await conn.execute(RELEASE_READ_KEY)
    locked = await lock.fetchone()
    stamped = await stamp.fetchone()
    assert stamped is not None
    row: dict[str, Any] | None = await read.fetchone()
    return bool(locked and locked[0]), Stamp(int(stamped[0]), tuple(stamped[1])), row


def writes_for(
    search: SearchIndex,
    entity: Entity,
    stamp: Stamp,
    ids: Sequence[str],
    rows: Mapping[str, Mapping[str, Any]],
    only_index: str | None = None,
) -> tuple[list[Write], list[ItemFailure]]:
    """Index the rows found, delete the ids gone: in the alias and every target.
    A row that cannot have a document (Unindexable: too large) has its document
    deleted, so that no stale one stays searchable, and is returned as refused."""
    indexes = [only_index] if only_index else [search.alias(entity), *stamp.targets]
    writes: list[Write] = []
    refused: list[ItemFailure] = []
    for entity_id in ids:
        row = rows.get(entity_id)
        try:
            document = None if row is None else document_json(entity, row)
        except Unindexable as error:
            document = None
            failure = ItemFailure(Write(indexes[0], entity_id, None), error.status, str(error))
            refused.append(failure)
        writes += [Write(index, entity_id, document) for index in indexes]
    return writes, refused


async def write_all(
    search: SearchIndex,
    writes: Sequence[Write],
    version: int,
    rows: Mapping[str, Mapping[str, Any]],
) -> list[ItemFailure]:
    """`search.write_versioned` in as many `_bulk` requests as MAX_REQUEST_BYTES
    asks for (sizes from the rows' document text)."""
    failures: list[ItemFailure] = []
    batch: list[Write] = []
    size = 0
    for write in writes:
        row = rows.get(write.entity_id) if write.document is not None else None
        write_size = 200 + (len(row[DOCUMENT_COLUMN]) if row is not None else 0)
        if batch and size + write_size > MAX_REQUEST_BYTES:
            failures += await search.write_versioned(batch, version)
            batch, size = [], 0
        batch.append(write)
        size += write_size
    if batch:
        failures += await search.write_versioned(batch, version)
    return failures


def backpressure_error(failures: Sequence[ItemFailure]) -> SinkUnavailable | None:
    """The error of writes of which Elasticsearch refused some under backpressure
    (429, 503: an overloaded cluster, not the documents' fault), None if it refused
    none so: a SinkUnavailable, which postpones the job spending no attempt and opens
    the circuit, so that health names the index and the refusal."""
    pressed = [failure for failure in failures if failure.backpressure]
    if not pressed:
        return None
    first = pressed[0]
    return SinkUnavailable(
        SINK,
        f"Elasticsearch rejects writes to {first.write.index} ({first.status}): "
        f"{first.reason} ({len(pressed)} of {len(failures)} refused items); writes to it "
        "slow down and their jobs wait, spending no retry",
    )


def failure_error(failures: Sequence[ItemFailure], what: str) -> JobError | None:
    """The error of a job whose writes Elasticsearch refused (None: none refused):
    a SinkUnavailable if any refusal was backpressure (429, 503: postponed, no attempt
    spent), else transient if any refusal was (5xx), else permanent."""
    if not failures:
        return None
    pressed = backpressure_error(failures)
    if pressed is not None:
        return pressed
    first = failures[0]
    reason = f"Elasticsearch refused {what} in {first.write.index} ({first.status}): {first.reason}"
    if any(failure.transient for failure in failures):
        return TransientError(reason)
    return PermanentError(reason)


def raise_for(failures: Sequence[ItemFailure], what: str) -> None:
    error = failure_error(failures, what)
    if error is not None:
        raise error


def still_written(entity: Entity, entity_id: str, patience: float) -> TransientError:
    """Postpone the row's sync job `patience` seconds, spending no retry."""
    return TransientError.postpone(
        f"a writer of {entity.name} {entity_id}'s key is still in its transaction", patience
    )


async def wait_for_writers(attempt: int) -> None:
    await asyncio.sleep(LOCK_RETRY_SECONDS[min(attempt, len(LOCK_RETRY_SECONDS) - 1)])


async def sync_entity(
    pool: AsyncConnectionPool[Any],
    search: SearchIndex,
    entity: Entity,
    entity_id: str,
    patience: float = 10.0,
) -> str:
    """Bring one document in line with its row; returns what was done. When a writer
    still holds the row's key after `patience` seconds, postpones the job (the same one,
    due `patience` seconds later, spending no retry)."""
    await search.ensure_index(entity)
    await search.wait_for_room([search.alias(entity)])  # before any lock is taken
    params = {"entity": entity.name, "id": entity_id}
    give_up_at = time.monotonic() + patience
    async with pool.connection() as conn:
        for attempt in itertools.count():
            async with conn.transaction():  # holds the publish key until written
                try:
                    locked, stamp, row = await _locked_read(conn, entity, params)
                except psycopg.errors.InsufficientPrivilege as err:
                    if not is_row_security_refusal(err):
                        raise
                    what = f"the sync of {entity.name} {entity_id}"
                    raise rows_hidden(conn, entity, what, err) from err
                except READ_ERRORS as err:
                    raise PermanentError(read_error(entity, entity_id, err)) from err
                if locked:
                    rows = {} if row is None else {entity_id: row}
                    writes, refused = writes_for(search, entity, stamp, [entity_id], rows)
                    failures = await write_all(search, writes, stamp.version, rows)
                    raise_for(failures, f"{entity.name} {entity_id}")
                    if refused:
                        raise PermanentError(refused[0].reason)
                    return "deleted" if row is None else "indexed"
            # A writer of this entity has not committed yet: wait for it.
            if time.monotonic() > give_up_at:
                raise still_written(entity, entity_id, patience)
            await wait_for_writers(attempt)
    raise AssertionError("unreachable")
