"""The `procqueue` command behaves like a Unix tool (issue 24): data on stdout (with
`--json`, one JSON document and nothing else), errors and refusals as one line on
stderr with a non-zero exit, progress bars only on a terminal and never with
`--quiet`, a mistyped PROCQUEUE_* variable named in a warning. Each test runs the real
command as a child process (tests/support/cli.py) against the module's database and
the ES-API server."""

from __future__ import annotations

import fcntl
import json
import os
import struct
import subprocess
import sys
import termios
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from elasticsearch import Elasticsearch
from prometheus_client.parser import text_string_to_metric_families

from procqueue.local import database_dsn, free_port
from tests.support.cli import run, the_error_line
from tests.support.worker import SELLER_ID

LISTINGS = 30


@pytest.fixture(scope="module")
def env(database: str, es_url: str) -> dict[str, str]:
    """The command's environment: the module's database (with LISTINGS listings and no
    inventory items) and an index prefix of its own."""
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute("INSERT INTO auth.users (id) VALUES (%s)", [SELLER_ID])
        conn.execute(
            "INSERT INTO listings (user_id, title) SELECT %s, 'cli ' || g "
            "FROM generate_series(1, %s) AS g",
            [SELLER_ID, LISTINGS],
        )
    return {
        "DATABASE_URL": database,
        "ELASTICSEARCH_URL": es_url,
        "PROCQUEUE_INDEX_PREFIX": f"c{uuid.uuid4().hex[:8]}_",
    }


def refused_env() -> dict[str, str]:
    return {"DATABASE_URL": f"postgresql://nobody:pw@127.0.0.1:{free_port()}/postgres"}


# stdout is data ---------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ["failed", "--json"],
        ["health", "--json"],
        ["verify", "listings", "--json"],
        ["reindex", "listings", "--json"],
        ["images", "orphans", "--json"],
    ],
    ids=" ".join,
)
def test_json_is_the_whole_stdout(env: dict[str, str], tmp_path: Path, command: list[str]) -> None:
    result = run(tmp_path, *command, env=env)
    assert "Traceback" not in result.stderr, result.stderr
    json.loads(result.stdout)  # nothing before or after the document
    # health: its verdict (no worker runs: unhealthy); verify: drift or not.
    assert result.returncode in {"health": (2,), "verify": (0, 1)}.get(command[0], (0,)), result


def test_verify_and_reindex_json_records(env: dict[str, str], tmp_path: Path) -> None:
    [copied] = json.loads(run(tmp_path, "reindex", "listings", "--json", env=env).stdout)
    alias = f"{env['PROCQUEUE_INDEX_PREFIX']}listings"
    assert copied["entity"] == "listings" and copied["alias"] == alias
    assert copied["copied"] >= LISTINGS and copied["index"].startswith(f"{alias}_v")
    result = run(tmp_path, "verify", "--json", env=env)
    assert result.returncode == 0, result.stderr
    by_entity = {record["entity"]: record for record in json.loads(result.stdout)}
    assert by_entity["listings"]["checked_rows"] >= LISTINGS
    assert by_entity["listings"]["drifted"] is False and by_entity["listings"]["missing"] == []
    assert by_entity["inventory_items"]["checked_rows"] == 0


# errors and refusals are one line on stderr -----------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ["failed", "--json"],
        ["verify", "--json"],
        ["reindex", "--json"],
        ["images", "orphans", "--json"],
        ["retry", "--all-failed"],
        ["cancel", "1"],
    ],
    ids=" ".join,
)
def test_an_error_is_one_stderr_line_and_no_stdout(tmp_path: Path, command: list[str]) -> None:
    result = run(tmp_path, *command, env=refused_env())
    assert result.returncode == 2, result
    assert "cannot connect to the database" in the_error_line(result)
    assert result.stdout == ""


def test_health_json_is_its_verdict_even_without_a_database(tmp_path: Path) -> None:
    """A probe's answer is data: `health --json` prints the unhealthy verdict, exit 2."""
    result = run(tmp_path, "health", "--json", env=refused_env())
    assert result.returncode == 2, result
    verdict = json.loads(result.stdout)
    assert verdict["status"] == "unhealthy" and "cannot reach the database" in verdict["reasons"][0]


@pytest.mark.parametrize("command", [["retry", "999999999"], ["cancel", "999999999"]], ids=" ".join)
def test_a_refusal_is_one_stderr_line_and_exit_1(
    env: dict[str, str], tmp_path: Path, command: list[str]
) -> None:
    result = run(tmp_path, *command, env=env)
    assert result.returncode == 1, result
    assert the_error_line(result).startswith("procqueue: job 999999999 does not exist")
    assert result.stdout == ""


