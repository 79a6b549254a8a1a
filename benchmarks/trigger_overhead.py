"""Trigger overhead (issue 23): single-row INSERT and UPDATE transactions per second
on `listings` with procqueue's triggers, divided by the same on an identical table
with none (`listings_plain`: same columns, indexes, defaults and foreign keys), at
1 and 8 pgbench clients (`-c N -j N`; `--clients`), beside what the alternatives cost the same
write in the same run:

- procqueue: whatever `procqueue migrate` installed on `public.listings` (the script
  only writes the table);
- PGSync's trigger: PGSync 7.3.0's `table_notify()` (pgsync/trigger.py, reproduced
  below with the `_view` row PGSync's bootstrap would make for the table) as a row
  AFTER INSERT OR UPDATE OR DELETE trigger on a third copy, `listings_pgsync`;
- pgmq `send()` (Supabase Queues): the plain write and `pgmq.send('listings',
  jsonb_build_object('id', id))` in one statement, with pgmq's SQL (1.5+ is pure
  SQL) taken from the `pgmq` package on PyPI (its wheel ships `pgmq/sql/pgmq.sql`;
  fetched with `pip download` unless the package is importable) and run in one
  transaction into the schema `pgmq`; left out, with one line saying why, if that
  fails;
- references: the plain write and `procqueue.add_job()` in one statement (a
  Procrastinate job row with no trigger), the plain write and one row in a narrow
  table with no index (the cheapest durable record of a change), and the same plus
  one `pg_notify` (what waking a listener from the user's transaction costs).

Each round runs every (clients, operation, variant) once for `--seconds`, the
variants' order rotating from round to round, so noise hits all alike. Printed: the
median tps of the rounds per variant and its ratio to the median of "without" in
the same column, then the targets: procqueue >= 0.8 at 1 client, >= 0.65 at 8
clients, and ahead of pgmq and PGSync.

    .venv/bin/python -m benchmarks.trigger_overhead [--seconds 5] [--rounds 3] [--clients 1,8]
"""

from __future__ import annotations

import argparse
import importlib.resources
import re
import statistics
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import psycopg
from psycopg import sql

from benchmarks.common import USER_ID, environment
from procqueue.entities import LISTING

PROCQUEUE = "procqueue triggers"
PGSYNC = "PGSync 7.3.0 trigger"
PGMQ = "plain + pgmq.send()"
WITHOUT = "without"
TARGET_AT = {1: 0.8, 8: 0.65}
PGMQ_PACKAGE = "pgmq==1.1.4"  # ships pgmq/sql/pgmq.sql (pgmq 1.13.0)
PGMQ_QUEUE = "listings"

SETUP = f"""
CREATE TABLE public.listings_plain (LIKE public.listings INCLUDING ALL);
CREATE TABLE public.listings_pgsync (LIKE public.listings INCLUDING ALL);
CREATE TABLE public.bench_changes (entity text NOT NULL, id uuid NOT NULL);
CREATE TABLE public.bench_ids (n int PRIMARY KEY, id uuid NOT NULL);
INSERT INTO public.listings (id, user_id, title)
    SELECT gen_random_uuid(), '{USER_ID}', 'seed ' || g FROM generate_series(1, 10000) AS g;
INSERT INTO public.bench_ids SELECT row_number() OVER (), id FROM public.listings;
INSERT INTO public.listings_plain SELECT * FROM public.listings;
INSERT INTO public.listings_pgsync SELECT * FROM public.listings;
DELETE FROM procrastinate.procrastinate_jobs;
"""
# LIKE copies no foreign keys: give the copies listings' own, so that "identical"
# includes the referential checks every variant's write pays.
COPY_FOREIGN_KEYS = """
SELECT format('ALTER TABLE public.%I ADD CONSTRAINT %I %s', copy, conname || '_' || copy,
              pg_get_constraintdef(oid))
FROM pg_constraint, unnest(ARRAY['listings_plain', 'listings_pgsync']) AS copy
WHERE conrelid = 'public.listings'::regclass AND contype = 'f'
"""

