"""The quick start's demo runs on whatever servers the machine offers, never touches
a database it did not make (nor one a running demo uses), and stops every server it
started on SIGTERM and SIGHUP as on Ctrl-C."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from procqueue.demo import CHECK_DATABASE, DEMO_DATABASE, own_database, parse_args
from procqueue.local import free_port, scratch_database

READY = "procqueue demo is running."


def demo_env(**extra: str) -> dict[str, str]:
    environment = {
        key: value
        for key, value in os.environ.items()
        if key not in ("DATABASE_URL", "ELASTICSEARCH_URL") and not key.startswith("PROCQUEUE_")
    }
    return {**environment, "PROCQUEUE_INDEX_PREFIX": f"demo{uuid.uuid4().hex[:6]}_", **extra}


def demo(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "procqueue.demo", *args],
        capture_output=True, text=True, timeout=120, env=demo_env(**extra),
    )  # fmt: skip


def database_exists(admin_dsn: str, name: str) -> bool:
    with psycopg.connect(admin_dsn) as admin:
        row = admin.execute("SELECT count(*) FROM pg_database WHERE datname = %s", [name])
        return row.fetchone() == (1,)


def unique_name() -> str:
    return f"pq_demo_{uuid.uuid4().hex[:8]}"


def test_demo_check_indexes_the_seed_in_a_database_of_its_own(admin_dsn: str, es_url: str) -> None:
    name = unique_name()
    result = demo("--check", "--server", admin_dsn, "--database", name, ELASTICSEARCH_URL=es_url)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "indexed: {'inventory_items': 20, 'listings': 20}" in result.stdout
    assert len(result.stderr.splitlines()) <= 3, result.stderr  # start-up stays short
    assert not database_exists(admin_dsn, name)


def test_check_has_a_database_name_of_its_own() -> None:
    assert parse_args([]).database == DEMO_DATABASE
    assert parse_args(["--check"]).database == CHECK_DATABASE != DEMO_DATABASE


def test_demo_never_seeds_or_drops_a_database_it_did_not_make(admin_dsn: str, es_url: str) -> None:
    name = unique_name()
    with scratch_database(admin_dsn, name) as dsn:
        # DATABASE_URL exported for the real project: refused, nothing written.
        result = demo("--check", DATABASE_URL=dsn, ELASTICSEARCH_URL=es_url)
        assert result.returncode == 2
        [line] = result.stderr.splitlines()
        assert line.startswith(f"procqueue-demo: error: DATABASE_URL names database {name} ")
        assert "pass --use-existing" in line
        # Its name given to the demo to make: refused, left as it is.
        result = demo("--check", "--server", admin_dsn, "--database", name)
        assert result.returncode == 2
        assert result.stderr.splitlines() == [
            f"procqueue-demo: error: database {name} exists and the demo did not make it, so "
            "the demo leaves it alone: pass --database <another name>"
        ]
        with psycopg.connect(dsn) as conn:
            assert conn.execute("SELECT count(*) FROM listings").fetchone() == (0,)
            schema = conn.execute("SELECT to_regnamespace('procrastinate')").fetchone()
            assert schema == (None,)


def test_use_existing_seeds_an_empty_database_once_and_keeps_it(
    admin_dsn: str, es_url: str
) -> None:
    with scratch_database(admin_dsn, unique_name()) as dsn:
        for expected in ("sample rows seeded", "the sample tables had rows: not seeded"):
            # Each run on a new ES-API server of its own, as without ELASTICSEARCH_URL.
            result = demo(
                "--check", "--use-existing", DATABASE_URL=dsn,
                ELASTICSEARCH_URL=es_url, PROCQUEUE_INDEX_PREFIX=f"u{uuid.uuid4().hex[:8]}_",
            )  # fmt: skip
            assert result.returncode == 0, result.stderr[-2000:]
            assert expected in result.stderr
            assert "indexed: {'inventory_items': 20, 'listings': 20}" in result.stdout
        with psycopg.connect(dsn) as conn:
            assert conn.execute("SELECT count(*) FROM listings").fetchone() == (20,)


def test_check_leaves_a_running_demo_alone(admin_dsn: str) -> None:
    name = unique_name()
    with own_database(admin_dsn, name) as dsn, psycopg.connect(dsn) as running:
        result = demo("--check", "--server", admin_dsn, "--database", name)
        assert result.returncode == 2
        assert result.stderr.splitlines() == [
            f"procqueue-demo: error: database {name} is in use (1 session(s)): another demo "
            "runs on it; stop that one first, or pass --database <another name>"
        ]
        assert running.execute("SELECT 1").fetchone() == (1,)
    assert not database_exists(admin_dsn, name)


def descendants(pid: int) -> set[int]:
    """Every process below `pid`, from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def alive(pids: set[int]) -> list[int]:
    return [pid for pid in pids if Path(f"/proc/{pid}").exists()]


def answers(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def demo_name(admin_dsn: str) -> Iterator[str]:
    name = unique_name()
    yield name
    assert not database_exists(admin_dsn, name), "the demo left its database behind"


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGHUP])
async def test_a_signal_stops_the_demo_and_every_server_it_started(
    admin_dsn: str, demo_name: str, stop: signal.Signals
) -> None:
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "procqueue.demo", "--server", admin_dsn, "--database", demo_name,
        "--dashboard-port", str(port),
        env=demo_env(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        lines: list[str] = []
        while READY not in lines:
            line = await asyncio.wait_for(process.stdout.readline(), timeout=60)
            assert line, f"the demo ended before it was ready: {lines}"
            lines.append(line.decode().strip())
        servers = descendants(process.pid)
        assert servers, "the demo started no ES-API server of its own"
        assert answers(port)
        process.send_signal(stop)
        assert await asyncio.wait_for(process.wait(), timeout=30) == 0
        assert process.stderr is not None
        logged = (await process.stderr.read()).decode().splitlines()
        assert len(logged) <= 4, logged  # start-up and shutdown: a few lines, not one per job
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert not alive(servers)
    assert not answers(port)
