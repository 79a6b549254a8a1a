"""Chaos, with the default settings: four writers on both tables (many-row statements
and primary-key changes included) and three worker processes, while a busy worker is
SIGKILLed (and replaced), twice; fetches and micro-batch claims commit and their
answers are lost (a proxy between the workers and Postgres cuts the connection after
the commit), twice; every worker connection is ended with pg_terminate_backend; the
ES-API server is unreachable for longer than a sync job's whole default retry schedule
(2 + 4 + 8 s); Postgres (a throwaway cluster of the test's own) stops while a worker is
asked to stop (SIGTERM), and later restarts, both with `-m immediate`; an API user
writes listings of 50,000 image URLs and of 2 MB of text, twice. Afterwards:
every write committed, no worker stopped by itself, every stop ended in time, the
queue drained with nothing `doing`, no sync job failed, and the index equals the tables.

Run it alone with `pytest -m chaos -s`: it prints what it applied and measured."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from procqueue.app import build_app
from procqueue.engine.app import ProcqueueApp
from procqueue.entities import INVENTORY, LISTING
from procqueue.features import load_settings
from procqueue.migrate import migrate
from tests.support.bulk_rejecting_proxy import BulkRejectingProxy, bulk_rejecting_proxy
from tests.support.chaos import (
    WORKER_ROLE,
    Faults,
    QueueState,
    WorkerFleet,
    WriteFailed,
    Writer,
    drift,
    failed_sync_jobs,
    install_worker_role,
    job_statistics,
    log_lines,
    postponements,
    queue_state,
)
from tests.support.cluster import ThrowawayCluster, throwaway_cluster
from tests.support.pg_proxy import AnswerLosingProxy, answer_losing_proxy
from tests.support.proxy import TcpProxy
from tests.support.supabase import as_role, supabase_database
from tests.support.worker import indexed_documents, table_documents

pytestmark = pytest.mark.chaos

WRITERS = 4
WORKERS = 3
WRITE_GAP = 0.25  # mean seconds between one writer's operations
#: When each fault starts, in seconds after the writers started.
KILL_AT, LOST_AT, TERMINATE_AT, OUTAGE_AT = 6.0, 12.0, 16.0, 24.0
PRESSURE_AT, LOST_AGAIN_AT, STOP_AT, RESTART_AT, KILL_AGAIN_AT = 46.0, 56.0, 60.0, 74.0, 82.0
#: Seconds Elasticsearch answers every `_bulk` with each item refused (429).
PRESSURE = 8.0
#: Answers lost per fault: this many fetches and as many micro-batch claims.
LOST_ANSWERS = 3
#: Longer than a sync job's whole default retry schedule (2 + 4 + 8 s = 14 s).
OUTAGE = 20.0
RESTART_DOWNTIME = 3.0
WRITE_AFTER_LAST_FAULT = 6.0
#: From the last fault until nothing is left to do: the backlog the faults left
#: (the outage holds every sync back for up to 30 s, the circuit's longest wait
#: between probes) at the pace of three workers and the emulator on two cores.
#: Measured here: 25-32 s.
DRAIN_BUDGET = 90.0
#: A writer gives up (and the test fails) when one write has not committed after this.
WRITE_GIVES_UP_AFTER = 60.0
SELLER = "00000000-0000-4000-8000-00000000c4a0"


@pytest.fixture(scope="module")
def cluster() -> Iterator[ThrowawayCluster]:
    with throwaway_cluster() as started:
        yield started


@pytest.fixture(scope="module")
def owner_dsn(cluster: ThrowawayCluster) -> Iterator[str]:
    """The Supabase-like database in the throwaway cluster, migrated, with the
    least-privilege worker role; the owner's DSN, which the writers use."""
    with supabase_database(cluster.dsn, "pq_chaos") as dsn:
        migrate(dsn)
        install_worker_role(as_role(dsn, "postgres"))
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO auth.users (id, email) VALUES (%s, 'chaos@example.com')", [SELLER]
            )
        yield dsn


@pytest.fixture(scope="module")
async def database_proxy(owner_dsn: str) -> AsyncIterator[AnswerLosingProxy]:
    """Between the workers and Postgres: it loses the answers of chosen statements."""
    async with answer_losing_proxy(as_role(owner_dsn, WORKER_ROLE)) as started:
        yield started


@pytest.fixture(scope="module")
async def bulk_proxy(es_url: str) -> AsyncIterator[BulkRejectingProxy]:
    """In front of the ES-API server: it answers `_bulk` as a cluster under pressure
    does (200, every item refused with 429) when told to."""
    async with bulk_rejecting_proxy(es_url) as started:
        yield started