# PGSync 7.3.0, pgsync/trigger.py CREATE_TRIGGER_TEMPLATE, as Base.create_function
# installs it for schema "public" (TRIGGER_FUNC "table_notify", MATERIALIZED_VIEW
# "_view", both schema-qualified), verbatim otherwise.
PGSYNC_FUNCTION = """
CREATE OR REPLACE FUNCTION public.table_notify() RETURNS TRIGGER AS $$
DECLARE
  channel TEXT;
  old_row JSON;
  new_row JSON;
  notification JSON;
  xmin BIGINT;
  _indices TEXT [];
  _primary_keys TEXT [];
  _foreign_keys TEXT [];
  _columns TEXT [];
  _changed BOOLEAN;

BEGIN
    -- database is also the channel name.
    channel := CURRENT_DATABASE();

    IF TG_OP = 'DELETE' THEN

        SELECT primary_keys, indices INTO _primary_keys, _indices
        FROM public._view
        WHERE table_name = TG_TABLE_NAME;

        old_row = ROW_TO_JSON(OLD);
        old_row := (
            SELECT JSONB_OBJECT_AGG(key, value)
            FROM JSON_EACH(old_row)
            WHERE key = ANY(_primary_keys)
        );
        xmin := OLD.xmin;
    ELSE
        IF TG_OP <> 'TRUNCATE' THEN

            SELECT primary_keys, foreign_keys, indices, columns
            INTO _primary_keys, _foreign_keys, _indices, _columns
            FROM public._view
            WHERE table_name = TG_TABLE_NAME;

            -- normalize null to empty array
            _columns := COALESCE(_columns, ARRAY[]::TEXT[]);

            -- Only react if any _columns actually changed
            IF TG_OP = 'UPDATE' THEN
                SELECT EXISTS (
                    SELECT 1
                    FROM JSONB_EACH(TO_JSONB(NEW.*)) n
                    JOIN JSONB_EACH(TO_JSONB(OLD.*)) o USING (key)
                    WHERE n.key = ANY(_columns)
                    AND n.value IS DISTINCT FROM o.value
                )
                INTO _changed;

                IF NOT _changed THEN
                    RETURN NEW;  -- skip notification; nothing relevant changed
                END IF;
            END IF;

            new_row = ROW_TO_JSON(NEW);
            new_row := (
                SELECT JSONB_OBJECT_AGG(key, value)
                FROM JSON_EACH(new_row)
                WHERE key = ANY(_primary_keys || _foreign_keys)
            );
            IF TG_OP = 'UPDATE' THEN
                old_row = ROW_TO_JSON(OLD);
                old_row := (
                    SELECT JSONB_OBJECT_AGG(key, value)
                    FROM JSON_EACH(old_row)
                    WHERE key = ANY(_primary_keys || _foreign_keys)
                );
            END IF;
            xmin := NEW.xmin;
        END IF;
    END IF;

    -- construct the notification as a JSON object.
    notification = JSON_BUILD_OBJECT(
        'xmin', xmin,
        'new', new_row,
        'old', old_row,
        'indices', _indices,
        'tg_op', TG_OP,
        'table', TG_TABLE_NAME,
        'schema', TG_TABLE_SCHEMA
    );

    -- Notify/Listen updates occur asynchronously,
    -- so this doesn't block the Postgres trigger procedure.
    PERFORM PG_NOTIFY(channel, notification::TEXT);

  RETURN NEW;
END;
$$ LANGUAGE plpgsql;
"""
# What PGSync's bootstrap (pgsync/view.py create_view) makes for one root node on
# listings_pgsync: its primary and foreign key columns from information_schema, the
# index name, and the node's columns plus those keys; then Base.create_triggers.
PGSYNC_KEYS = """
SELECT tc.constraint_type, array_agg(DISTINCT kcu.column_name::text ORDER BY kcu.column_name::text)
FROM information_schema.table_constraints AS tc
JOIN information_schema.key_column_usage AS kcu
    ON kcu.constraint_name = tc.constraint_name AND kcu.table_schema = tc.table_schema
WHERE tc.table_schema = 'public' AND tc.table_name = 'listings_pgsync'
    AND tc.constraint_type IN ('PRIMARY KEY', 'FOREIGN KEY')
GROUP BY tc.constraint_type
"""
PGSYNC_VIEW = """
CREATE MATERIALIZED VIEW public._view AS
SELECT * FROM (VALUES ({table}, {primary_keys}::text[], {foreign_keys}::text[],
                       {indices}::text[], {columns}::text[]))
    AS t (table_name, primary_keys, foreign_keys, indices, columns)
"""
PGSYNC_TRIGGERS = """
CREATE UNIQUE INDEX _idx ON public._view (table_name);
CREATE TRIGGER public_listings_pgsync_notify
    AFTER INSERT OR UPDATE OR DELETE ON public.listings_pgsync
    FOR EACH ROW EXECUTE PROCEDURE public.table_notify();
CREATE TRIGGER public_listings_pgsync_truncate
    AFTER TRUNCATE ON public.listings_pgsync
    FOR EACH STATEMENT EXECUTE PROCEDURE public.table_notify();
"""

