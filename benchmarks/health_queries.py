"""Health SQL on a big history: each health query's time with 1,000,000 finished
jobs retained (plus a waiting backlog, running jobs and workers), with the
indexes of migration 0006 and, for the ratio, without them; task_stats over
a day and a week on the hourly rollups of migration 0017 (and live, before
them). Also: how long building those indexes takes on that table, the first
rollup of that history, and one prune batch.

    .venv/bin/python -m benchmarks.health_queries [--jobs 1000000] [--backlog 10000] [--runs 20]

Target: every health query well under 100 ms (p95).
"""

from __future__ import annotations

import argparse
import functools
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from benchmarks.common import percentile
from procqueue import resources
from procqueue.local import env, local_postgres, scratch_database
from procqueue.migrate import migrate
from procqueue.queue.queries import query

FILL_SQL = Path(__file__).with_name("health_fill.sql")
BUDGET_MS = 100.0

QUERIES: dict[str, tuple[str, dict[str, Any]]] = {
    "queue_health": ("SELECT * FROM procqueue.queue_stats()", {}),
    "task_health (1 h)": ("SELECT * FROM procqueue.task_stats(interval '1 hour')", {}),
    "worker_health": ("SELECT * FROM procqueue.worker_stats()", {}),
    "storage_health": ("SELECT * FROM procqueue.storage_health", {}),
    "failed jobs (CLI, 50)": ("failed_jobs", {"task": None, "limit": 50}),
}
DAY: tuple[str, dict[str, Any]] = ("SELECT * FROM procqueue.task_stats(interval '1 day')", {})
# After the hourly rollups (migration 0017) are filled, as the maintenance task keeps them.
ROLLUP_QUERIES: dict[str, tuple[str, dict[str, Any]]] = {
    "task_stats (1 day)": DAY,
    "task_stats (7 days)": ("SELECT * FROM procqueue.task_stats(interval '7 days')", {}),
}
LIVE_DAY = "task_stats (1 day), live"
LAGGING_DAY = "task_stats (1 day), last hour not rolled up"


def index_statements() -> list[str]:
    """The CREATE INDEX statements of migration 0006, as written there."""
    text = (resources.migrations() / "0006_health.sql").read_text(encoding="utf-8")
    return re.findall(r"CREATE INDEX .*?;", text, flags=re.DOTALL)


def index_names() -> list[str]:
    names = []
    for statement in index_statements():
        found = re.search(r"CREATE INDEX (\w+)", statement)
        assert found is not None
        names.append(found[1])
    return names


