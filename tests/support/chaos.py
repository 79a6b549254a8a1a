"""Support for the chaos test (tests/test_chaos.py): writers that own their rows and
ride out a Postgres restart, worker processes with the default settings, the faults,
and what the queue and the index look like afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import re
import signal
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import psycopg

from procqueue.queue.maintenance import MAINTENANCE_QUEUE
from tests.support.bulk_rejecting_proxy import BulkRejectingProxy
from tests.support.cluster import ThrowawayCluster
from tests.support.pg_proxy import FETCH_MARKER, AnswerLosingProxy
from tests.support.proxy import TcpProxy
from tests.support.repo import REPO_DIR
from tests.support.supabase import act_as_api_user, as_role
from tests.support.worker import eventually, sink_circuit

#: The least-privilege role of sql/roles/worker_role.sql: the workers log in as it,
#: so "all worker connections" are exactly this role's backends.
WORKER_ROLE = "procqueue_worker"
WORKER_ROLE_SQL = REPO_DIR / "sql" / "roles" / "worker_role.sql"
#: More rows than this in one statement make bulk jobs (the default bulk threshold).
BULK_THRESHOLD = 50
SYNC_TASKS = r":(create|update|delete|bulk|drain)$"
#: Only what a process needs to run: the workers get no PROCQUEUE_* setting but the
#: ones the test passes, and run in a directory without a `.env` file, so everything
#: else is the default.
KEPT_ENVIRONMENT = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "VIRTUAL_ENV")
#: SQLSTATEs of a connection the server ended: admin_shutdown (pg_terminate_backend),
#: crash_shutdown (an immediate stop), cannot_connect_now (starting or stopping).
CONNECTION_ENDED = {"57P01", "57P02", "57P03"}
#: Image URLs of the hostile listing an API user writes.
HOSTILE_URLS = 50_000
#: What the workers' micro-batch claim statements carry on the wire (the fetch's:
#: pg_proxy.FETCH_MARKER).
CLAIM_MARKER = b"jsonb_typeof(jobs.args -> "


def is_connection_loss(error: BaseException, conn: psycopg.AsyncConnection[Any] | None) -> bool:
    """The server went away (or is not back yet); not a statement that failed."""
    if not isinstance(error, psycopg.OperationalError):
        return False  # deadlocks and cancelled statements are OperationalErrors too: below
    if conn is None or conn.broken or conn.closed:
        return True
    state = error.sqlstate or ""
    return state.startswith("08") or state in CONNECTION_ENDED


@dataclass(frozen=True)
class ConnectionLoss:
    at: float  # time.monotonic()
    message: str


@dataclass
class WriterStats:
    statements: int = 0
    rows: int = 0
    bulk_statements: int = 0  # statements changing more than BULK_THRESHOLD rows
    key_changes: int = 0  # listings whose primary key was changed
    losses: list[ConnectionLoss] = field(default_factory=list)


class WriteFailed(AssertionError):
    """A user write that did not commit."""


Connection = psycopg.AsyncConnection[Any]
Operation = Callable[[Connection], Awaitable[int]]


class Writer:
    """One user writing its own rows (no other writer touches them, so only the queue
    can make its writes conflict): single-row and many-row inserts, updates, deletes
    and primary-key changes of both tables. Each operation is retried after a lost
    connection until it commits, and is written so that running it again after a
    commit whose answer was lost does nothing more. A row carries a tag that never
    changes (the item's description, the listing's location): after a lost
    connection the writer re-reads its rows by tag, which finds a listing whose key
    change committed unacknowledged."""

    def __init__(
        self, number: int, dsn: str, user_id: str, *, gap: float, give_up_after: float
    ) -> None:
        self.name = f"w{number}"
        self.prefix = f"{self.name} "  # of every tag: "w1 i7" never matches "w10 ..."
        self.dsn = dsn
        self.user_id = user_id
        self.rng = random.Random(number)
        self.gap = gap
        self.give_up_after = give_up_after
        self.items: dict[str, str] = {}  # tag -> id
        self.listings: dict[str, str] = {}
        self.stats = WriterStats()
        self._serial = 0
        self._conn: Connection | None = None

    def expected(self) -> tuple[dict[str, str], dict[str, str]]:
        """The writer's items and listings (tag -> id), as the tables must hold them."""
        return dict(self.items), dict(self.listings)

    async def actual(self, conn: Connection) -> tuple[dict[str, str], dict[str, str]]:
        """The writer's items and listings as the tables hold them."""
        like = self.prefix + "%"
        items = await (
            await conn.execute(
                "SELECT description, id::text FROM inventory_items WHERE description LIKE %s",
                [like],
            )
        ).fetchall()
        listings = await (
            await conn.execute(
                "SELECT location, id::text FROM listings WHERE location LIKE %s", [like]
            )
        ).fetchall()
        return dict(items), dict(listings)

    async def run(self, stop: asyncio.Event) -> None:
        try:
            while len(self.listings) < 120:  # a first few hundred rows, in many-row inserts
                await self.commit(self.insert(60))
            while not stop.is_set():
                await self.commit(self.choose())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.rng.uniform(0, 2 * self.gap))
        finally:
            if self._conn is not None:
                await self._conn.close()

    async def commit(self, operation: Operation) -> None:
        lost_since: float | None = None
        while True:
            conn = self._conn
            try:
                if conn is None:
                    conn = self._conn = await psycopg.AsyncConnection.connect(
                        self.dsn, autocommit=True, connect_timeout=5
                    )
                if lost_since is not None:
                    self.items, self.listings = await self.actual(conn)
                rows = await operation(conn)
            except psycopg.Error as error:
                if not is_connection_loss(error, conn):
                    raise WriteFailed(f"writer {self.name}: a write failed: {error!r}") from error
                now = time.monotonic()
                self.stats.losses.append(ConnectionLoss(now, str(error).strip().split("\n")[0]))
                lost_since = lost_since or now
                if now - lost_since > self.give_up_after:
                    raise WriteFailed(
                        f"writer {self.name}: a write did not commit in "
                        f"{self.give_up_after:g} s: {error}"
                    ) from error
                if conn is not None:
                    await conn.close()
                self._conn = None
                await asyncio.sleep(0.2)  # the server is away: try again shortly
                continue
            self.stats.statements += 1
            self.stats.rows += rows
            if rows > BULK_THRESHOLD:
                self.stats.bulk_statements += 1
            return

    def _tag(self, kind: str) -> str:
        self._serial += 1
        return f"{self.prefix}{kind}{self._serial}"

    def choose(self) -> Operation:
        """An operation; each table stays between about 80 and 350 of the writer's rows."""
        rng = self.rng
        if len(self.listings) < 80 or len(self.items) < 80:
            return self.insert(rng.choice([1, 1, 60]))
        roll = rng.random()
        if len(self.listings) > 350 and roll < 0.3:
            return self.delete_listings(rng.randint(20, 40))
        if len(self.items) > 350 and roll < 0.3:
            return self.delete_items(rng.randint(20, 40))
        if roll < 0.17:
            return self.insert(1)
        if roll < 0.18:
            return self.insert(60)
        if roll < 0.52:
            return self.update_one()
        if roll < 0.56:
            return self.update_listings(rng.randint(BULK_THRESHOLD + 1, 80))
        if roll < 0.59:
            return self.update_items(rng.randint(BULK_THRESHOLD + 1, 70))
        if roll < 0.73:
            return self.change_keys(1)
        if roll < 0.745:
            return self.change_keys(rng.randint(BULK_THRESHOLD + 1, 70))
        if roll < 0.89:
            return self.delete_listings(rng.randint(1, 3))
        return self.delete_items(rng.randint(1, 2))

    def insert(self, count: int) -> Operation:
        """`count` items and a listing of each, in one transaction (many-row
        statements above the bulk threshold)."""
        items = {self._tag("i"): str(uuid.uuid4()) for _ in range(count)}
        listings = {self._tag("l"): str(uuid.uuid4()) for _ in range(count)}
        values = [self.rng.randint(1, 999) for _ in range(count)]

        async def run(conn: Connection) -> int:
            async with conn.transaction():
                first = await conn.execute(
                    "INSERT INTO inventory_items (id, user_id, name, description, estimated_value)"
                    " SELECT i, %s, 'item ' || d, d, v"
                    " FROM unnest(%s::uuid[], %s::text[], %s::numeric[]) AS x (i, d, v)"
                    " ON CONFLICT (id) DO NOTHING",
                    [self.user_id, list(items.values()), list(items), values],
                )
                second = await conn.execute(
                    "INSERT INTO listings (id, user_id, title, location, budget, inventory_item_id)"
                    " SELECT l, %s, 'listing ' || t, t, v, i"
                    " FROM unnest(%s::uuid[], %s::text[], %s::numeric[], %s::uuid[])"
                    " AS x (l, t, v, i) ON CONFLICT (id) DO NOTHING",
                    [self.user_id, list(listings.values()), list(listings), values,
                     list(items.values())],
                )  # fmt: skip
            self.items.update(items)
            self.listings.update(listings)
            return first.rowcount + second.rowcount

        return run

    def update_one(self) -> Operation:
        rng = self.rng
        listing = rng.choice(list(self.listings.values()))
        item = rng.choice(list(self.items.values())) if self.items else None
        title, budget = f"title {rng.random():.6f}", rng.randint(1, 5000)
        status = rng.choice(["active", "inactive", "sold", "pending_approval"])
        value = rng.randint(1, 999)

        async def run(conn: Connection) -> int:
            async with conn.transaction():
                first = await conn.execute(
                    "UPDATE listings SET title = %s, budget = %s, status = %s WHERE id = %s",
                    [title, budget, status, listing],
                )
                rows = first.rowcount
                if item is not None:
                    second = await conn.execute(
                        "UPDATE inventory_items SET estimated_value = %s WHERE id = %s",
                        [value, item],
                    )
                    rows += second.rowcount
            return rows

        return run

    def update_listings(self, count: int) -> Operation:
        ids = self.rng.sample(list(self.listings.values()), min(count, len(self.listings)))
        title, budget = f"many {self.rng.random():.6f}", self.rng.randint(1, 5000)

        async def run(conn: Connection) -> int:
            cursor = await conn.execute(
                "UPDATE listings SET title = %s, budget = %s WHERE id = ANY(%s::uuid[])",
                [title, budget, ids],
            )
            return cursor.rowcount

        return run

    def update_items(self, count: int) -> Operation:
        ids = self.rng.sample(list(self.items.values()), min(count, len(self.items)))
        name, value = f"many {self.rng.random():.6f}", self.rng.randint(1, 999)

        async def run(conn: Connection) -> int:
            cursor = await conn.execute(
                "UPDATE inventory_items SET name = %s, estimated_value = %s"
                " WHERE id = ANY(%s::uuid[])",
                [name, value, ids],
            )
            return cursor.rowcount

        return run

    def change_keys(self, count: int) -> Operation:
        ids = self.rng.sample(list(self.listings.values()), min(count, len(self.listings)))
        query = (
            "UPDATE listings SET id = gen_random_uuid() WHERE id = %s RETURNING location, id::text"
            if len(ids) == 1
            else "UPDATE listings SET id = gen_random_uuid() WHERE id = ANY(%s::uuid[])"
            " RETURNING location, id::text"
        )

        async def run(conn: Connection) -> int:
            cursor = await conn.execute(query, [ids[0] if len(ids) == 1 else ids])
            changed = dict(await cursor.fetchall())
            self.listings.update(changed)
            self.stats.key_changes += len(changed)
            return len(changed)

        return run

    def delete_listings(self, count: int) -> Operation:
        tags = self.rng.sample(list(self.listings), min(count, len(self.listings)))
        ids = [self.listings[tag] for tag in tags]

        async def run(conn: Connection) -> int:
            cursor = await conn.execute("DELETE FROM listings WHERE id = ANY(%s::uuid[])", [ids])
            for tag in tags:
                self.listings.pop(tag, None)
            return cursor.rowcount

        return run

    def delete_items(self, count: int) -> Operation:
        """Items; their listings stay, with inventory_item_id set to NULL."""
        tags = self.rng.sample(list(self.items), min(count, len(self.items)))
        ids = [self.items[tag] for tag in tags]

        async def run(conn: Connection) -> int:
            cursor = await conn.execute(
                "DELETE FROM inventory_items WHERE id = ANY(%s::uuid[])", [ids]
            )
            for tag in tags:
                self.items.pop(tag, None)
            return cursor.rowcount

        return run