# (pgbench meta-commands, the statement on table {table})
SCRIPTS = {
    "INSERT": (
        "",
        "INSERT INTO public.{table} (user_id, title) VALUES ('" + USER_ID + "', 'bench')",
    ),
    "UPDATE": (
        "\\set n random(1, 10000)\n",
        "UPDATE public.{table} SET title = 'bench ' || :n || ' ' || random() "
        "WHERE id = (SELECT id FROM public.bench_ids WHERE n = :n)",
    ),
}
# Beside the plain write in one statement: one round trip, like the trigger path.
ENQUEUE_BESIDE = (
    "WITH written AS ({statement} RETURNING 1) "
    "SELECT procqueue.add_job('listing:update', '{{}}'::jsonb, 'sync') FROM written"
)
NARROW_ROW_BESIDE = (
    "WITH written AS ({statement} RETURNING id) "
    "INSERT INTO public.bench_changes SELECT 'listing', id FROM written"
)
NOTIFY_BESIDE = (
    "WITH written AS ({statement} RETURNING id), "
    "noted AS (INSERT INTO public.bench_changes SELECT 'listing', id FROM written RETURNING 1) "
    "SELECT pg_notify('procqueue_bench', 'listing') FROM noted"
)
PGMQ_BESIDE = (
    "WITH written AS ({statement} RETURNING id) "
    "SELECT pgmq.send('" + PGMQ_QUEUE + "', jsonb_build_object('id', id)) FROM written"
)


def pgbench_tps(
    dsn: str,
    script: str,
    seconds: int,
    clients: int = 1,
    transactions: int | None = None,
    rate: float | None = None,
) -> float:
    """pgbench's tps for `script`, run for `seconds` or `transactions` per client, at
    most `rate` transactions per second in all if given."""
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as file:
        file.write(script)
    try:
        length = ["-T", str(seconds)] if transactions is None else ["-t", str(transactions)]
        paced = [] if rate is None else ["-R", str(rate)]
        command = ["pgbench", "-n", "-c", str(clients), "-j", str(clients), *length, *paced]
        run = subprocess.run([*command, "-f", file.name, dsn], capture_output=True, text=True)
    finally:
        Path(file.name).unlink()
    match = re.search(r"tps = ([\d.]+)", run.stdout)
    if run.returncode or not match:
        raise RuntimeError(f"pgbench failed ({run.returncode}):\n{script}\n{run.stderr[-2000:]}")
    return float(match.group(1))


def pgmq_sql() -> tuple[str, str]:
    """pgmq's install SQL and where it came from: the `pgmq` package if importable,
    else its wheel from PyPI (`pip download`). Raises RuntimeError saying why not."""
    try:
        sql_dir = importlib.resources.files("pgmq") / "sql"
        version = (sql_dir / "VERSION").read_text().strip()
        return (sql_dir / "pgmq.sql").read_text(), f"pgmq {version} SQL, installed package"
    except (ModuleNotFoundError, OSError):
        pass
    with tempfile.TemporaryDirectory() as folder:
        download = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
             "--disable-pip-version-check", "-q", "-d", folder, PGMQ_PACKAGE],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        wheels = sorted(Path(folder).glob("*.whl"))
        if download.returncode or not wheels:
            last = (download.stderr.strip().splitlines() or ["no wheel"])[-1]
            raise RuntimeError(f"pip download {PGMQ_PACKAGE} failed: {last}")
        with zipfile.ZipFile(wheels[0]) as wheel:
            try:
                script = wheel.read("pgmq/sql/pgmq.sql").decode()
                version = wheel.read("pgmq/sql/VERSION").decode().strip()
            except KeyError as error:
                raise RuntimeError(f"{wheels[0].name} has no pgmq/sql/pgmq.sql") from error
        return script, f"pgmq {version} SQL from the PyPI wheel {wheels[0].name}"


def install_pgmq(dsn: str) -> str | None:
    """Install pgmq into the schema `pgmq` and create the queue; say where it came
    from, or print why pgmq is left out and return None."""
    try:
        script, source = pgmq_sql()
        with psycopg.connect(dsn) as conn:  # one transaction
            conn.execute(script.encode())
            conn.execute("SELECT pgmq.create(%s)", [PGMQ_QUEUE])
    except (RuntimeError, OSError, subprocess.SubprocessError, psycopg.Error) as error:
        reason = " ".join(str(error).split())
        print(f"pgmq: left out, its SQL from a registry package did not install: {reason}")
        return None
    return source


def set_up(dsn: str) -> None:
    with psycopg.connect(dsn) as conn:
        conn.execute(SETUP)
        for (statement,) in conn.execute(COPY_FOREIGN_KEYS).fetchall():
            conn.execute(statement)
        conn.execute(PGSYNC_FUNCTION)
        keys: dict[str, list[str]] = dict(conn.execute(PGSYNC_KEYS).fetchall())
        primary, foreign = keys.get("PRIMARY KEY", []), keys.get("FOREIGN KEY", [])
        columns = sorted({*LISTING.fields, *primary, *foreign})
        view = sql.SQL(PGSYNC_VIEW).format(
            table=sql.Literal("listings_pgsync"),
            primary_keys=sql.Literal(primary or None),
            foreign_keys=sql.Literal(foreign or None),
            indices=sql.Literal([LISTING.index]),
            columns=sql.Literal(columns),
        )
        conn.execute(view)
        conn.execute(PGSYNC_TRIGGERS)