def test_an_unknown_entity_error_names_what_help_offers(
    env: dict[str, str], tmp_path: Path
) -> None:
    choices = "inventory_items, listings or all"
    for command in ("verify", "reindex"):
        assert choices in " ".join(run(tmp_path, command, "--help", env=env).stdout.split())
        result = run(tmp_path, command, "listing_typo", env=env)
        assert result.returncode == 2, result
        assert the_error_line(result) == (
            f"procqueue: error: unknown entity 'listing_typo': choose {choices}"
        )


# progress bars: only on a terminal --------------------------------------------


def on_a_terminal(tmp_path: Path, *command: str, env: dict[str, str]) -> tuple[int, str, str]:
    """Run the command with its stderr on a pseudo-terminal (80 columns); (exit code,
    stdout, what the terminal received)."""
    controller, terminal = os.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    try:
        result = run(tmp_path, *command, env=env, stderr=terminal)
    finally:
        os.close(terminal)
    received = b""
    try:
        while chunk := os.read(controller, 65536):
            received += chunk
    except OSError:  # EIO: every writer of the terminal is gone and it is read out
        pass
    finally:
        os.close(controller)
    return result.returncode, result.stdout, received.decode(errors="replace")


def test_verify_draws_a_progress_bar_only_on_a_terminal(
    env: dict[str, str], tmp_path: Path
) -> None:
    code, stdout, terminal = on_a_terminal(tmp_path, "verify", "listings", env=env)
    assert code in (0, 1) and "public.listings:" in stdout
    assert "verify public.listings:" in terminal and "rows/s" in terminal, terminal

    piped = run(tmp_path, "verify", "listings", env=env)
    assert "verify public.listings:" not in piped.stderr and "\r" not in piped.stderr
    assert "public.listings:" in piped.stdout


@pytest.mark.parametrize("quiet", [["-q", "reindex"], ["reindex", "--quiet"]], ids=" ".join)
def test_quiet_draws_no_progress_bar_on_a_terminal(
    env: dict[str, str], tmp_path: Path, quiet: list[str]
) -> None:
    code, stdout, terminal = on_a_terminal(tmp_path, *quiet, "listings", env=env)
    assert code == 0 and "rows in" in stdout
    assert "reindex public.listings" not in terminal and "rows/s" not in terminal, terminal


# settings ----------------------------------------------------------------------


def test_an_unknown_procqueue_variable_is_named_once_with_the_closest_setting(
    env: dict[str, str], tmp_path: Path
) -> None:
    value = f"v{uuid.uuid4().hex}"
    (tmp_path / ".env").write_text(f"PROCQUEUE_SMTP_PASWORD={value}-dotenv\n")
    typo = {**env, "PROCQUEUE_CONCURENCY": value, "PROCQUEUE_TEST_DATABASE_URL": value}
    for command in (["failed", "--json"], ["migrate", "--from-scratch"]):
        result = run(tmp_path, *command, env=typo)
        assert result.returncode == 0, result.stderr
        warnings = [line for line in result.stderr.splitlines() if "WARNING" in line]
        assert len(warnings) == 2, result.stderr
        assert warnings[0].endswith(
            "PROCQUEUE_CONCURENCY is not a procqueue setting and is ignored: "
            "did you mean PROCQUEUE_CONCURRENCY?"
        )
        assert warnings[1].endswith("did you mean PROCQUEUE_SMTP_PASSWORD?")
        assert value not in result.stderr + result.stdout
    quiet = run(tmp_path, "failed", "--json", env=env | {"PROCQUEUE_CONCURRENCY": "5"})
    assert "PROCQUEUE_SMTP_PASWORD" in quiet.stderr and "CONCURRENCY" not in quiet.stderr


# migrate and verify on empty tables --------------------------------------------


def test_migrate_puts_an_index_behind_each_alias_so_verify_finds_nothing_to_fix(
    env: dict[str, str], es_url: str, tmp_path: Path
) -> None:
    fresh = {**env, "PROCQUEUE_INDEX_PREFIX": f"m{uuid.uuid4().hex[:8]}_"}
    # No index yet, no row: nothing to fix (not "every row is missing").
    before = run(tmp_path, "verify", "inventory_items", env=fresh)
    assert before.returncode == 0, before.stdout + before.stderr
    assert "missing" not in before.stdout.replace("0 missing", "")

    migrated = run(tmp_path, "migrate", env=fresh)
    assert migrated.returncode == 0, migrated.stderr
    alias = f"{fresh['PROCQUEUE_INDEX_PREFIX']}inventory_items"
    assert alias in migrated.stdout
    client = Elasticsearch(es_url)
    try:
        assert client.indices.exists_alias(name=alias)
        assert client.search(index=alias)["hits"]["hits"] == []  # searchable, not a 404
    finally:
        client.close()
    again = run(tmp_path, "migrate", env=fresh)  # an alias that exists is left alone
    assert again.returncode == 0 and "created the search indexes" not in again.stdout
    after = run(tmp_path, "verify", "inventory_items", "--json", env=fresh)
    assert after.returncode == 0, after.stderr
    [record] = json.loads(after.stdout)
    assert record["index_missing"] is False and record["drifted"] is False