def timed(action: Callable[[], Any]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def run_query(conn: psycopg.Connection[Any], text: str, params: dict[str, Any]) -> None:
    statement = query(text) if " " not in text else text
    conn.execute(statement, params).fetchall()


def measure(
    conn: psycopg.Connection[Any], queries: dict[str, tuple[str, dict[str, Any]]], runs: int
) -> dict[str, list[float]]:
    results = {}
    for name, (text, params) in queries.items():
        for _ in range(2):
            run_query(conn, text, params)
        run = functools.partial(run_query, conn, text, params)
        results[name] = [timed(run) for _ in range(runs)]
    return results


def roll_up(conn: psycopg.Connection[Any]) -> int:
    """What the maintenance task does: roll up every completed hour not rolled up yet."""
    total = 0
    while True:
        row = conn.execute(query("roll_up_task_stats"), {"max_hours": 24}).fetchone()
        if not row or not row[0]:
            return total
        total += int(row[0])


def report(results: dict[str, list[float]], info: tuple[str, ...] = ()) -> None:
    for name, values in results.items():
        p50, p95 = percentile(values, 0.5) * 1000, percentile(values, 0.95) * 1000
        note = "  (informational)" if name in info else ""
        print(
            f"  {name:44} p50 {p50:7.1f} ms  p95 {p95:7.1f} ms  "
            f"p95/budget {p95 / BUDGET_MS:5.2f}{note}"
        )


def fill(conn: psycopg.Connection[Any], jobs: int, backlog: int) -> float:
    conn.execute(f"SET bench.jobs = '{int(jobs)}'")
    conn.execute(f"SET bench.backlog = '{int(backlog)}'")
    started = time.perf_counter()
    conn.execute(FILL_SQL.read_text(encoding="utf-8"))
    conn.execute("VACUUM ANALYZE procrastinate.procrastinate_jobs")
    conn.execute("VACUUM ANALYZE procrastinate.procrastinate_events")
    conn.execute("VACUUM ANALYZE procqueue.job_errors")
    return time.perf_counter() - started


def counts(conn: psycopg.Connection[Any]) -> str:
    row = conn.execute(
        "SELECT (SELECT count(*) FROM procrastinate.procrastinate_jobs),"
        " (SELECT count(*) FROM procrastinate.procrastinate_events),"
        " (SELECT count(*) FROM procqueue.job_errors)"
    ).fetchone()
    assert row is not None
    return f"{row[0]:,} jobs, {row[1]:,} events, {row[2]:,} error rows"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--backlog", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()

    with (
        local_postgres(env("PROCQUEUE_TEST_DATABASE_URL")) as admin,
        scratch_database(admin, "pq_bench_health") as dsn,
    ):
        migrate(dsn)
        with psycopg.connect(dsn, autocommit=True) as conn:
            seconds = fill(conn, args.jobs, args.backlog)
            print(f"filled in {seconds:.1f} s: {counts(conn)}")
            print(
                f"\nwith migration 0006's indexes ({args.runs} runs each, budget {BUDGET_MS:g} ms)"
            )
            live_day = measure(conn, {LIVE_DAY: DAY}, max(3, args.runs // 4))
            started = time.perf_counter()
            hours = roll_up(conn)
            rolled_in = time.perf_counter() - started
            with_indexes = measure(conn, {**QUERIES, **ROLLUP_QUERIES}, args.runs)
            report({**with_indexes, **live_day}, info=(LIVE_DAY,))
            conn.execute(
                "DELETE FROM procqueue.task_stats_hours"
                " WHERE hour = (SELECT max(hour) FROM procqueue.task_stats_hours)"
            )
            report(measure(conn, {LAGGING_DAY: DAY}, args.runs))
            roll_up(conn)
            print(
                f"  ({LIVE_DAY}: before any rollup, every attempt of the day read from the "
                f"events; the first rollup of this history, {hours} hours, took {rolled_in:.1f} s)"
            )

            for name in index_names():
                conn.execute(f"DROP INDEX procrastinate.{name}")
            conn.execute("ANALYZE procrastinate.procrastinate_jobs")
            conn.execute("ANALYZE procrastinate.procrastinate_events")
            naive_runs = max(3, args.runs // 4)
            print(f"\nwithout them ({naive_runs} runs each)")
            without = measure(conn, QUERIES, naive_runs)
            for name, values in without.items():
                p50 = percentile(values, 0.5) * 1000
                ratio = percentile(values, 0.5) / percentile(with_indexes[name], 0.5)
                print(f"  {name:24} p50 {p50:7.1f} ms  without/with {ratio:7.1f}x")

            print("\nbuilding the indexes on this history (what `procqueue migrate` costs once)")
            for statement, name in zip(index_statements(), index_names(), strict=True):
                built = timed(functools.partial(conn.execute, statement))
                print(f"  {name:32} {built:6.2f} s")
            conn.execute("ANALYZE procrastinate.procrastinate_events")

            cutoff = datetime.now(UTC) - timedelta(days=6, hours=12)
            params: dict[str, Any] = {
                "status": "succeeded",
                "event_type": "succeeded",
                "cutoff": cutoff,
                "batch_size": 500,
                "after_at": datetime.min.replace(tzinfo=UTC),
            }
            batches = []
            for _ in range(10):
                started = time.perf_counter()
                row = conn.execute(query("prune_finished_jobs"), params).fetchone()
                batches.append(time.perf_counter() - started)
                assert row is not None and row[0] == 500
                params["after_at"] = row[2]
            print(
                f"\nprune: 10 batches of 500 succeeded jobs (with events and error rows): "
                f"p50 {percentile(batches, 0.5) * 1000:.1f} ms, "
                f"max {max(batches) * 1000:.1f} ms per batch (each its own transaction)"
            )


if __name__ == "__main__":
    main()