@pytest.fixture(scope="module")
async def proxy(bulk_proxy: BulkRejectingProxy) -> AsyncIterator[TcpProxy]:
    """Between the workers and the ES-API server: the outage is the proxy's, so the
    server never stops (stopped, the emulator can lose writes it acknowledged)."""
    tcp_proxy = TcpProxy(bulk_proxy.url)
    await tcp_proxy.start()
    yield tcp_proxy
    await tcp_proxy.go_down()


async def test_nothing_is_lost_and_nothing_is_left_to_do_by_hand(
    cluster: ThrowawayCluster,
    owner_dsn: str,
    es_url: str,
    proxy: TcpProxy,
    database_proxy: AnswerLosingProxy,
    bulk_proxy: BulkRejectingProxy,
    tmp_path: Path,
) -> None:
    prefix = f"chaos{uuid.uuid4().hex[:6]}_"
    worker_settings = {
        "PROCQUEUE_DATABASE_URL": database_proxy.proxied_dsn,
        "ELASTICSEARCH_URL": proxy.url,
        "PROCQUEUE_INDEX_PREFIX": prefix,
        # The one setting changed, and it makes the test harder: no periodic
        # reconciliation (every 5 minutes by the wall clock), which would mend the sync
        # jobs' drift in some runs and not in others. The sync jobs alone must converge.
        "PROCQUEUE_RECONCILE_CRON": "",
    }
    fleet = WorkerFleet(worker_settings, tmp_path, owner_dsn)
    faults = Faults(fleet, proxy, cluster, owner_dsn, database_proxy, bulk_proxy)
    writers = [
        Writer(number, owner_dsn, SELLER, gap=WRITE_GAP, give_up_after=WRITE_GIVES_UP_AFTER)
        for number in range(WRITERS)
    ]
    reader = build_app(
        load_settings(database_url=owner_dsn, elasticsearch_url=es_url, index_prefix=prefix)
    )
    problems = faults.problems
    try:
        for _ in range(WORKERS):
            await fleet.start()
        stop = asyncio.Event()
        began = time.monotonic()
        writing = [asyncio.create_task(writer.run(stop)) for writer in writers]

        async def at(offset: float) -> None:
            await asyncio.sleep(max(0.0, began + offset - time.monotonic()))  # the schedule

        async def apply_faults() -> None:
            try:
                await at(KILL_AT)
                await faults.kill_a_busy_worker()
                await at(LOST_AT)
                await faults.lose_claim_answers(LOST_ANSWERS)
                await faults.hostile_rows(SELLER)
                await at(TERMINATE_AT)
                await faults.end_worker_connections()
                await at(OUTAGE_AT)
                await faults.search_outage(OUTAGE)
                await at(PRESSURE_AT)
                await faults.search_pressure(PRESSURE)
                await at(LOST_AGAIN_AT)
                await faults.lose_claim_answers(LOST_ANSWERS)
                await at(STOP_AT)
                await faults.stop_postgres_and_a_worker(RESTART_DOWNTIME)
                await at(RESTART_AT)
                await faults.restart_postgres(RESTART_DOWNTIME)
                await faults.hostile_rows(SELLER)
                await at(KILL_AGAIN_AT)
                await faults.kill_a_busy_worker()
                await asyncio.sleep(WRITE_AFTER_LAST_FAULT)  # the load goes on a while
            finally:
                stop.set()

        faulting = asyncio.create_task(apply_faults())
        outcomes = await asyncio.gather(*writing, return_exceptions=True)
        await faulting
        for outcome in outcomes:
            if isinstance(outcome, WriteFailed):
                problems.append(str(outcome))
            elif isinstance(outcome, BaseException):
                raise outcome
        last_fault = faults.applied[-1].ended

        state = await drained(owner_dsn, fleet, deadline=last_fault + DRAIN_BUDGET)
        drain_time = time.monotonic() - last_fault
        if state.pending:
            problems.append(
                f"the queue did not drain within {DRAIN_BUDGET:g} s of the last fault: "
                f"{state.by_status} ({len(fleet.alive())} workers still running)"
            )
        problems += await unfinished_writes(owner_dsn, writers)
        problems += stray_connection_losses(writers, faults)
        for worker in fleet.exited_by_themselves():
            assert worker.exited_at is not None
            problems.append(
                f"{worker.name} exited by itself with status {worker.process.returncode} "
                f"{worker.exited_at - began:.1f} s into the run: "
                + " | ".join(log_lines(worker, limit=6))
            )
        if state.failed_sync:
            problems.append(
                f"{state.failed_sync} sync jobs failed, e.g. {await failed_sync_jobs(owner_dsn)}"
            )
        sizes, drifts = await index_drift(owner_dsn, reader)
        problems += drifts
        await report(writers, faults, fleet, owner_dsn, sizes, drain_time, state)
    finally:
        problems += await fleet.stop()
        await reader.services.aclose()
    assert not problems, "\n".join(problems)


