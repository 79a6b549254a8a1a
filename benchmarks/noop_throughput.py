"""No-op jobs: procqueue's worker against plain Procrastinate under it, side by side.

N no-op jobs (default 5,000) are drained by one `procqueue worker` (the CLI's own path:
its logging set-up, `commands.worker.serve`, `ProcqueueApp.run_worker_async`, here as
`--one-shot`) and by one plain `procrastinate.App` worker (Procrastinate's own
`PsycopgConnector` on the same DSN with its defaults, its CLI's logging, `--one-shot`)
at the same concurrency, on the same database, in the same run, alternating, for each
concurrency asked for. Plain Procrastinate has its own schema (`public`, where
`procrastinate schema --apply` puts it: its own tables, indexes and triggers, none of
procqueue's); procqueue's is `procrastinate` + `procqueue`, as `procqueue migrate`
installs it. Each starts with a warm-up drain that is not counted.

Each worker runs in a process of its own (stderr to a file, as a supervisor keeps it)
and exits when no job is left. Throughput is read from the events table: the run's
jobs divided by the time from its first `started` event to its last `succeeded` event
(no sleeps, no process start-up). Also per 1,000 jobs: how much the job tables grew
(pg_total_relation_size of the jobs and events tables, and of procqueue's per-job
tables), the database's commits (pg_stat_database), the CPU seconds of the worker
process and of the Postgres backends serving this database (sampled from /proc), and
the bytes of log written.

    .venv/bin/python -m benchmarks.noop_throughput [--jobs 5000] [--concurrency 4,16]
        [--rounds 1] [--warmup 500]

Target (issue 23): procqueue's jobs/s / plain Procrastinate's >= 1.0 at each concurrency.
(`benchmarks/sync_throughput.py --noop` points here.)
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict

from procqueue.local import database_dsn, env, local_postgres, scratch_database
from procqueue.migrate import migrate

TASK = "bench:noop"
QUEUE = "bench"
ROOT = Path(__file__).resolve().parent.parent
#: Where each worker keeps its jobs and events.
SCHEMAS = {"procqueue": "procrastinate", "plain": "public"}
#: The tables a job writes to, per worker (those that exist are measured).
JOB_TABLES = {
    "procqueue": (
        "procrastinate.procrastinate_jobs",
        "procrastinate.procrastinate_events",
        "procqueue.job_errors",
        "procqueue.job_postponements",
    ),
    "plain": ("public.procrastinate_jobs", "public.procrastinate_events"),
}
#: Never contacted: no-op jobs call no Elasticsearch (the settings need a URL).
UNUSED_ES_URL = "http://127.0.0.1:9"
_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Run:
    system: str
    concurrency: int
    jobs: int
    seconds: float  # first `started` event to last `succeeded` event
    process_seconds: float  # the worker process, start to exit
    worker_cpu: float
    postgres_cpu: float
    commits: int
    growth: dict[str, int]  # table -> bytes
    log_bytes: int

    @property
    def rate(self) -> float:
        return self.jobs / self.seconds

    def per_thousand(self, value: float) -> float:
        return value / self.jobs * 1000


@dataclass
class BackendCpu:
    """CPU seconds of the backends serving one database, sampled from /proc while a
    worker runs (this machine's Postgres also serves other databases)."""

    admin_dsn: str
    database: str
    seen: dict[int, float] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> BackendCpu:
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()

    @property
    def seconds(self) -> float:
        return sum(self.seen.values())

    def _sample(self) -> None:
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            while True:
                pids = conn.execute(
                    "SELECT pid FROM pg_stat_activity WHERE datname = %s", [self.database]
                ).fetchall()
                for (pid,) in pids:
                    try:
                        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                    except OSError:
                        continue
                    self.seen[pid] = (int(stat[11]) + int(stat[12])) / _TICKS
                if self._stop.wait(0.05):
                    return


def install_plain_procrastinate(dsn: str) -> None:
    """Procrastinate's own schema, as `procrastinate schema --apply` installs it: in
    the connection's first schema, `public`."""
    from procrastinate.schema import SchemaManager

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SchemaManager.get_schema())


def table_sizes(conn: psycopg.Connection, system: str) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for table in JOB_TABLES[system]:
        row = conn.execute("SELECT pg_total_relation_size(to_regclass(%s))", [table]).fetchone()
        if row is not None and row[0] is not None:
            sizes[table] = int(row[0])
    return sizes