@dataclass
class WorkerProcess:
    name: str
    process: asyncio.subprocess.Process
    log_path: Path
    log: IO[bytes]
    worker_id: int  # its row in procrastinate_workers
    killed: bool = False  # by the test
    exited_at: float | None = None
    watcher: asyncio.Task[None] | None = None


class WorkerFleet:
    """Worker processes (tests/support/worker_process.py, run by this module's main
    for timestamped logs), with only `settings` in their environment, each logging
    to a file of its own."""

    def __init__(self, settings: Mapping[str, str], log_dir: Path, dsn: str) -> None:
        self.dsn = dsn
        self.environment = {
            **{name: os.environ[name] for name in KEPT_ENVIRONMENT if name in os.environ},
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": str(REPO_DIR),
            **settings,
        }
        self.log_dir = log_dir
        self.workers: list[WorkerProcess] = []

    async def start(self, timeout: float = 30.0) -> WorkerProcess:
        """A new worker process, once it has registered (so that its id is known)."""
        name = f"worker{len(self.workers) + 1}"
        log_path = self.log_dir / f"{name}.log"
        log = log_path.open("wb")
        known = set(await registered_workers(self.dsn))
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.support.chaos",
            env=self.environment, cwd=self.log_dir, stdout=log, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while not (new := set(await registered_workers(self.dsn)) - known):
            if process.returncode is not None or time.monotonic() > deadline:
                if process.returncode is None:
                    process.kill()
                await process.wait()
                log.close()
                raise AssertionError(
                    f"{name} did not start: " + log_path.read_text(errors="replace")[-2000:]
                )
            await asyncio.sleep(0.05)
        worker = WorkerProcess(name, process, log_path, log, worker_id=min(new))
        worker.watcher = asyncio.create_task(self._watch(worker))
        self.workers.append(worker)
        return worker

    async def _watch(self, worker: WorkerProcess) -> None:
        await worker.process.wait()
        worker.exited_at = time.monotonic()

    async def kill(self, worker: WorkerProcess) -> None:
        worker.killed = True
        worker.process.send_signal(signal.SIGKILL)
        await worker.process.wait()

    def terminate(self, worker: WorkerProcess) -> None:
        """SIGTERM: the worker stops by itself (not counted as exiting by itself)."""
        worker.killed = True
        worker.process.send_signal(signal.SIGTERM)

    def alive(self) -> list[WorkerProcess]:
        return [worker for worker in self.workers if worker.process.returncode is None]

    def exited_by_themselves(self) -> list[WorkerProcess]:
        return [
            worker
            for worker in self.workers
            if worker.process.returncode is not None and not worker.killed
        ]

    async def stop(self, timeout: float = 30.0) -> list[str]:
        """SIGTERM to every worker still running (a worker finishes its jobs and
        exits), SIGKILL to those still running after `timeout`; what went wrong."""
        problems = []
        running = self.alive()
        for worker in running:
            worker.process.send_signal(signal.SIGTERM)
        for worker in running:
            try:
                await asyncio.wait_for(worker.process.wait(), timeout)
            except TimeoutError:
                worker.process.send_signal(signal.SIGKILL)
                await worker.process.wait()
                problems.append(f"{worker.name} did not stop within {timeout:g} s of SIGTERM")
            else:
                if worker.process.returncode != 0:
                    problems.append(
                        f"{worker.name} stopped on SIGTERM with status {worker.process.returncode}"
                    )
        for worker in self.workers:
            if worker.watcher is not None:
                await worker.watcher
            worker.log.close()
        return problems


