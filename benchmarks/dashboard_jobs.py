"""The dashboard's job list on a big table: time of one page over HTTP (the
real Starlette app through httpx's ASGI transport, templates included) for each
kind of filter, with migration 0007's indexes and, for the ratio, without them.

    .venv/bin/python -m benchmarks.dashboard_jobs [--jobs 100000] [--runs 30]

To iterate on one page: fill once with `--keep`, then `--reuse --only overview`
measures on the kept database (new migrations applied, no refill).

The history is benchmarks/health_fill.sql (finished jobs with events and error
rows, a waiting backlog, running jobs); then 1 job in 10,000 becomes the rare
task `inventory:bulk` and 1 in 5,000 `cancelled`, spread over the whole id
range, so rare filters have to look through old rows too.
Issue 25 adds the states postponed, scheduled and discarded (1 failed job in 7
discarded, 1 waiting job in 10 postponed, 1 in 5 due in an hour), the search `q`
(hits and misses: a miss reads one window of SEARCH_WINDOW jobs), the time range,
the live-refresh partial and the count of a confirmation page.
The maintenance task's rollups (Charts, hourly task stats) are brought up to date
before measuring, as a running worker keeps them.
Target: every page under 100 ms (p95) at 1,000,000 jobs.
"""

from __future__ import annotations

import argparse
import asyncio

import psycopg

from benchmarks.common import percentile
from benchmarks.health_queries import fill
from benchmarks.pages import time_pages
from procqueue.features import load_settings
from procqueue.local import database_dsn, env, local_postgres, scratch_database
from procqueue.migrate import migrate

DASHBOARD_INDEXES = (
    "procqueue_jobs_status_id_idx",
    "procqueue_jobs_task_id_idx",
    "procqueue_jobs_queue_id_idx",
    "procqueue_jobs_lock_id_idx",
)
BUDGET_MS = 100.0
ANALYSED = (
    "procrastinate.procrastinate_jobs",
    "procrastinate.procrastinate_events",
    "procqueue.job_errors",
    "procqueue.discarded_jobs",
    "procqueue.chart_stats",
)


def scenarios(jobs: int) -> dict[str, str]:
    middle = jobs // 2
    return {
        "newest page, no filter": "/jobs",
        "deep page (keyset, middle of the table)": f"/jobs?before={middle}",
        "status=failed": "/jobs?status=failed",
        "status=cancelled (rare)": "/jobs?status=cancelled",
        "status=cancelled, deep page": f"/jobs?status=cancelled&before={middle}",
        "task=inventory:bulk (rare)": "/jobs?task=inventory:bulk",
        "task + status=failed": "/jobs?task=listing:update&status=failed",
        "queue=images": "/jobs?queue=images",
        "state=postponed": "/jobs?state=postponed",
        "state=scheduled": "/jobs?state=scheduled",
        "state=discarded": "/jobs?state=discarded",
        "search q in args (hits)": f"/jobs?q={middle // 1000}",
        "search q in error text (hits)": "/jobs?q=answered 503",
        "search q (miss: one window read)": "/jobs?q=no-such-text",
        "search q (miss) + state=failed": "/jobs?state=failed&q=no-such-text",
        "search q (miss), deep page": f"/jobs?q=no-such-text&before={middle}",
        "since=1h": "/jobs?since=1h",
        "since=4d&until=3d (middle)": "/jobs?since=4d&until=3d",
        "since + until (miss: empty range)": "/jobs?since=30d&until=29d",
        "entity id (exists)": f"/jobs?entity={middle + 1}",
        "entity id (no such id)": "/jobs?entity=00000000-0000-0000-0000-000000000000",
        "rows partial (live refresh)": "/jobs/rows",
        "rows partial, state=failed & q": "/jobs/rows?state=failed&q=503",
        "confirm page: retry all failed (count)": "/jobs/confirm?verb=retry&state=failed",
        "job page": f"/jobs/{middle}",
        "failures page (groups)": "/failures",
        "overview": "/",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--backlog", type=int, default=2_000)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument(
        "--without",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure without migration 0007's indexes (slow at 1,000,000 jobs)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the database pq_bench_dashboard_jobs (EXPLAIN)"
    )
    parser.add_argument("--database", default="pq_bench_dashboard_jobs", help="database name")
    parser.add_argument(
        "--reuse", action="store_true", help="measure on a database kept by --keep (no refill)"
    )
    parser.add_argument(
        "--only", action="append", default=[], help="measure only pages whose name has this text"
    )
    args = parser.parse_args()
    with local_postgres(env("PROCQUEUE_TEST_DATABASE_URL")) as admin:
        if args.reuse:
            dsn = database_dsn(admin, args.database)
            migrate(dsn)
            report(args, measure_pages(args, dsn))
            return
        with scratch_database(admin, args.database, keep=args.keep) as dsn:
            migrate(dsn)
            fill_history(dsn, args.jobs, args.backlog)
            report(args, measure_pages(args, dsn))


