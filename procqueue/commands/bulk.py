"""`procqueue reindex` and `procqueue verify` (docs/bulk.md)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
from collections.abc import Iterable, Iterator
from typing import Any

import psycopg
from psycopg import AsyncConnection

from procqueue.commands.arguments import POSITIVE
from procqueue.commands.output import print_json
from procqueue.engine.connections import connect_async, not_migrated
from procqueue.engine.preflight import check_installed
from procqueue.entities import DEFAULT_ENTITIES, Entity, EntityRegistry, load_entities
from procqueue.errors import ConfigError, ProcqueueError
from procqueue.features import Settings, get_settings
from procqueue.progress import Progress
from procqueue.queue.failures import is_transient
from procqueue.search.client import SearchIndex
from procqueue.search.reindex import reindex_entity
from procqueue.search.verify import Drift, repair, verify_entity
from procqueue.settings import load_schema_settings


async def _connect(settings: Settings, *, autocommit: bool = False) -> AsyncConnection[Any]:
    return await connect_async(
        settings.dsn, transaction_pooler=settings.uses_transaction_pooler, autocommit=autocommit
    )


def entity_choices(entities: Iterable[Entity]) -> str:
    """The entities as the commands take them (their index names), for help and errors."""
    return ", ".join(entity.index for entity in entities) + " or all"


def _configured_entities() -> tuple[Entity, ...]:
    """The entities the settings name, for --help; the defaults if the settings are
    wrong (the command itself then says what is wrong)."""
    try:
        return load_schema_settings().schema_config().entities
    except ConfigError:
        return DEFAULT_ENTITIES


def chosen_entities(settings: Settings, which: str) -> list[Entity]:
    registry = EntityRegistry(load_entities(settings.entities_file))
    if which == "all":
        return list(registry.entities)
    try:
        return [registry.by_table_or_name(which)]
    except ConfigError:
        raise ConfigError(
            f"unknown entity {which!r}: choose {entity_choices(registry.entities)}"
        ) from None


@contextlib.contextmanager
def one_line_errors(command: str, entity: Entity) -> Iterator[None]:
    """A database error, or an outage, as one line saying what to do."""
    try:
        yield
    except Exception as error:
        missing = not_migrated(error)
        if missing is not None:
            raise missing from error
        resumable = command == "reindex" and is_transient(error)
        if not isinstance(error, ProcqueueError | psycopg.Error) or (
            isinstance(error, ProcqueueError) and not resumable
        ):
            raise
        detail = str(error)
        if isinstance(error, psycopg.Error):
            detail = f"Postgres: {error.diag.message_primary or error}"
        if resumable:
            detail += f"; the copy is kept: re-run `procqueue reindex {entity.index}` to resume"
        raise ProcqueueError(f"{command} of {entity.table} failed: {detail}") from error


async def _reindex(args: argparse.Namespace) -> int:
    settings = get_settings()
    search = SearchIndex.from_config(settings.search)
    records: list[dict[str, Any]] = []
    try:
        for entity in chosen_entities(settings, args.entity):
            bar = Progress(f"reindex {entity.table}", quiet=args.quiet)
            async with (
                await _connect(settings, autocommit=True) as conn,
                await _connect(settings) as reader,
            ):
                await check_installed(conn)
                with one_line_errors("reindex", entity):
                    result = await reindex_entity(
                        conn, reader, search, entity, batch_size=args.batch_size,
                        drop_old=args.drop_old, on_start=bar.start, on_chunk=bar.advance,
                    )  # fmt: skip
            bar.finish()
            records.append(
                dataclasses.asdict(result)
                | {"entity": entity.index, "table": entity.table, "alias": search.alias(entity)}
            )
            if args.json:
                continue
            old = ", ".join(result.previous) or "none"
            print(
                f"{entity.table}: {result.copied} rows in {result.index}, alias "
                f"{search.alias(entity)} now points there (previous: {old}"
                f"{', deleted' if result.dropped else ''})"
            )
            if result.failed:
                print(
                    f"{entity.table}: {result.failed} row(s) have no document, each with its "
                    "reason in procqueue.sync_item_errors (fix them, then `procqueue verify "
                    "--repair`)"
                )
    finally:
        await search.aclose()
    if args.json:
        print_json(records)
    return 0


def _drift_record(entity: Entity, drift: Drift, repaired_jobs: int | None) -> dict[str, Any]:
    """One entity's `verify --json` entry."""
    return {
        "entity": entity.index,
        "table": entity.table,
        "checked_rows": drift.checked_rows,
        "checked_documents": drift.checked_documents,
        "missing": drift.missing,
        "stale": drift.stale,
        "extra": drift.extra,
        "unindexable": drift.unindexable,
        "index_missing": drift.index_missing,
        "drifted": drift.drifted,
        "repair_jobs": repaired_jobs,
    }