#: A log line that says something went wrong: a WARNING or worse, or the last line
#: of a traceback ("psycopg.OperationalError: ...").
TROUBLE = re.compile(r"^(\S+ \S+ )?(WARNING|ERROR|CRITICAL) |^[\w.]+(Error|Exception|Timeout)\b")
#: Warnings of features the chaos test does not configure.
NOISE = re.compile(r"not sent: \w+ is not configured")


def log_lines(worker: WorkerProcess, *, limit: int = 12) -> list[str]:
    """The last `limit` lines of the worker's log that say something went wrong."""
    lines = worker.log_path.read_text(errors="replace").splitlines()
    wanted = [line for line in lines if TROUBLE.search(line) and not NOISE.search(line)]
    return [line[:240] for line in wanted[-limit:]]


POSTPONED = re.compile(r"outcomes: job \d+ \(\S+\) attempt \d+ postponed")


def postponements(workers: list[WorkerProcess]) -> int:
    """How many times the workers postponed a job (its sink's circuit open, a writer
    holding its row), from their logs: the same job row waits again (migration 0018)."""
    return sum(
        len(POSTPONED.findall(worker.log_path.read_text(errors="replace"))) for worker in workers
    )


@dataclass(frozen=True)
class Fault:
    name: str
    started: float  # time.monotonic()
    ended: float
    detail: str


