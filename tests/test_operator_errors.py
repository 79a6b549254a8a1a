"""Every mistake an operator makes gets one line saying what is wrong and what to
do, and a non-zero exit (issue 13): an unmigrated database, missing or malformed
settings, a wrong password, bad command-line arguments. Each test runs the real
`procqueue` (or `procrastinate`) command as a child process against a real
database, in an empty directory (no `.env`)."""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from procqueue.local import database_dsn, free_port
from tests.support.cli import PROCRASTINATE, run, the_error_line
from tests.support.cluster import throwaway_cluster
from tests.support.supabase import supabase_database
from tests.support.worker import SELLER_ID

RUN_MIGRATE = "run `procqueue migrate`"


@pytest.fixture(scope="module")
def unmigrated(admin_dsn: str) -> Iterator[str]:
    """A Supabase-like database with the sample tables and no queue."""
    with supabase_database(admin_dsn, f"pq_operator_bare_{uuid.uuid4().hex[:6]}") as dsn:
        yield dsn


# A database where `procqueue migrate` never ran ------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ["health"],
        ["health", "--json"],
        ["failed"],
        ["retry", "1"],
        ["retry", "--all-failed"],
        ["cancel", "1"],
        ["images", "orphans"],
        ["verify"],
        ["worker"],
    ],
    ids=" ".join,
)
def test_an_unmigrated_database_says_run_migrate(
    unmigrated: str, es_url: str, tmp_path: Path, command: list[str]
) -> None:
    env = {"DATABASE_URL": unmigrated, "ELASTICSEARCH_URL": es_url}
    result = run(tmp_path, *command, env=env)
    assert result.returncode == 2, result
    line = the_error_line(result)
    assert line.startswith("procqueue: error: ") and RUN_MIGRATE in line, line


# Settings ------------------------------------------------------------------


def test_procrastinates_worker_without_database_url_is_one_line(tmp_path: Path) -> None:
    result = run(tmp_path, PROCRASTINATE, "--app=procqueue.app.app", "worker", env={})
    assert result.returncode == 2, result
    assert the_error_line(result) == (
        "procqueue: error: setting DATABASE_URL is missing: set it in the environment or in .env"
    )


def test_a_malformed_sentry_dsn_is_one_line_without_the_key(database: str, tmp_path: Path) -> None:
    key = "0123456789abcdef0123456789abcdef"
    for dsn in ("not-a-dsn", f"htps://{key}@o1.ingest.sentry.io/42", f"https://{key}@sentry.io/"):
        result = run(tmp_path, "failed", env={"DATABASE_URL": database, "SENTRY_DSN": dsn})
        assert result.returncode == 2, result
        line = the_error_line(result)
        assert line.startswith("procqueue: error: setting SENTRY_DSN is invalid: "), line
        assert "https://<key>@<host>/<project>" in line, line
        assert key not in result.stderr + result.stdout


@pytest.mark.parametrize(("heartbeat", "stalled"), [("30", "30"), ("60", "30")])
def test_a_heartbeat_not_shorter_than_the_stalled_timeout_is_refused(
    database: str, tmp_path: Path, heartbeat: str, stalled: str
) -> None:
    env = {
        "DATABASE_URL": database,
        "PROCQUEUE_HEARTBEAT_INTERVAL": heartbeat,
        "PROCQUEUE_STALLED_TIMEOUT": stalled,
    }
    for command in (["failed"], ["worker"]):
        result = run(tmp_path, *command, env=env)
        assert result.returncode == 2, result
        line = the_error_line(result)
        assert "PROCQUEUE_HEARTBEAT_INTERVAL" in line and "PROCQUEUE_STALLED_TIMEOUT" in line
        assert f"({heartbeat} s)" in line and f"({stalled} s)" in line, line


# A database that does not let us in ----------------------------------------


