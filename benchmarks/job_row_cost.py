"""What each part of the job row costs a single-row enqueue, side by side in one run.

A single-row INSERT into `listings` fires the sync trigger, which inserts one job row:
Procrastinate's and our indexes on the jobs table, Procrastinate's row triggers (the
`deferred` event row, the NOTIFY) and the trigger's own work. Each variant runs the
same N single-row INSERT statements (each its own statement, so each fires the
statement trigger once) in a transaction that is rolled back, with one part taken
away before (and put back after), so every variant starts from the same table;
rounds alternate and the best of them counts. Measured is the server process's
CPU time (from /proc: this machine's cores are shared, and wall time moves with
whatever else runs), without
the commit (the WAL flush, the same for every variant): CPU per enqueue, and what
removing each part would save.

    .venv/bin/python -m benchmarks.job_row_cost [--statements 2000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import functools
import os
import time
from pathlib import Path

import psycopg
from psycopg import sql

from benchmarks.common import USER_ID, environment

INSERT = sql.SQL("INSERT INTO public.{table} (user_id, title) VALUES (%s, 'bench')")
JOBS = "procrastinate.procrastinate_jobs"
VACUUM = (
    f"VACUUM {JOBS}, procrastinate.procrastinate_events, public.listings, public.listings_plain"
)


def parts(conn: psycopg.Connection) -> dict[str, tuple[str, str]]:
    """Every index and row trigger of the jobs table: name -> (statement taking it
    away, statement putting it back)."""
    found: dict[str, tuple[str, str]] = {}
    for name, definition in conn.execute(
        "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'procrastinate' "
        "AND tablename = 'procrastinate_jobs' "
        # The key, and the unique index the trigger's ON CONFLICT needs, cannot go.
        "AND indexname NOT IN "
        "('procrastinate_jobs_pkey', 'procrastinate_jobs_queueing_lock_idx_v1') "
        "ORDER BY indexname"
    ).fetchall():
        found[f"index {name}"] = (f"DROP INDEX procrastinate.{name}", definition)
    for (name,) in conn.execute(
        "SELECT tgname FROM pg_trigger WHERE tgrelid = %s::regclass AND NOT tgisinternal "
        "ORDER BY tgname",
        [JOBS],
    ).fetchall():
        found[f"trigger {name}"] = (
            f"ALTER TABLE {JOBS} DISABLE TRIGGER {name}",
            f"ALTER TABLE {JOBS} ENABLE TRIGGER {name}",
        )
    return found


def backend_cpu_seconds(pid: int) -> float:
    """CPU time (user + system) the server process `pid` has used: unlike wall time,
    it hardly moves with what else runs on the machine's cores."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed_inserts(conn: psycopg.Connection, table: str, statements: int) -> float:
    """CPU seconds of the server process for `statements` single-row INSERTs, rolled
    back (wall seconds when the server's /proc is not readable from here)."""
    statement = INSERT.format(table=sql.Identifier(table))
    clock = time.perf_counter
    if Path(f"/proc/{conn.info.backend_pid}/stat").exists():
        clock = functools.partial(backend_cpu_seconds, conn.info.backend_pid)
    try:
        started = clock()
        for _ in range(statements):
            conn.execute(statement, [USER_ID])
        return clock() - started
    finally:
        conn.rollback()


def measured(
    conn: psycopg.Connection, table: str, statements: int, change: tuple[str, str] | None
) -> float:
    """`timed_inserts` with one part taken away (committed, then put back), on
    vacuumed tables: the dead rows earlier rounds rolled back cost no variant more."""
    conn.commit()
    conn.autocommit = True
    conn.execute(VACUUM)
    conn.autocommit = False
    if change:
        conn.execute(change[0])
        conn.commit()
    try:
        return timed_inserts(conn, table, statements)
    finally:
        if change:
            conn.execute(change[1])
            conn.commit()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--statements", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with environment("job_row_cost") as env, psycopg.connect(env.dsn) as conn:
        conn.execute("CREATE TABLE public.listings_plain (LIKE public.listings INCLUDING ALL)")
        conn.execute("ALTER TABLE public.listings DISABLE TRIGGER listing_review_notification")
        conn.commit()
        variants: dict[str, tuple[str, tuple[str, str] | None]] = {
            "no queue (plain table)": ("listings_plain", None),
            "everything": ("listings", None),
            **{f"without {name}": ("listings", change) for name, change in parts(conn).items()},
        }
        best: dict[str, float] = {}
        for _ in range(args.rounds):
            for name, (table, change) in variants.items():
                elapsed = measured(conn, table, args.statements, change)
                best[name] = min(best.get(name, elapsed), elapsed)
        per = {name: seconds / args.statements * 1e6 for name, seconds in best.items()}
        plain, full = per["no queue (plain table)"], per["everything"]
        print(
            f"{args.statements} single-row INSERTs, best of {args.rounds}, no commit: "
            f"plain {plain:.1f} µs, with the queue {full:.1f} µs each "
            f"(queue share {full - plain:.1f} µs; plain / with {plain / full:.2f})"
        )
        print(f"{'part':<62} {'µs saved':>9} {'share of queue cost':>20}")
        for name, value in sorted(per.items(), key=lambda item: item[1]):
            if name.startswith("without"):
                saved = full - value
                share = saved / (full - plain)
                print(f"{name[8:]:<62} {saved:>9.1f} {share:>19.0%}")


if __name__ == "__main__":
    main()