async def drained(dsn: str, fleet: WorkerFleet, *, deadline: float) -> QueueState:
    """The queue once nothing is todo or doing (the periodic maintenance jobs aside),
    or at `deadline`, or once no worker is left to do it."""
    state = await queue_state(dsn)
    while state.pending and time.monotonic() < deadline and fleet.alive():
        await asyncio.sleep(0.5)
        state = await queue_state(dsn)
    return state


async def unfinished_writes(dsn: str, writers: list[Writer]) -> list[str]:
    """Every write committed: each writer's rows are in the tables as it wrote them."""
    problems = []
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        for writer in writers:
            items, listings = await writer.actual(conn)
            expected_items, expected_listings = writer.expected()
            if (items, listings) != (expected_items, expected_listings):
                problems.append(
                    f"writer {writer.name}: {len(items)} items and {len(listings)} "
                    f"listings in the tables, {len(expected_items)} and "
                    f"{len(expected_listings)} written"
                )
    return problems


def stray_connection_losses(writers: list[Writer], faults: Faults) -> list[str]:
    """The writers lose connections to Postgres's stop and restart only:
    pg_terminate_backend ends the workers' connections, and nothing else may end a
    writer's."""
    down = [
        fault for fault in faults.applied
        if fault.name in ("Postgres restart", "Postgres stop + SIGTERM")
    ]  # fmt: skip
    stray = [
        loss
        for writer in writers
        for loss in writer.stats.losses
        if not any(fault.started - 1 <= loss.at <= fault.ended + 10 for fault in down)
    ]
    return [f"writers lost connections outside the restart: {stray[:3]}"] if stray else []


async def index_drift(dsn: str, reader: ProcqueueApp) -> tuple[dict[str, int], list[str]]:
    """The rows of each table, and how its index differs from it."""
    sizes, problems = {}, []
    for entity in (INVENTORY, LISTING):
        expected = await table_documents(dsn, entity)
        actual = await indexed_documents(reader, entity)
        sizes[entity.table] = len(expected)
        difference = drift(expected, actual)
        if any(difference.values()):
            problems.append(
                f"{entity.index}: {len(expected)} rows, {len(actual)} documents; "
                + ", ".join(
                    f"{len(ids)} {kind} (e.g. {ids[:2]})" for kind, ids in difference.items()
                )
            )
    return sizes, problems


async def report(
    writers: list[Writer],
    faults: Faults,
    fleet: WorkerFleet,
    dsn: str,
    sizes: dict[str, int],
    drain_time: float,
    state: QueueState,
) -> None:
    """The numbers of the run, on stdout (`pytest -s`)."""
    statistics: dict[str, Any] = await job_statistics(dsn)
    statements = sum(writer.stats.statements for writer in writers)
    rows = sum(writer.stats.rows for writer in writers)
    bulk = sum(writer.stats.bulk_statements for writer in writers)
    keys = sum(writer.stats.key_changes for writer in writers)
    losses = sum(len(writer.stats.losses) for writer in writers)
    print(f"chaos: {WRITERS} writers, {len(fleet.workers)} worker processes in all")
    print(
        f"chaos: {statements} statements committed, {rows} rows written ({bulk} statements "
        f"over 50 rows, {keys} primary keys changed); {losses} connection losses retried"
    )
    print("chaos: at the end " + ", ".join(f"{table} {n} rows" for table, n in sizes.items()))
    first = faults.applied[0].started
    for fault in faults.applied:
        print(f"chaos: fault {fault.name} at +{fault.started - first:.1f} s: {fault.detail}")
    succeeded = sum(count for _, status, count, _ in statistics["tasks"] if status == "succeeded")
    postponed = postponements(fleet.workers)
    print(
        f"chaos: {succeeded} jobs succeeded; {postponed} postponements (a sink's circuit "
        f"open, a writer holding the row: the same job waited again, no attempt spent); "
        f"{statistics['deferred_for_retry']} retries"
    )
    for task, status, count, attempts in statistics["tasks"]:
        print(f"chaos:   {task} {status}: {count} jobs, {attempts} attempts")
    print(f"chaos: errors recorded (type, transient, final, count): {statistics['errors']}")
    drained = "not drained" if state.pending else "drained"
    print(f"chaos: {drained} {drain_time:.1f} s after the last fault")
    for worker in fleet.workers:
        for line in log_lines(worker, limit=8):
            print(f"chaos: {worker.name}: {line}")