@contextlib.contextmanager
def password_cluster(role: str, password: str) -> Iterator[str]:
    """A throwaway cluster where `role` must give its password (scram-sha-256 from
    127.0.0.1); yields the DSN of `role` without a password."""
    with throwaway_cluster() as cluster:
        with psycopg.connect(cluster.dsn, autocommit=True) as admin:
            admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
            hba = cluster.data_dir / "pg_hba.conf"
            rule = f"host all {role} 127.0.0.1/32 scram-sha-256\n"
            hba.write_text(rule + hba.read_text())
            admin.execute("SELECT pg_reload_conf()")
        params = {k: v for k, v in conninfo_to_dict(cluster.dsn).items() if v is not None}
        dsn = make_conninfo("", **{**params, "user": role})
        deadline = time.monotonic() + 10
        while True:  # the postmaster rereads pg_hba.conf on the signal: wait for it
            try:
                psycopg.connect(dsn, password="wrong").close()
            except psycopg.OperationalError:
                break
            assert time.monotonic() < deadline, "pg_hba.conf was not reloaded"
            time.sleep(0.05)
        yield dsn


def test_a_wrong_password_fails_fast_with_one_line(tmp_path: Path) -> None:
    secret = "not-the-Passw0rd"
    with password_cluster("pq_operator", "the-right-one") as dsn:
        wrong = make_conninfo(dsn, password=secret)
        url = (
            f"postgresql://pq_operator:{secret}@127.0.0.1:{conninfo_to_dict(dsn)['port']}/postgres"
        )
        for command, database_url in (
            (["worker"], url),
            ([PROCRASTINATE, "--app=procqueue.app.app", "worker"], wrong),
        ):
            started = time.monotonic()
            result = run(tmp_path, *command, env={"DATABASE_URL": database_url})
            took = time.monotonic() - started
            # Procrastinate's own command exits 1 on any error.
            assert result.returncode == (1 if command[0] == PROCRASTINATE else 2), result
            line = the_error_line(result)
            assert "password authentication failed" in line, line
            assert "DATABASE_URL" in line and "pq_operator@127.0.0.1" in line, line
            assert "check the user name and password" in line, line
            assert secret not in result.stderr + result.stdout
            assert took < 10, f"{command} took {took:.1f} s to fail"


@pytest.mark.parametrize(
    "command", [["worker"], ["verify"], ["images", "orphans"], ["failed"]], ids=" ".join
)
def test_refused_and_missing_databases_are_one_line(
    admin_dsn: str, tmp_path: Path, command: list[str]
) -> None:
    refused = f"postgresql://nobody:pw@127.0.0.1:{free_port()}/postgres"
    missing = database_dsn(admin_dsn, f"pq_no_such_{uuid.uuid4().hex[:6]}")
    for database_url, advice in (
        (refused, "check the host and port"),
        (missing, "check the database name"),
    ):
        result = run(tmp_path, *command, env={"DATABASE_URL": database_url})
        assert result.returncode == 2, result
        line = the_error_line(result)
        assert "cannot connect to the database" in line and "DATABASE_URL" in line, line
        assert advice in line, line
        assert ":pw@" not in line


# Command-line arguments ----------------------------------------------------


@pytest.mark.parametrize(
    ("command", "wrong"),
    [
        (["worker", "--concurrency", "0"], "--concurrency"),
        (["worker", "--concurrency", "-3"], "--concurrency"),
        (["worker", "--concurrency", "many"], "--concurrency"),
        (["failed", "--limit", "-1"], "--limit"),
        (["health", "--window", "-5"], "--window"),
        (["health", "--window", "0"], "--window"),
        (["verify", "--batch-size", "0"], "--batch-size"),
        (["nonsense"], "nonsense"),
        # Past what Postgres can hold: a job id beyond bigint, a window before year 1.
        (["retry", "99999999999999999999"], "job_id"),
        (["cancel", "99999999999999999999"], "job_id"),
        (["health", "--window", "1e308"], "--window"),
        (["health", "--window", "1e12"], "--window"),
        (["health", "--json", "--window", "nan"], "--window"),
    ],
)
def test_bad_arguments_are_one_usage_line_and_exit_2(
    database: str, tmp_path: Path, command: list[str], wrong: str
) -> None:
    result = run(tmp_path, *command, env={"DATABASE_URL": database})
    assert result.returncode == 2, result
    line = the_error_line(result)
    assert "error: argument" in line or "invalid choice" in line, line
    assert wrong in line and "--help" in line, line
    assert result.stdout == ""


