"""The quick start's demo runs on whatever servers the machine offers, never touches
a database it did not make (nor one a running demo uses), shows every kind of work
(its sample story's email, push and Cloudinary deletion reach its loopback stand-ins),
and stops every server it started on SIGTERM and SIGHUP as on Ctrl-C."""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from procqueue.demo import (
    CHECK_DATABASE,
    DEMO_DATABASE,
    deliver_story,
    demo_settings,
    own_database,
    parse_args,
    run_worker,
    set_up,
)
from procqueue.local import free_port, scratch_database
from procqueue.loopback.sinks import DELETION, EMAIL, KINDS, PUSH, loopback_sinks

READY = "procqueue demo is running."
#: What the demo prints as its stand-ins receive the sample story's deliveries.
STORY_EMAIL = "  email    to ayse@example.com: İlanınız onaylandı: İlan: Bisiklet 1"
STORY_PUSH = "  push     to demo-phone-ayse: İlanınız onaylandı"
STORY_DELETION = "  Cloudinary deleted image/upload/items/item_1_b"


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
    printed = result.stdout.splitlines()
    assert {STORY_EMAIL, STORY_PUSH, STORY_DELETION} <= set(printed), printed
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
            # Seeded: the story's email and push. Its triggers keep the default grace (the
            # demo did not make the database), so no deletion comes while it runs.
            story = {STORY_EMAIL, STORY_PUSH} if expected == "sample rows seeded" else set()
            assert story <= set(result.stdout.splitlines()), result.stdout
            assert STORY_DELETION not in result.stdout
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


def received(outbox_url: str) -> dict[str, list[dict[str, Any]]]:
    """The stand-ins' outbox page: every email, push and Cloudinary deletion."""
    with urllib.request.urlopen(outbox_url, timeout=10) as response:
        page: dict[str, list[dict[str, Any]]] = json.load(response)
        return page


async def test_the_sample_story_reaches_each_stand_in(admin_dsn: str, es_url: str) -> None:
    """The demo's building blocks, in-process: approving the seed's waiting listing is an
    email the SMTP stand-in accepts and a push the FCM one accepts; replacing an item's
    second photo is a delete the Cloudinary stand-in answers, while the photo the item
    shares with its listing stays; the outbox page lists all three."""
    with loopback_sinks() as sinks, own_database(admin_dsn, unique_name()) as dsn:
        settings = demo_settings(dsn, es_url, sinks, index_prefix=f"s{uuid.uuid4().hex[:8]}_")
        setup = set_up(dsn, sinks)
        assert setup.seeded and setup.expected == {EMAIL, PUSH, DELETION} == set(KINDS)
        assert setup.grace <= 5  # the deletion shows within seconds
        await run_worker(settings, until_idle=True)
        assert await deliver_story(settings, sinks, setup.expected)

        (email,) = sinks.smtp.to("ayse@example.com")
        assert email["Subject"] == "İlanınız onaylandı: İlan: Bisiklet 1"
        (push,) = sinks.fcm.sent_to("demo-phone-ayse")
        assert push.message["data"]["type"] == "LISTING_APPROVED"
        assert push.message["notification"]["title"] == "İlanınız onaylandı"
        photos = ["items/item_1", "items/item_1_b"]
        assert sinks.cloud.deleted_ids(photos) == {"items/item_1_b"}
        assert not sinks.cloud.stored("items/item_1_b")
        assert sinks.cloud.stored("items/item_1")  # the listing shows it too

        page = await asyncio.to_thread(received, sinks.outbox_url)
        assert [entry["subject"] for entry in page["emails"]] == [email["Subject"]]
        assert "İlan: Bisiklet 1" in page["emails"][0]["text"]
        assert [entry["token"] for entry in page["pushes"]] == ["demo-phone-ayse"]
        assert [entry["public_ids"] for entry in page["cloudinary_deletions"]] == [
            ["items/item_1_b"]
        ]


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
        while not (lines and lines[-1].startswith("Ctrl-C stops the demo")):
            line = await asyncio.wait_for(process.stdout.readline(), timeout=60)
            assert line, f"the demo ended before it was ready: {lines}"
            lines.append(line.decode().rstrip())
        assert READY in lines
        # The story was delivered before the demo said it runs, and its page says so.
        assert {STORY_EMAIL, STORY_PUSH, STORY_DELETION} <= set(lines[: lines.index(READY)]), lines
        [outbox] = [line.split("curl -s ")[1].split()[0] for line in lines if "Received:" in line]
        page = await asyncio.to_thread(received, outbox)
        assert [len(page[kind]) for kind in ("emails", "pushes", "cloudinary_deletions")] == [
            1,
            1,
            1,
        ]
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


def test_deliveries_arriving_together_print_whole_lines() -> None:
    """The stand-ins report from their own threads; print() writes a line and its newline
    apart, so two deliveries at once once printed as one mixed line (a flaky demo test)."""

    class Terminal(io.StringIO):
        def write(self, text: str) -> int:
            time.sleep(0)  # a terminal's write lets other threads run, as a pipe's does
            return super().write(text)

    lines = [f"  delivery {n:03}" for n in range(200)]
    terminal = Terminal()
    with loopback_sinks() as sinks:
        sinks.report = lambda line: print(line, file=terminal, flush=True)
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda line: sinks._arrive(EMAIL, line), lines))
    assert sorted(terminal.getvalue().splitlines()) == lines