def _print_drift(entity: Entity, drift: Drift, search: SearchIndex) -> None:
    for kind in ("missing", "stale", "extra", "unindexable"):
        for entity_id in getattr(drift, kind):
            print(f"{entity.name}\t{kind}\t{entity_id}")
    print(
        f"{entity.table}: {drift.checked_rows} rows, {drift.checked_documents} documents; "
        f"{len(drift.missing)} missing, {len(drift.stale)} stale, {len(drift.extra)} extra"
        + (
            f"; {len(drift.unindexable)} unindexable (too large: not drift, their "
            "sync jobs failed with the reason)"
            if drift.unindexable
            else ""
        )
    )
    if drift.index_missing and drift.missing:
        print(
            f"{entity.table}: the alias {search.alias(entity)} does not exist, so every "
            f"row is missing: run `procqueue reindex {entity.index}` to build it"
        )


async def _verify(args: argparse.Namespace) -> int:
    settings = get_settings()
    search = SearchIndex.from_config(settings.search)
    drifted = False
    if args.ids and args.entity == "all":
        raise ProcqueueError("verify of ids needs their entity: `procqueue verify listings ID...`")
    records: list[dict[str, Any]] = []
    try:
        for entity in chosen_entities(settings, args.entity):
            bar = Progress(f"verify {entity.table}", quiet=args.quiet)
            async with await _connect(settings, autocommit=True) as conn:
                await check_installed(conn)
                with one_line_errors("verify", entity):
                    drift = await verify_entity(
                        conn, search, entity, batch_size=args.batch_size, on_chunk=bar.advance,
                        ids=args.ids,
                    )  # fmt: skip
            bar.finish()
            if not args.json:
                _print_drift(entity, drift, search)
            jobs: int | None = None
            if drift.drifted:
                drifted = True
                if args.repair:
                    async with await _connect(settings, autocommit=True) as conn:
                        jobs = await repair(
                            conn, entity, drift.ids, settings.bulk_threshold,
                            settings.bulk_chunk_size, above_version=drift.stale_version,
                        )  # fmt: skip
                    if not args.json:
                        print(
                            f"{entity.table}: enqueued {jobs} sync job(s) for {len(drift.ids)} ids"
                        )
            records.append(_drift_record(entity, drift, jobs))
    finally:
        await search.aclose()
    if args.json:
        print_json(records)
    return 1 if drifted else 0


def register(commands: Any) -> None:
    which = f"{entity_choices(_configured_entities())} (default: all)"
    reindex = commands.add_parser(
        "reindex", help="rebuild an index from Postgres and swap its alias (no downtime)"
    )
    reindex.add_argument("entity", nargs="?", default="all", help=which)
    reindex.add_argument("--drop-old", action="store_true", help="delete the previous index")
    reindex.add_argument("--batch-size", type=POSITIVE, default=1000, help="rows per _bulk request")
    reindex.add_argument("--json", action="store_true", help="print JSON: one record per entity")
    reindex.set_defaults(handler=lambda args: asyncio.run(_reindex(args)))
    verify = commands.add_parser("verify", help="compare Postgres and the index; exit 1 on drift")
    verify.add_argument("entity", nargs="?", default="all", help=which)
    verify.add_argument("ids", nargs="*", help="only these ids of the entity")
    verify.add_argument("--repair", action="store_true", help="enqueue sync jobs for drifted ids")
    verify.add_argument("--batch-size", type=POSITIVE, default=1000, help="rows per page")
    verify.add_argument(
        "--json", action="store_true", help="print JSON: each entity's drifted ids and counts"
    )
    verify.set_defaults(handler=lambda args: asyncio.run(_verify(args)))