@pytest.mark.parametrize("command", [["health", "--json"], ["failed", "--traceback"]])
def test_a_closed_pipe_ends_the_command_quietly(
    database: str, tmp_path: Path, command: list[str]
) -> None:
    """As `procqueue health --json | head -c 10`: the reader is gone (here before the
    first write, so the write fails for sure)."""
    reader, writer = os.pipe()
    os.close(reader)
    try:
        result = run(tmp_path, *command, env={"DATABASE_URL": database}, stdout=writer)
    finally:
        os.close(writer)
    assert result.stderr == ""
    assert result.returncode == 141  # 128 + SIGPIPE, what a shell shows for `yes | head`


def test_verbose_works_after_the_sub_command(database: str, tmp_path: Path) -> None:
    for command in (["health", "--json", "-v"], ["images", "orphans", "-v"]):
        result = run(tmp_path, *command, env={"DATABASE_URL": database})
        assert "unrecognized arguments" not in result.stderr, result.stderr
        assert " DEBUG " in result.stderr, result.stderr
    quiet = run(tmp_path, "health", "--json", env={"DATABASE_URL": database})
    assert " DEBUG " not in quiet.stderr
    json.loads(quiet.stdout)


def test_worker_one_shot_runs_the_waiting_jobs_then_exits(
    database: str, es_url: str, tmp_path: Path
) -> None:
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO auth.users (id, email) VALUES (%s, 'seller@example.com') "
            "ON CONFLICT DO NOTHING",
            [SELLER_ID],
        )
        conn.execute("INSERT INTO listings (user_id, title) VALUES (%s, 'one shot')", [SELLER_ID])
        row = conn.execute(
            "SELECT max(id) FROM procrastinate.procrastinate_jobs "
            "WHERE task_name = 'listing:drain'"
        ).fetchone()
        assert row is not None and row[0] is not None
        job_id = row[0]
    env = {
        "DATABASE_URL": database,
        "ELASTICSEARCH_URL": es_url,
        "PROCQUEUE_INDEX_PREFIX": f"t{uuid.uuid4().hex[:8]}_",
        "PROCQUEUE_MAINTENANCE_TASKS": "false",
    }
    result = run(tmp_path, "worker", "--one-shot", env=env)
    assert result.returncode == 0, result.stderr
    with psycopg.connect(database) as conn:
        # a drain job that succeeds at once leaves for the log (migration 0026)
        logged = conn.execute(
            "SELECT task_name FROM procqueue.finished_attempts WHERE job_id = %s", [job_id]
        ).fetchone()
    assert logged == ("listing:drain",)


# Image orphans without Cloudinary credentials -------------------------------


def test_image_orphans_need_no_cloudinary_settings(database: str, tmp_path: Path) -> None:
    public_id = f"listings/t{uuid.uuid4().hex[:8]}/gone"
    image = f"https://res.cloudinary.com/demo/image/upload/v1712345678/{public_id}.jpg"
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO auth.users (id, email) VALUES (%s, 'seller@example.com') "
            "ON CONFLICT DO NOTHING",
            [SELLER_ID],
        )
        row = conn.execute(
            "INSERT INTO listings (user_id, title, main_image_url) VALUES (%s, 'with image', %s) "
            "RETURNING id",
            [SELLER_ID, image],
        ).fetchone()
        assert row is not None
        conn.execute("UPDATE listings SET main_image_url = NULL WHERE id = %s", [row[0]])
    result = run(tmp_path, "images", "orphans", "--json", env={"DATABASE_URL": database})
    assert result.returncode == 0, result.stderr
    [orphan] = [row for row in json.loads(result.stdout) if row["public_id"] == public_id]
    assert orphan == {
        "cloud": "demo", "resource_type": "image", "type": "upload", "public_id": public_id,
        "job_id": orphan["job_id"], "job_status": "todo",
    }  # fmt: skip
    assert "CLOUDINARY_CLOUD_NAME" in the_error_line(result)