def fill_history(dsn: str, jobs: int, backlog: int) -> None:
    """The history of the module docstring, analysed."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        seconds = fill(conn, jobs, backlog)
        conn.execute(
            "UPDATE procrastinate.procrastinate_jobs SET task_name = 'inventory:bulk' "
            "WHERE id % 10000 = 1"
        )
        conn.execute(
            "UPDATE procrastinate.procrastinate_jobs SET status = 'cancelled' "
            "WHERE id % 5000 = 7 AND status = 'succeeded'"
        )
        # Issue 25's states: 1 failed job in 7 discarded, 1 waiting job in 10
        # postponed, 1 in 5 scheduled for later.
        conn.execute(
            "INSERT INTO procqueue.discarded_jobs (job_id, actor) SELECT id, 'bench'"
            " FROM procrastinate.procrastinate_jobs WHERE status = 'failed' AND id % 7 = 0"
        )
        conn.execute(
            "INSERT INTO procqueue.job_postponements (job_id, attempts, reason)"
            " SELECT id, attempts, 'bench: circuit open' FROM procrastinate.procrastinate_jobs"
            " WHERE status = 'todo' AND id % 10 = 3"
        )
        conn.execute(
            "UPDATE procrastinate.procrastinate_jobs SET scheduled_at = now() + interval '1 h'"
            " WHERE status = 'todo' AND id % 5 = 1"
        )
        # What the maintenance task keeps current: the Charts rollups the overview's
        # charts read (migration 0023) and the hourly task stats (0017).
        while conn.execute("SELECT procqueue.roll_up_chart_minutes(720)").fetchone() == (720,):
            pass
        conn.execute("SELECT procqueue.roll_up_task_stats(10000)")
        for table in ANALYSED:
            conn.execute(f"VACUUM ANALYZE {table}")
    print(f"filled {jobs:,} finished jobs + {backlog:,} active in {seconds:.1f} s")


#: The overview as a user gets it: watched, its snapshot read in the background every
#: 5 s. Requested every 1.3 s (30 runs: 39 s, ~9 background reads), each request at
#: another moment of the refresh, some while a read is under way on the 2 cores.
WATCHED = {"overview": 1.3}

Timings = tuple[dict[str, list[float]], dict[str, list[float]]]


def measure_pages(args: argparse.Namespace, dsn: str) -> Timings:
    """Timings with 0007's indexes and (`--without`) after dropping them."""
    settings = load_settings(database_url=dsn, elasticsearch_url="http://127.0.0.1:9")
    pages = {
        name: path
        for name, path in scenarios(args.jobs).items()
        if not args.only or any(text in name for text in args.only)
    }
    with_indexes = asyncio.run(time_pages(settings, pages, args.runs, WATCHED))
    if not args.without:
        return with_indexes, with_indexes
    with psycopg.connect(dsn, autocommit=True) as conn:
        for index in DASHBOARD_INDEXES:
            conn.execute(f"DROP INDEX procrastinate.{index}")
    without = asyncio.run(time_pages(settings, pages, max(3, args.runs // 5), WATCHED))
    return with_indexes, without


def report(args: argparse.Namespace, timings: Timings) -> None:
    with_indexes, without = timings
    print(f"\none page over HTTP, {args.jobs:,} jobs; p50 / p95 ms; budget p95 < {BUDGET_MS:.0f}")
    print(f"{'page':42} {'with 0007':>18} {'without':>18} {'ratio':>7}")
    if not args.without:
        print("(--no-without: the 'without' columns repeat 'with 0007')")
    slow = []
    for name, samples in with_indexes.items():
        p50, p95 = percentile(samples, 0.5) * 1000, percentile(samples, 0.95) * 1000
        other = without[name]
        q50, q95 = percentile(other, 0.5) * 1000, percentile(other, 0.95) * 1000
        print(f"{name:42} {p50:8.1f} / {p95:6.1f} {q50:8.1f} / {q95:6.1f} {q50 / p50:6.1f}x")
        if p95 > BUDGET_MS:
            slow.append(name)
    print("\nall pages within budget" if not slow else f"\nover budget: {', '.join(slow)}")


if __name__ == "__main__":
    main()