def test_migrate_with_elasticsearch_down_warns_and_succeeds(
    env: dict[str, str], tmp_path: Path
) -> None:
    down = {**env, "ELASTICSEARCH_URL": f"http://127.0.0.1:{free_port()}"}
    result = run(tmp_path, "migrate", env=down)
    assert result.returncode == 0, result.stderr
    line = the_error_line(result)
    assert line.startswith("procqueue: warning: the search indexes were not created"), line
    assert "procqueue reindex" in line


@pytest.fixture
def empty_database(admin_dsn: str) -> Iterator[str]:
    name = f"pq_cli_empty_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield database_dsn(admin_dsn, name)
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_from_scratch_with_the_sample_schema_applies_on_an_empty_database(
    empty_database: str, tmp_path: Path
) -> None:
    script = run(tmp_path, "migrate", "--from-scratch", "--sample-schema", env={})
    assert script.returncode == 0, script.stderr
    assert script.stdout.index("CREATE TABLE") < script.stdout.index("procrastinate_jobs")
    with psycopg.connect(empty_database, autocommit=True) as conn:
        conn.execute(script.stdout.encode())
        conn.execute("INSERT INTO auth.users (id) VALUES (%s)", [SELLER_ID])
        conn.execute("INSERT INTO listings (user_id, title) VALUES (%s, 'scratch')", [SELLER_ID])
        jobs = conn.execute(
            "SELECT count(*) FROM procrastinate.procrastinate_jobs WHERE task_name LIKE 'listing:%'"
        ).fetchone()
    assert jobs is not None and jobs[0] >= 1


# metrics ----------------------------------------------------------------------


def test_metrics_exports_no_worker_family_without_samples(
    env: dict[str, str], tmp_path: Path
) -> None:
    """A real scrape of `procqueue metrics`: it runs no job, so the worker families (job
    counters and durations, circuit gauges) have no series and are not printed at all;
    the queue gauges from the health SQL are."""
    port = free_port()
    argv = [sys.executable, "-m", "procqueue.cli", "metrics", "--port", str(port)]
    server = subprocess.Popen(
        argv, env={"PATH": os.environ.get("PATH", ""), **env}, cwd=tmp_path,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        assert "serving" in server.stdout.readline()  # printed just before it listens
        text = scrape(f"http://127.0.0.1:{port}/metrics")
    finally:
        server.terminate()
        server.communicate(timeout=30)
    names = {family.name for family in text_string_to_metric_families(text)}
    assert {"procqueue_workers", "procqueue_queue_jobs", "procqueue_health_up"} <= names
    for worker_family in ("procqueue_jobs", "procqueue_job_duration_seconds",
                          "procqueue_sink_circuit_open"):  # fmt: skip
        assert worker_family not in names
        assert f"# HELP {worker_family}" not in text and f"# TYPE {worker_family}" not in text


def scrape(url: str) -> str:
    """GET `url`, waiting for the server to accept connections (it starts listening
    right after it says so)."""
    deadline = time.monotonic() + 20
    while True:
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return str(response.read().decode())
        except urllib.error.URLError as error:
            if not isinstance(error.reason, ConnectionRefusedError):
                raise
            assert time.monotonic() < deadline, f"{url} never answered"
            time.sleep(0.02)


def test_the_cli_starts_without_the_feature_slices_or_the_web_stack() -> None:
    """A command that needs only the settings (`reindex`, `health`, `verify`) does not
    pay for importing every slice's tasks and clients, nor the dashboard's web stack:
    those are imported by the commands that run them. (A third of a 20,000-row
    `procqueue reindex` was the CLI's start.)"""
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, procqueue.cli; print('\\n'.join(sys.modules))"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    for module in (
        "procqueue.notifications.feature", "procqueue.images.feature", "procqueue.dashboard.app",
        "uvicorn", "jinja2", "cloudinary",
    ):  # fmt: skip
        assert module not in loaded