class Faults:
    """The faults, each applied once and recorded; `problems` collects what went
    wrong while applying them (the test fails on it at the end)."""

    def __init__(
        self,
        fleet: WorkerFleet,
        proxy: TcpProxy,
        cluster: ThrowawayCluster,
        owner_dsn: str,
        database_proxy: AnswerLosingProxy,
        bulk_proxy: BulkRejectingProxy,
    ) -> None:
        self.fleet = fleet
        self.proxy = proxy
        self.database_proxy = database_proxy
        self.bulk_proxy = bulk_proxy
        self.cluster = cluster
        self.owner_dsn = owner_dsn
        self.superuser_dsn = as_role(owner_dsn, "postgres")
        self.applied: list[Fault] = []
        self.problems: list[str] = []

    def _record(self, name: str, started: float, detail: str) -> None:
        self.applied.append(Fault(name, started, time.monotonic(), detail))

    async def kill_a_busy_worker(self) -> None:
        """SIGKILL of the oldest worker while it runs jobs, and a new worker."""
        victim = self.fleet.alive()[0]

        async def busy() -> bool:
            return await jobs_running_on(self.owner_dsn, victim.worker_id) > 0

        with contextlib.suppress(AssertionError):  # killed anyway; the detail says so
            await eventually(busy, timeout=10)
        started = time.monotonic()
        await self.fleet.kill(victim)
        orphaned = await jobs_running_on(self.owner_dsn, victim.worker_id)
        replacement = await self.fleet.start()
        self._record(
            "SIGKILL", started,
            f"{victim.name} killed, {orphaned} of its jobs left doing; {replacement.name} started",
        )  # fmt: skip

    async def end_worker_connections(self) -> None:
        started = time.monotonic()
        ended = await terminate_worker_connections(self.superuser_dsn)
        alive = len(self.fleet.alive())
        if ended < alive:
            self.problems.append(
                f"pg_terminate_backend found {ended} connections of {alive} workers"
            )
        self._record("pg_terminate_backend", started, f"{ended} connections of {alive} workers")

    async def search_outage(self, seconds: float) -> None:
        """The ES-API server unreachable from the workers for `seconds` (the proxy
        refuses connections; the server keeps running)."""
        started = time.monotonic()
        await self.proxy.go_down()
        detail = f"{seconds:g} s, the circuit opened"
        try:
            await eventually(circuit_open(self.owner_dsn), timeout=seconds - 1, interval=0.5)
        except AssertionError:
            detail = f"{seconds:g} s, no worker reported the circuit open"
            self.problems.append(f"during the ES-API outage {detail}")
        await asyncio.sleep(max(0.0, started + seconds - time.monotonic()))  # the outage
        await self.proxy.come_back()
        self._record("ES-API outage", started, detail)

    async def hostile_rows(self, seller: str) -> None:
        """An API user (`authenticated`, as PostgREST connects) writes a listing with
        50,000 image URLs and one with 2 MB of description: each is bounded before it
        is sent (its array trimmed; the document is under the size limit) and holds up
        no other row's sync."""
        started = time.monotonic()
        urls = [f"https://example.com/hostile/{n}.jpg" for n in range(HOSTILE_URLS)]
        async with await psycopg.AsyncConnection.connect(self.owner_dsn) as conn:
            await act_as_api_user(conn, "authenticated", seller)
            for title, values in (
                ("50,000 image URLs", {"additional_image_urls": urls}),
                ("2 MB of description", {"description": "ü" * 1_000_000}),
            ):
                columns = ", ".join(["user_id", "title", *values])
                await conn.execute(
                    f"INSERT INTO listings ({columns}) VALUES (%s, %s, %s)",
                    [seller, title, *values.values()],
                )
            await conn.commit()
        self._record("hostile rows", started, f"{HOSTILE_URLS} image URLs; 2 MB of text")

    async def search_pressure(self, seconds: float) -> None:
        """For `seconds`, every `_bulk` is answered as a cluster under pressure does:
        200, each item refused with 429 es_rejected_execution_exception."""
        started = time.monotonic()
        refused_before = self.bulk_proxy.rejected_items
        self.bulk_proxy.reject(429, "es_rejected_execution_exception")
        try:
            await asyncio.sleep(seconds)  # the pressure itself
        finally:
            self.bulk_proxy.stop_rejecting()
        refused = self.bulk_proxy.rejected_items - refused_before
        self._record("ES-API item 429s", started, f"{seconds:g} s, {refused} items refused")

    async def lose_claim_answers(self, times: int) -> None:
        """The next `times` fetches and `times` micro-batch claims of the workers commit
        and their answers are lost (the proxy between the workers and Postgres cuts the
        connection after the commit): their jobs are `doing` under live workers that
        never saw them."""
        started = time.monotonic()
        lost_before = self.database_proxy.lost
        for marker in (FETCH_MARKER, CLAIM_MARKER):
            self.database_proxy.lose_answers_to(marker, times)
            with contextlib.suppress(AssertionError):  # recorded below either way

                async def lost() -> bool:
                    return not self.database_proxy.armed

                await eventually(lost, timeout=10, interval=0.1)
        lost_now = self.database_proxy.lost - lost_before
        self._record("lost claim answers", started, f"{lost_now} of {2 * times} answers lost")

    async def stop_postgres_and_a_worker(self, downtime: float) -> None:
        """Postgres stops (`-m immediate`); while it is down a busy worker is asked to
        stop (SIGTERM), and must exit within PROCQUEUE_SHUTDOWN_TIMEOUT (30 s) + 10 s;
        Postgres starts again and a new worker replaces the stopped one."""
        victim = self.fleet.alive()[0]
        started = time.monotonic()
        await asyncio.to_thread(self.cluster.down)
        try:
            self.fleet.terminate(victim)
            await asyncio.sleep(downtime)  # the outage itself
        finally:
            await asyncio.to_thread(self.cluster.up)
        try:
            code = await asyncio.wait_for(victim.process.wait(), timeout=40)
        except TimeoutError:
            self.problems.append(f"{victim.name} did not stop within 40 s of its SIGTERM")
            code = None
        if code not in (0, None):
            self.problems.append(f"{victim.name} stopped with status {code}")
        stopped_in = time.monotonic() - started
        replacement = await self.fleet.start()
        self._record(
            "Postgres stop + SIGTERM", started,
            f"down {downtime:g} s; {victim.name} stopped in {stopped_in:.1f} s (status {code}); "
            f"{replacement.name} started",
        )  # fmt: skip

    async def restart_postgres(self, downtime: float) -> None:
        started = time.monotonic()
        await asyncio.to_thread(self.cluster.restart, downtime)
        self._record("Postgres restart", started, f"-m immediate, down {downtime:g} s")