def commits(admin: psycopg.Connection, database: str) -> int:
    """The commits of `database` so far, read from another database (so that reading
    adds none)."""
    admin.execute("SELECT pg_stat_clear_snapshot()")
    row = admin.execute(
        "SELECT xact_commit FROM pg_stat_database WHERE datname = %s", [database]
    ).fetchone()
    assert row is not None
    return int(row[0])


def wait_for_backends_to_end(admin: psycopg.Connection, database: str) -> None:
    """Until no backend serves `database`: those of the worker (or of the last
    connection) have exited, and flushed their statistics."""
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        row = admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", [database]
        ).fetchone()
        if row is not None and row[0] == 0:
            return
        time.sleep(0.02)


def enqueue(conn: psycopg.Connection, system: str, jobs: int) -> int:
    """`jobs` no-op jobs, the same rows for both (no lock: no-op jobs sync nothing);
    returns the highest job id before them."""
    schema = SCHEMAS[system]
    row = conn.execute(f"SELECT coalesce(max(id), 0) FROM {schema}.procrastinate_jobs").fetchone()
    assert row is not None
    conn.execute(
        f"INSERT INTO {schema}.procrastinate_jobs (queue_name, task_name, args) "
        "SELECT %s, %s, jsonb_build_object('n', g) FROM generate_series(1, %s) AS g",
        [QUEUE, TASK, jobs],
    )
    conn.execute(f"ANALYZE {schema}.procrastinate_jobs")
    return int(row[0])


def drained_seconds(conn: psycopg.Connection, system: str, after_id: int, jobs: int) -> float:
    schema = SCHEMAS[system]
    row = conn.execute(
        f"SELECT count(*) FILTER (WHERE type = 'succeeded'), "
        "extract(epoch FROM max(at) FILTER (WHERE type = 'succeeded') "
        "                    - min(at) FILTER (WHERE type = 'started')) "
        f"FROM {schema}.procrastinate_events WHERE job_id > %s",
        [after_id],
    ).fetchone()
    assert row is not None
    succeeded, seconds = row
    assert succeeded == jobs, f"{system}: {succeeded} of {jobs} jobs succeeded"
    return float(seconds)


def measure(admin_dsn: str, dsn: str, system: str, concurrency: int, jobs: int) -> Run:
    database = str(conninfo_to_dict(dsn)["dbname"])
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        with psycopg.connect(dsn, autocommit=True) as conn:
            sizes_before = table_sizes(conn, system)
            after_id = enqueue(conn, system, jobs)
        wait_for_backends_to_end(admin, database)
        commits_before = commits(admin, database)
        with tempfile.TemporaryFile() as log, BackendCpu(admin_dsn, database) as postgres:
            started = time.perf_counter()
            process = subprocess.Popen(
                [sys.executable, "-m", "benchmarks.noop_throughput", "--serve", system,
                 "--dsn", dsn, "--concurrency", str(concurrency)],
                stdout=log, stderr=log, cwd=ROOT,
            )  # fmt: skip
            _, status, usage = os.wait4(process.pid, 0)
            process.returncode = os.waitstatus_to_exitcode(status)
            process_seconds = time.perf_counter() - started
            wait_for_backends_to_end(admin, database)
            log_bytes = log.seek(0, os.SEEK_END)
            if process.returncode != 0:
                log.seek(0)
                tail = log.read().decode(errors="replace")[-3000:]
                raise RuntimeError(f"{system} worker exited {process.returncode}:\n{tail}")
        commit_count = commits(admin, database) - commits_before
    with psycopg.connect(dsn, autocommit=True) as conn:
        seconds = drained_seconds(conn, system, after_id, jobs)
        sizes_after = table_sizes(conn, system)
    return Run(
        system=system, concurrency=concurrency, jobs=jobs, seconds=seconds,
        process_seconds=process_seconds, worker_cpu=usage.ru_utime + usage.ru_stime,
        postgres_cpu=postgres.seconds, commits=commit_count,
        growth={table: sizes_after[table] - sizes_before.get(table, 0) for table in sizes_after},
        log_bytes=log_bytes,
    )  # fmt: skip