def parse_clients(text: str) -> list[int]:
    try:
        clients = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from error
    if not clients or min(clients) < 1:
        raise argparse.ArgumentTypeError("give client counts of 1 or more, like 1,8")
    return clients


def variants(with_pgmq: bool) -> dict[str, str]:
    """The statement each variant's pgbench script runs, by name, per operation
    (formatted with the operation's statement on `listings_plain` as {plain})."""
    named = {
        PROCQUEUE: "{listings}",
        PGSYNC: "{listings_pgsync}",
        WITHOUT: "{plain}",
        "plain + add_job()": ENQUEUE_BESIDE.replace("{statement}", "{plain}"),
        "plain + narrow row": NARROW_ROW_BESIDE.replace("{statement}", "{plain}"),
        "plain + narrow row + NOTIFY": NOTIFY_BESIDE.replace("{statement}", "{plain}"),
    }
    if with_pgmq:
        named[PGMQ] = PGMQ_BESIDE.replace("{statement}", "{plain}")
    return named


def script_for(template: str, operation: str) -> str:
    meta, statement = SCRIPTS[operation]
    tables = {name: statement.format(table=name) for name in ("listings", "listings_pgsync")}
    body = template.format(plain=statement.format(table="listings_plain"), **tables)
    return meta + body.rstrip(";") + ";"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=parse_clients, default=[1, 8], help="like 1,8")
    args = parser.parse_args()
    clients_list: list[int] = args.clients
    with environment("trigger_overhead") as env:
        set_up(env.dsn)
        source = install_pgmq(env.dsn)
        if source:
            print(f"pgmq: {source}, installed in one transaction into schema pgmq")
        named = variants(source is not None)
        columns = [(operation, clients) for operation in SCRIPTS for clients in clients_list]
        tps: dict[tuple[str, str, int], list[float]] = {}
        names = list(named)
        for round_number in range(args.rounds):
            shift = round_number % len(names)
            for operation, clients in columns:
                for name in names[shift:] + names[:shift]:
                    script = script_for(named[name], operation)
                    value = pgbench_tps(env.dsn, script, args.seconds, clients)
                    tps.setdefault((name, operation, clients), []).append(value)
    print_table(names, columns, tps, args.rounds, args.seconds, source is not None)


def print_table(
    names: list[str],
    columns: list[tuple[str, int]],
    tps: dict[tuple[str, str, int], list[float]],
    rounds: int,
    seconds: int,
    with_pgmq: bool,
) -> None:
    median = {key: statistics.median(values) for key, values in tps.items()}
    ratio = {key: value / median[(WITHOUT, key[1], key[2])] for key, value in median.items()}
    print(
        f"\nratio = tps ÷ tps {WITHOUT!r}, median of {rounds} rounds of {seconds} s "
        "(tps in brackets)"
    )
    headers = [f"{operation} {clients}c" for operation, clients in columns]
    width = max(len(name) for name in names)
    print(f"{'variant':<{width}} | " + " | ".join(f"{header:>17}" for header in headers))
    print("-" * width + "-+-" + "-+-".join("-" * 17 for _ in headers))
    for name in names:
        cells = [
            f"{ratio[(name, operation, clients)]:5.2f} ({median[(name, operation, clients)]:7.0f})"
            for operation, clients in columns
        ]
        print(f"{name:<{width}} | " + " | ".join(f"{cell:>17}" for cell in cells))
    print(f"\n{PROCQUEUE} ratio per round:")
    for operation, clients in columns:
        rounds_text = " ".join(
            f"{value / without:.2f}"
            for value, without in zip(
                tps[(PROCQUEUE, operation, clients)],
                tps[(WITHOUT, operation, clients)],
                strict=True,
            )
        )
        print(f"  {operation} {clients}c: {rounds_text}")
    print("\ntargets:")
    rivals = [PGSYNC, *([PGMQ] if with_pgmq else [])]
    for operation, clients in columns:
        ours = ratio[(PROCQUEUE, operation, clients)]
        verdicts = []
        if clients in TARGET_AT:
            floor = TARGET_AT[clients]
            verdicts.append(f"{ours:.2f} >= {floor} {'met' if ours >= floor else 'NOT met'}")
        for rival in rivals:
            theirs = ratio[(rival, operation, clients)]
            ahead = "met" if ours > theirs else "NOT met"
            verdicts.append(f"ahead of {rival} ({theirs:.2f}) {ahead}")
        print(f"  {operation} {clients}c: procqueue " + "; ".join(verdicts))


if __name__ == "__main__":
    main()