def circuit_open(dsn: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        state = await sink_circuit(dsn, "elasticsearch")
        return state is not None and state[0]

    return check


def install_worker_role(superuser_dsn: str) -> None:
    """sql/roles/worker_role.sql, run by the superuser (only a superuser may create a
    BYPASSRLS role on plain PostgreSQL 15)."""
    with psycopg.connect(superuser_dsn, autocommit=True) as conn:
        conn.execute(WORKER_ROLE_SQL.read_text(encoding="utf-8").encode())


async def terminate_worker_connections(superuser_dsn: str) -> int:
    """pg_terminate_backend of every connection of the workers' role; how many."""
    async with await psycopg.AsyncConnection.connect(superuser_dsn, autocommit=True) as conn:
        row = await (
            await conn.execute(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid))"
                " FROM pg_stat_activity WHERE usename = %s",
                [WORKER_ROLE],
            )
        ).fetchone()
    return int(row[0]) if row else 0


async def registered_workers(dsn: str) -> list[int]:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        rows = await (
            await conn.execute("SELECT id FROM procrastinate.procrastinate_workers")
        ).fetchall()
    return [row[0] for row in rows]


async def jobs_running_on(dsn: str, worker_id: int) -> int:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        row = await (
            await conn.execute(
                "SELECT count(*) FROM procrastinate.procrastinate_jobs"
                " WHERE status = 'doing' AND worker_id = %s",
                [worker_id],
            )
        ).fetchone()
    return int(row[0]) if row else 0