def describe(run: Run) -> str:
    growth = ", ".join(
        f"{table.split('.', 1)[1]} {run.per_thousand(size) / 1024:.0f} KiB"
        for table, size in run.growth.items()
    )
    return (
        f"  {run.system:9}: {run.rate:6.0f} jobs/s ({run.seconds:.2f} s first start -> last end; "
        f"process {run.process_seconds:.1f} s); per 1,000 jobs: tables +"
        f"{run.per_thousand(sum(run.growth.values())) / 1024:.0f} KiB ({growth}), "
        f"{run.per_thousand(run.commits):.0f} commits, CPU: worker "
        f"{run.per_thousand(run.worker_cpu):.2f} s, Postgres "
        f"{run.per_thousand(run.postgres_cpu):.2f} s; "
        f"log {run.per_thousand(run.log_bytes) / 1024:.0f} KiB"
    )


def run(jobs: int, concurrencies: list[int], rounds: int, warmup: int) -> None:
    with (
        local_postgres(env("PROCQUEUE_TEST_DATABASE_URL")) as admin,
        scratch_database(admin, "pq_bench_noop") as dsn,
    ):
        admin_postgres = database_dsn(admin, "postgres")
        migrate(dsn)
        install_plain_procrastinate(dsn)
        print(
            f"{jobs} no-op jobs per run, one worker each, alternating; machine: "
            f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}"
        )
        if warmup:
            for system in SCHEMAS:
                measure(admin_postgres, dsn, system, concurrencies[0], warmup)
        ratios: dict[int, list[float]] = {c: [] for c in concurrencies}
        turn = 0
        for round_number in range(1, rounds + 1):
            for concurrency in concurrencies:
                order = ["procqueue", "plain"] if turn % 2 == 0 else ["plain", "procqueue"]
                turn += 1
                results = {
                    system: measure(admin_postgres, dsn, system, concurrency, jobs)
                    for system in order
                }
                ratio = results["procqueue"].rate / results["plain"].rate
                ratios[concurrency].append(ratio)
                print(f"round {round_number}, concurrency {concurrency}:")
                for system in order:
                    print(describe(results[system]))
                print(f"  ratio procqueue / plain: {ratio:.2f} (target >= 1.0)")
        for concurrency, values in ratios.items():
            print(
                f"concurrency {concurrency}: ratio procqueue / plain "
                + ", ".join(f"{value:.2f}" for value in values)
            )


# The workers, each in its own process ---------------------------------------


def serve_procqueue(dsn: str, concurrency: int) -> None:
    """What `procqueue worker --one-shot --concurrency C` does, with a no-op task."""
    from procqueue.app import build_app
    from procqueue.commands.worker import serve
    from procqueue.features import load_settings
    from procqueue.queue.logs import configure_logging

    settings = load_settings(
        database_url=dsn, elasticsearch_url=UNUSED_ES_URL, concurrency=concurrency,
        maintenance_tasks=False,
    )  # fmt: skip
    configure_logging(lambda: settings)
    app = build_app(settings)

    @app.task(name=TASK, queue=QUEUE, retry=app.retry)
    async def noop(n: int) -> None:
        return None

    serve(app, wait=False)


def serve_plain(dsn: str, concurrency: int) -> None:
    """What `procrastinate worker --one-shot --concurrency C` does (its default
    logging: INFO, basic format), with a no-op task."""
    import procrastinate

    logging.basicConfig(level=logging.INFO, format=logging.BASIC_FORMAT)
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=dsn))

    @app.task(name=TASK, queue=QUEUE)
    async def noop(n: int) -> None:
        return None

    async def work() -> None:
        async with app.open_async():
            await app.run_worker_async(concurrency=concurrency, wait=False)

    asyncio.run(work())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=5_000)
    parser.add_argument("--concurrency", default="4,16", help="comma-separated")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=500, help="jobs drained first, uncounted")
    parser.add_argument("--serve", choices=sorted(SCHEMAS), help=argparse.SUPPRESS)
    parser.add_argument("--dsn", help=argparse.SUPPRESS)
    args = parser.parse_args()
    concurrencies = [int(value) for value in args.concurrency.split(",")]
    if args.serve == "procqueue":
        serve_procqueue(args.dsn, concurrencies[0])
    elif args.serve == "plain":
        serve_plain(args.dsn, concurrencies[0])
    else:
        run(args.jobs, concurrencies, args.rounds, args.warmup)


if __name__ == "__main__":
    main()
