"""Trigger overhead: single-row INSERT and UPDATE transactions per second on
`listings` (with procqueue's triggers) divided by the same on an identical
table without them, measured with pgbench in alternating rounds.

A third variant writes the plain table and calls `procqueue.add_job()` in the
same transaction, with no trigger: the floor any transactional enqueue into
Procrastinate's table can reach, to tell our trigger's cost from the job
insert's (Procrastinate's indexes, its event row and NOTIFYs). Two more tell the
job row's parts apart: the plain write plus one row in a narrow table with no index
(the cheapest durable record of a change), and the same plus one `pg_notify` (what
waking a listening worker from the user's transaction costs at the least). And the
triggers once more with Procrastinate's `deferred` event row switched off
(`procrastinate_trigger_status_events_insert_v1` disabled for that variant only):
what that row costs a write.

    .venv/bin/python -m benchmarks.trigger_overhead [--seconds 5] [--rounds 3]

Target (issue 14): ratio >= 0.7.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import tempfile
from pathlib import Path

import psycopg

from benchmarks.common import USER_ID, environment

SETUP = f"""
CREATE TABLE public.listings_plain (LIKE public.listings INCLUDING ALL);
CREATE TABLE public.bench_changes (entity text NOT NULL, id uuid NOT NULL);
CREATE TABLE public.bench_ids (n int PRIMARY KEY, id uuid NOT NULL);
INSERT INTO public.listings (id, user_id, title)
    SELECT gen_random_uuid(), '{USER_ID}', 'seed ' || g FROM generate_series(1, 10000) AS g;
INSERT INTO public.bench_ids SELECT row_number() OVER (), id FROM public.listings;
INSERT INTO public.listings_plain SELECT * FROM public.listings;
DELETE FROM procrastinate.procrastinate_jobs;
"""

# (pgbench meta-commands, the statement on table {table})
SCRIPTS = {
    "insert": (
        "",
        "INSERT INTO public.{table} (user_id, title) VALUES ('" + USER_ID + "', 'bench')",
    ),
    "update": (
        "\\set n random(1, 10000)\n",
        "UPDATE public.{table} SET title = 'bench ' || :n || ' ' || random() "
        "WHERE id = (SELECT id FROM public.bench_ids WHERE n = :n)",
    ),
}
# The statement and an add_job() in one statement: one round trip, like the trigger path.
ENQUEUE_BESIDE = (
    "WITH written AS ({statement} RETURNING 1) "
    "SELECT procqueue.add_job('listing:update', '{{}}'::jsonb, 'sync') FROM written"
)
NARROW_ROW_BESIDE = (
    "WITH written AS ({statement} RETURNING id) "
    "INSERT INTO public.bench_changes SELECT 'listing', id FROM written"
)
NOTIFY = "SELECT pg_notify('procqueue_bench', 'listing');"


DEFERRED_EVENT = (
    "ALTER TABLE procrastinate.procrastinate_jobs {} TRIGGER "
    "procrastinate_trigger_status_events_insert_v1"
)
WITHOUT_DEFERRED_EVENT = "with triggers, no deferred event"


def pgbench_tps(dsn: str, script: str, seconds: int) -> float:
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as file:
        file.write(script)
    try:
        output = subprocess.run(
            ["pgbench", "-n", "-c", "1", "-T", str(seconds), "-f", file.name, dsn],
            check=True, capture_output=True, text=True,
        ).stdout  # fmt: skip
    finally:
        Path(file.name).unlink()
    match = re.search(r"tps = ([\d.]+)", output)
    assert match, output
    return float(match.group(1))


def switch_deferred_event(dsn: str, switch: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(DEFERRED_EVENT.format(switch))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with environment("trigger_overhead") as env:
        with psycopg.connect(env.dsn) as conn:
            conn.execute(SETUP)
        for operation, (meta, template) in SCRIPTS.items():
            plain = template.format(table="listings_plain")
            variants = {
                "with triggers": meta + template.format(table="listings") + ";",
                WITHOUT_DEFERRED_EVENT: meta + template.format(table="listings") + ";",
                "without": meta + plain + ";",
                "plain + add_job()": meta + ENQUEUE_BESIDE.format(statement=plain) + ";",
                "plain + narrow row": meta + NARROW_ROW_BESIDE.format(statement=plain) + ";",
                "plain + narrow row + NOTIFY": (
                    meta + NARROW_ROW_BESIDE.format(statement=plain) + ";\n" + NOTIFY
                ),
            }
            tps: dict[str, list[float]] = {name: [] for name in variants}
            for _ in range(args.rounds):
                for name, script in variants.items():
                    if name == WITHOUT_DEFERRED_EVENT:
                        switch_deferred_event(env.dsn, "DISABLE")
                    try:
                        tps[name].append(pgbench_tps(env.dsn, script, args.seconds))
                    finally:
                        if name == WITHOUT_DEFERRED_EVENT:
                            switch_deferred_event(env.dsn, "ENABLE")
            mean = {name: sum(values) / len(values) for name, values in tps.items()}
            print(
                f"{operation}: with triggers {mean['with triggers']:.0f} tps, "
                f"without {mean['without']:.0f} tps -> ratio "
                f"{mean['with triggers'] / mean['without']:.2f} (target >= 0.7); "
                f"floor (plain + add_job() in one transaction) "
                f"{mean['plain + add_job()'] / mean['without']:.2f}; "
                f"trigger vs floor {mean['with triggers'] / mean['plain + add_job()']:.2f}"
            )
            print(
                f"{operation}: the job row's parts, ÷ without: a narrow row "
                f"{mean['plain + narrow row'] / mean['without']:.2f}, a narrow row and one "
                f"NOTIFY {mean['plain + narrow row + NOTIFY'] / mean['without']:.2f}; the "
                f"triggers without the deferred event row "
                f"{mean[WITHOUT_DEFERRED_EVENT] / mean['without']:.2f}"
            )


if __name__ == "__main__":
    main()