@dataclass(frozen=True)
class QueueState:
    pending: int  # waiting changes, and jobs todo or doing outside the maintenance queue
    failed_sync: int
    by_status: dict[str, int]


async def queue_state(dsn: str) -> QueueState:
    async with await psycopg.AsyncConnection.connect(dsn, connect_timeout=5) as conn:
        rows = await (
            await conn.execute(
                "SELECT status::text, queue_name = %s, task_name ~ %s, count(*)"
                " FROM procrastinate.procrastinate_jobs GROUP BY 1, 2, 3",
                [MAINTENANCE_QUEUE, SYNC_TASKS],
            )
        ).fetchall()
        changes = await (
            await conn.execute("SELECT count(*) FROM procqueue.sync_changes")
        ).fetchone()
    by_status: dict[str, int] = {}
    failed_sync = 0
    pending = int(changes[0]) if changes else 0
    for status, maintenance, sync, count in rows:
        by_status[status] = by_status.get(status, 0) + count
        if status in ("todo", "doing") and not maintenance:
            pending += count
        if status == "failed" and sync:
            failed_sync += count
    return QueueState(pending, failed_sync, by_status)


async def job_statistics(dsn: str) -> dict[str, Any]:
    """What the workers did: jobs per task and status, attempts, recorded errors, and
    how often a job was retried (back to todo)."""
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        tasks = await (
            await conn.execute(
                "SELECT task_name, status::text, count(*), sum(attempts)"
                " FROM procrastinate.procrastinate_jobs GROUP BY 1, 2 ORDER BY 1, 2"
            )
        ).fetchall()
        errors = await (
            await conn.execute(
                "SELECT error_type, transient, final, count(*) FROM procqueue.job_errors"
                " GROUP BY 1, 2, 3 ORDER BY 4 DESC"
            )
        ).fetchall()
        deferred = await (
            await conn.execute(
                "SELECT count(*) FROM procrastinate.procrastinate_events"
                " WHERE type = 'deferred_for_retry'"
            )
        ).fetchone()
    return {
        "tasks": [
            (task, status, count, int(attempts or 0)) for task, status, count, attempts in tasks
        ],
        "errors": [tuple(row) for row in errors],
        "deferred_for_retry": int(deferred[0]) if deferred else 0,
    }


