"""`procqueue reindex`: build `<alias>_v<N+1>` from Postgres, swap the alias.

1. The new index is created and registered in procqueue.search_targets, and the
   entity's publish key is taken exclusively once in that same transaction: every
   sync that read before has finished writing, every sync after writes the new
   index too. So changes committed while the copy runs reach it.
2. The keys are streamed with a server-side cursor (bounded memory) from the last
   checkpoint; each chunk is read and written like a bulk job (publish key held
   exclusively, external versions), so the copy never overwrites a newer state.
3. The alias moves to the new index in one atomic `_aliases` call; the target is
   forgotten; with `drop_old`, every older `<alias>_v<N>` not behind the alias is
   deleted (not only the one the alias left).
With no alias yet (a new cluster), the copy fills the `_v1` it creates behind the
alias itself, so no empty index is left beside the one in use.
A row Elasticsearch refuses, or that cannot have a document (unreadable, too
large), is recorded in procqueue.sync_item_errors and counted; the copy goes on.
Interrupted (Ctrl-C, a crash, an outage: a transient error), a re-run resumes
into the registered index. Any other error abandons the copy: the half-made index
is forgotten and deleted, so syncs write one index again. Items refused under
backpressure (429/503) are sent again after the index's pause. Rows are read with
row security off: a row that row-level security hides stops the copy (RowsHidden),
it is never left out of the new index (and so out of the alias once it moves).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from procqueue.entities import Entity
from procqueue.errors import PermanentError, TransientError, is_row_security_refusal
from procqueue.queue.failures import is_transient
from procqueue.search.bulk import hold_publish_key, read_chunk, record_item_errors, sync_chunk
from procqueue.search.client import INITIAL_VERSION, ItemFailure, SearchIndex, translate_errors
from procqueue.search.queries import query
from procqueue.search.sync import entity_query, rows_hidden, write_all

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReindexResult:
    entity: str
    index: str
    previous: tuple[str, ...]
    copied: int
    failed: int
    dropped: bool
    deleted: tuple[str, ...] = ()  # the older indexes `drop_old` deleted


async def live_indexes(search: SearchIndex, entity: Entity) -> list[str]:
    alias = search.alias(entity)
    with translate_errors(f"reading alias {alias}"):
        found = await search.client.indices.get_alias(name=alias)
    return sorted(found.keys())


async def versioned_indexes(search: SearchIndex, entity: Entity) -> dict[str, int]:
    """Every `<alias>_v<N>` index of the entity, with its N."""
    pattern = re.compile(rf"^{re.escape(search.alias(entity))}_v(\d+)$")
    with translate_errors("listing indexes"):
        names = await search.client.indices.get(index=f"{search.alias(entity)}_v*")
    return {name: int(m.group(1)) for name in names if (m := pattern.match(name))}


async def next_version(search: SearchIndex, entity: Entity) -> int:
    return max((await versioned_indexes(search, entity)).values(), default=0) + 1


async def _target(
    conn: psycopg.AsyncConnection[Any], search: SearchIndex, entity: Entity, *, first: bool
) -> tuple[str, str | None, int]:
    """The index to fill: the one an interrupted run registered, else the `_v1` just
    made behind the alias (`first`), else a new one."""
    rows = await (await conn.execute(query("reindex_targets"), {"entity": entity.name})).fetchall()
    for name, resume_after, copied in rows:
        if await search.client.indices.exists(index=name):
            return str(name), resume_after, int(copied)
        async with conn.transaction():  # registered but gone: forget it
            await conn.execute(
                query("drop_reindex_target"), {"entity": entity.name, "index_name": name}
            )
    if first:
        name = search.versioned_name(entity, INITIAL_VERSION)
    else:
        name = await search.create_index(entity, await next_version(search, entity), alias=False)
    async with conn.transaction():
        params = {"entity": entity.name, "index_name": name}
        await conn.execute(query("register_reindex_target"), params)
        # Barrier: wait for every sync that read before the registration.
        await conn.execute(query("lock_publish_exclusive"), params)
    return name, None, 0


async def reindex_entity(
    conn: psycopg.AsyncConnection[Any],
    reader: psycopg.AsyncConnection[Any],
    search: SearchIndex,
    entity: Entity,
    *,
    batch_size: int = 1000,
    drop_old: bool = False,
    on_start: Callable[[int, int], None] | None = None,
    on_chunk: Callable[[int], None] | None = None,
) -> ReindexResult:
    """Rebuild the entity's index from its table: `conn` (autocommit) keeps the
    bookkeeping, `reader` (not autocommit) reads the rows. on_start(total estimate,
    already copied) and on_chunk(rows) report progress."""
    alias = search.alias(entity)
    with translate_errors(f"checking alias {alias}"):
        first = not await search.client.indices.exists_alias(name=alias)
    await search.ensure_index(entity)
    index, resume_after, copied = await _target(conn, search, entity, first=first)
    in_use = index in await live_indexes(search, entity)  # filling _v1 in place
    try:
        copied, failed = await _copy(
            conn, reader, search, entity, index, resume_after, copied,
            batch_size=batch_size, on_start=on_start, on_chunk=on_chunk,
        )  # fmt: skip
    except Exception as error:
        if is_transient(error):
            raise
        await _abandon(conn, search, entity, index, error, delete=not in_use)
        raise PermanentError(
            f"reindex of {entity.table} abandoned"
            f"{'' if in_use else f' and {index} deleted'}: {error}"
        ) from error
    previous = tuple(name for name in await live_indexes(search, entity) if name != index)
    await swap_alias(search, entity, index, previous)
    await conn.execute(query("drop_reindex_target"), {"entity": entity.name, "index_name": index})
    deleted = await _drop_older(conn, search, entity, index) if drop_old else ()
    return ReindexResult(
        entity.name, index, previous, copied, failed, bool(deleted), deleted=deleted
    )


async def _drop_older(
    conn: psycopg.AsyncConnection[Any], search: SearchIndex, entity: Entity, index: str
) -> tuple[str, ...]:
    """Delete every `<alias>_v<N>` older than `index` that neither the alias nor a
    registered reindex target uses."""
    versions = await versioned_indexes(search, entity)
    rows = await (await conn.execute(query("reindex_targets"), {"entity": entity.name})).fetchall()
    kept = {index, *await live_indexes(search, entity), *(str(row[0]) for row in rows)}
    older = tuple(
        sorted(
            (name for name, version in versions.items()
             if version < versions[index] and name not in kept),
            key=versions.__getitem__,
        )
    )  # fmt: skip
    if older:
        with translate_errors(f"deleting {', '.join(older)}"):
            await search.client.indices.delete(index=",".join(older))
    return older


async def _abandon(
    conn: psycopg.AsyncConnection[Any], search: SearchIndex, entity: Entity, index: str,
    error: Exception, *, delete: bool,
) -> None:  # fmt: skip
    """Forget a half-made index, and delete it unless the alias uses it (best effort:
    the error matters more)."""
    try:
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            await conn.rollback()
        await conn.execute(
            query("drop_reindex_target"), {"entity": entity.name, "index_name": index}
        )
        if delete:
            with translate_errors(f"deleting {index}"):
                await search.client.indices.delete(index=index, ignore_unavailable=True)
    except Exception as cleanup_error:
        logger.warning(
            "reindex of %s failed (%s) and %s could not be removed: %s",
            entity.table, type(error).__name__, index, cleanup_error,
        )  # fmt: skip


async def _copy(
    conn: psycopg.AsyncConnection[Any], reader: psycopg.AsyncConnection[Any],
    search: SearchIndex, entity: Entity, index: str, resume_after: str | None, copied: int,
    *, batch_size: int, on_start: Callable[[int, int], None] | None,
    on_chunk: Callable[[int], None] | None,
) -> tuple[int, int]:  # fmt: skip
    """Copy the rows after `resume_after` into `index`; (rows copied, refused)."""
    estimate = await (
        await conn.execute(query("estimate_rows"), {"table": entity.table})
    ).fetchone()
    if on_start:
        on_start(int(estimate[0]) if estimate else 0, copied)
    after: sql.Composable = sql.SQL("")
    if resume_after is not None:
        key = sql.Identifier(entity.primary_key)
        after = sql.SQL("WHERE {key} > %(after)s").format(key=key)
    failed = 0
    keys = reader.cursor(name="procqueue_reindex")  # server-side: bounded memory
    try:
        # Row security off for the reader's transaction: a row that row-level security
        # hides raises, instead of being left out of the new index (and so out of the
        # alias once it moves: its document lost).
        await reader.execute(query("row_security_off"))
        await keys.execute(
            entity_query("entity_ids_after", entity, after=after), {"after": resume_after}
        )
    except psycopg.errors.InsufficientPrivilege as error:
        if not is_row_security_refusal(error):
            raise
        raise rows_hidden(reader, entity, f"the reindex of {entity.table}", error) from error
    while held := await _copy_under_one_hold(conn, keys, search, entity, index, batch_size):
        for chunk, first_failures in held:
            failures = await _send_pressed_again(conn, search, entity, first_failures, index)
            retry = [failure for failure in failures if failure.transient]
            if retry:
                first = retry[0]
                raise TransientError(
                    f"{index} refused {len(retry)} documents of {entity.name} for now, first "
                    f"{first.write.entity_id} ({first.status}): {first.reason}; re-run "
                    "`procqueue reindex` later (it resumes)"
                )
            await record_item_errors(conn, entity, failures, job_id=None)
            failed += len(failures)
            copied += len(chunk)
            await conn.execute(
                query("reindex_checkpoint"),
                {"entity": entity.name, "index_name": index, "resume_after": chunk[-1],
                 "copied": copied},
            )  # fmt: skip
            if on_chunk:
                on_chunk(len(chunk))
    await reader.rollback()
    return copied, failed


#: Chunks copied under one exclusive hold of the publish key: each chunk is read
#: while the one before is written. Syncs of the entity wait up to this many chunks'
#: writes (a hold is one transaction; the next waits behind the syncs queued).
CHUNKS_PER_HOLD = 4


async def _copy_under_one_hold(
    conn: psycopg.AsyncConnection[Any], keys: psycopg.AsyncServerCursor[Any],
    search: SearchIndex, entity: Entity, index: str, batch_size: int,
) -> list[tuple[list[str], list[ItemFailure]]]:  # fmt: skip
    """Copy the next CHUNKS_PER_HOLD chunks of `keys` into `index` under one hold of
    the publish key, reading each while the previous `_bulk` is in flight; each chunk
    with its refused items. The key is held until the last write is answered: a sync
    that reads after the hold writes after it (a delete it writes is never undone by
    an older read of the copy: docs/bulk.md, "Why bulk and per-row jobs cannot race")."""
    await search.wait_for_room([index])  # before locking
    held: list[tuple[list[str], list[ItemFailure]]] = []
    writing: asyncio.Task[list[ItemFailure]] | None = None
    async with conn.transaction():
        stamp = await hold_publish_key(conn, entity)
        try:
            while len(held) < CHUNKS_PER_HOLD:
                if held and search.pause_left([index]) > 0:
                    break  # under backpressure: no more waits out the pause holding the key
                chunk = [str(row[0]) for row in await keys.fetchmany(batch_size)]
                if not chunk:
                    break
                read = await read_chunk(conn, search, entity, stamp, chunk, index)
                if writing is not None:
                    held[-1][1].extend(await asyncio.shield(writing))
                write = write_all(search, read.writes, stamp.version, read.rows)
                writing = asyncio.ensure_future(write)
                held.append((chunk, read.failures))
            if writing is not None:
                held[-1][1].extend(await asyncio.shield(writing))
        except BaseException as stop:  # a read or a write failed, or the copy was cancelled
            if writing is not None:
                await _answered(writing, entity, stop)
            raise
    return held


async def _answered(
    writing: asyncio.Task[list[ItemFailure]], entity: Entity, stop: BaseException
) -> None:
    """Wait, the publish key still held, until a write in flight is answered: a
    `_bulk` once sent is applied whether or not anyone waits for it, and a sync that
    reads after the hold must write after it. (Awaited through `shield`, the write
    is never cancelled with the copy.) Its own error is logged unless it is `stop`,
    the error that ends the copy."""
    await asyncio.wait([writing])
    error = None if writing.cancelled() else writing.exception()
    if error is not None and error is not stop:
        logger.warning("reindex of %s: a chunk's write failed too: %s", entity.table, error)


#: Times a reindex sends the items of a chunk refused under backpressure again (each
#: after the index's pause, procqueue/search/client.py) before it stops to be re-run.
PRESSURE_ROUNDS = 10


async def _send_pressed_again(
    conn: psycopg.AsyncConnection[Any], search: SearchIndex, entity: Entity,
    failures: list[ItemFailure], index: str,
) -> list[ItemFailure]:  # fmt: skip
    """Send the items refused under backpressure (429/503) again once the index's
    pause is over, PRESSURE_ROUNDS times at most. Returns the items still refused."""
    for _ in range(PRESSURE_ROUNDS):
        pressed = [failure.write.entity_id for failure in failures if failure.backpressure]
        if not pressed:
            break
        again = await sync_chunk(conn, search, entity, pressed, only_index=index)
        failures = [failure for failure in failures if not failure.backpressure] + again.failures
    return failures


async def swap_alias(
    search: SearchIndex, entity: Entity, index: str, previous: tuple[str, ...]
) -> None:
    """Point the alias at `index` only, in one atomic call."""
    alias = search.alias(entity)
    actions: list[dict[str, Any]] = [
        {"remove": {"index": name, "alias": alias}} for name in previous
    ]
    actions.append({"add": {"index": index, "alias": alias}})
    with translate_errors(f"moving alias {alias} to {index}"):
        await search.client.indices.update_aliases(actions=actions)