async def failed_sync_jobs(dsn: str, limit: int = 10) -> list[tuple[Any, ...]]:
    """The failed sync jobs with their last recorded error."""
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        rows = await (
            await conn.execute(
                "SELECT j.id, j.task_name, j.attempts, e.error_type, left(e.message, 200)"
                " FROM procrastinate.procrastinate_jobs AS j"
                " LEFT JOIN LATERAL (SELECT error_type, message FROM procqueue.job_errors"
                "   WHERE job_id = j.id ORDER BY id DESC LIMIT 1) AS e ON true"
                " WHERE j.status = 'failed' AND j.task_name ~ %s ORDER BY j.id LIMIT %s",
                [SYNC_TASKS, limit],
            )
        ).fetchall()
    return [tuple(row) for row in rows]


def drift(expected: Mapping[str, Any], actual: Mapping[str, Any]) -> dict[str, list[str]]:
    """Ids missing from the index, extra in it, and stale (a different document)."""
    return {
        "missing": sorted(set(expected) - set(actual)),
        "extra": sorted(set(actual) - set(expected)),
        "stale": sorted(key for key in set(expected) & set(actual) if expected[key] != actual[key]),
    }


if __name__ == "__main__":
    from tests.support import worker_process

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    asyncio.run(worker_process.main())
