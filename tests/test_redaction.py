"""Redaction is linear in the length of its text, and a log line is bounded: a
message (Procrastinate's "Starting job" with every arg) is clipped, with a
marker, before it is redacted, and no cut leaves a piece of a credential."""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import psycopg
import pytest

from procqueue.app import build_app
from procqueue.engine.app import ProcqueueApp
from procqueue.entities import LISTING
from procqueue.queue.failures import MAX_MESSAGE, describe, traceback_text
from procqueue.queue.logs import MAX_FIELD, JsonFormatter, RedactingFormatter
from procqueue.redaction import clip, redact
from tests.conftest import make_settings
from tests.support.cloudinary_server import CloudinaryServer
from tests.support.worker import SELLER_ID, drain, indexed_documents

SECRET = "s3cr3t-Pa55w0rd"

#: Texts that made the old URL pattern backtrack: long runs of URL characters,
#: many "scheme://user:" with no "@", many assignments, and image URLs.
HOSTILE: dict[str, Callable[[int], str]] = {
    "run of URL characters": lambda size: "a" * size,
    "userinfo without @": lambda size: "a://b:" * (size // 6),
    "URLs without spaces": lambda size: ",".join(
        ["https://host:8080/" + "p" * 1000] * (size // 1019)
    ),
    "assignments": lambda size: "token= " * (size // 7),
    "image URLs": lambda size: repr(
        ["https://res.cloudinary.com/demo/image/upload/v1/" + "x" * 4000] * (size // 4054)
    ),
}


def cost(text: str) -> float:
    """Seconds one redaction of `text` takes: the best of three runs, each long
    enough (repeated) to be measured."""
    best = float("inf")
    for _ in range(3):
        repeats, started = 0, time.perf_counter()
        while True:
            redact(text, (SECRET,))
            repeats += 1
            elapsed = time.perf_counter() - started
            if elapsed > 0.02:
                break
        best = min(best, elapsed / repeats)
    return best


@pytest.mark.parametrize("shape", HOSTILE)
def test_redacting_1_mb_costs_about_256_times_redacting_4_kb(shape: str) -> None:
    """Doubling the text at most roughly doubles the cost (a quadratic pattern
    quadruples it): the sizes grow from 4 KB to 1 MB and each one must stay
    within 6x of linear growth from the 4 KB baseline measured here (a quadratic
    pattern is 8x over at 32 KB, 256x at 1 MB)."""
    make = HOSTILE[shape]
    base_size = 4096
    baseline = cost(make(base_size))
    size = base_size
    while size < 1024 * 1024:
        size *= 2
        text = make(size)
        ratio = cost(text) / baseline
        growth = len(text) / len(make(base_size))
        assert ratio < 6 * growth, f"{shape}: {len(text)} chars cost {ratio:.0f}x of 4 KB"


def test_redaction_still_removes_every_kind_of_credential() -> None:
    cases = {
        "postgresql://app:hunter2@db:5432/x": "postgresql://app:***@db:5432/x",
        "see https://user:p4ss:w/rd@host/path ok": "see https://user:***@host/path ok",
        "2https://u:p@h": "2https://u:***@h",
        "password=abc&api_key: 'xyz' token=t0k": "password=***&api_key: '***' token=***",
        "no credentials: https://host:8080/a@b": "no credentials: https://host:***@b",
        f"key {SECRET} again{SECRET}": "key *** again***",
    }
    for text, expected in cases.items():
        assert redact(text, (SECRET,)) == expected


CREDENTIALS = (
    f"postgresql://app:{SECRET}@db.example:5432/x",
    f"password={SECRET}",
    f"api_key: '{SECRET}'",
    f"the key is {SECRET} here",
)


@pytest.mark.parametrize("credential", CREDENTIALS)
def test_no_cut_of_a_clipped_text_leaves_a_piece_of_a_secret(credential: str) -> None:
    """Every position of the credential around the head's and the tail's cuts."""
    limit = 400
    for offset in range(-len(credential) - 2, 3):
        for at_head in (True, False):
            where = limit * 3 // 4 if at_head else 2000 - limit // 4
            before = "w " * ((where + offset) // 2) + "w" * ((where + offset) % 2)
            text = before + credential
            text += " x" * ((2000 - len(text)) // 2)
            line = redact(clip(text, limit, (SECRET,)), (SECRET,))
            assert len(line) < limit + 60 and "characters cut]" in line
            pieces = {
                SECRET[i:j] for i in range(len(SECRET)) for j in range(i + 4, len(SECRET) + 1)
            }
            leaked = [piece for piece in pieces if piece in line]
            assert not leaked, f"{credential!r} at {where + offset}: {leaked} in {line!r}"


def test_describe_bounds_an_error_record() -> None:
    try:
        raise ValueError(f"postgresql://app:{SECRET}@db/x " + "v " * 500_000)
    except ValueError as error:
        error_type, message = describe(error, (SECRET,))
        trace = traceback_text(error, (SECRET,))
    assert error_type == "builtins.ValueError"
    assert len(message) < MAX_MESSAGE + 60 and "characters cut]" in message
    assert "postgresql://app:***@db/x" in message and SECRET not in trace
    assert trace.rstrip().endswith("v") and "Traceback" in trace


def starting_job_record(urls: list[str]) -> logging.LogRecord:
    """The record Procrastinate's worker logs before it runs an images:cleanup job."""
    kwargs = {"urls": urls, "entity": "listing"}
    call = f"images:cleanup[7](urls={urls!r}, entity='listing')"
    return logging.makeLogRecord({
        "name": "procrastinate.worker", "levelno": logging.INFO, "levelname": "INFO",
        "msg": f"Starting job {call}", "args": None, "action": "start_job",
        "job": {"id": 7, "task_name": "images:cleanup", "queue": "images",
                "task_kwargs": kwargs, "call_string": call},
    })  # fmt: skip


@pytest.mark.parametrize("formatter", [JsonFormatter, RedactingFormatter])
def test_a_starting_job_line_of_400_urls_of_4_kb_is_clipped_before_redaction(
    formatter: type[JsonFormatter] | type[RedactingFormatter],
) -> None:
    urls = [f"https://evil.example/{n}/" + "u" * 4000 for n in range(400)]
    urls[200] = f"https://app:{SECRET}@db.example/" + "u" * 4000
    record = starting_job_record(urls)
    small = starting_job_record(urls[:1])
    format_ = formatter((SECRET,)).format
    line = format_(record)
    assert len(line) < MAX_MESSAGE + 1000 and "characters cut]" in line
    assert SECRET not in line and "Starting job images:cleanup[7](urls=['https://evil" in line
    assert line.rstrip().endswith("entity='listing')" if formatter is RedactingFormatter else "}")
    # Clipping first makes the 1.6 MB line cost about what a line of one URL costs.
    assert cost_of(lambda: format_(record)) < 20 * cost_of(lambda: format_(small))
    assert record.getMessage().count("https://") == 400  # the record itself is left whole


def cost_of(action: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(10):
            action()
        best = min(best, time.perf_counter() - started)
    return best


def test_json_fields_from_extra_are_bounded_and_redacted() -> None:
    record = logging.makeLogRecord({
        "msg": "done", "task": "x" * 100_000 + f" token={SECRET}", "attempt": 2, "duration": 0.5,
    })  # fmt: skip
    entry = json.loads(JsonFormatter((SECRET,)).format(record))
    assert len(entry["task"]) < MAX_FIELD + 60 and SECRET not in entry["task"]
    assert entry["attempt"] == 2 and entry["duration"] == 0.5


@pytest.fixture(scope="module")
async def app(dsn: str, es_url: str, cloud: CloudinaryServer) -> AsyncIterator[ProcqueueApp]:
    settings = make_settings(
        dsn, es_url, cloudinary_url=cloud.credentials_url(), cloudinary_upload_prefix=cloud.url
    )
    application = build_app(settings)
    async with application.open_async():
        yield application
    await application.services.aclose()


@pytest.fixture
def worker_log() -> Iterator[io.StringIO]:
    """What the worker's loggers write through the text formatter, as `procqueue
    worker` writes it."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(RedactingFormatter((SECRET,)))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


async def test_a_deleted_listing_with_400_urls_of_4_kb_logs_bounded_lines_and_syncs(
    app: ProcqueueApp, db: psycopg.AsyncConnection[Any], worker_log: io.StringIO
) -> None:
    """What `anon` can do: a listing of its own with 400 long image URLs, deleted.
    The cleanup jobs' "Starting job" lines carry every URL; the worker logs them
    clipped and goes on to an unrelated sync."""
    urls = [f"https://evil.example/{n}/" + "u" * 4000 for n in range(400)]
    row = await (
        await db.execute(
            "INSERT INTO listings (user_id, title, additional_image_urls) "
            "VALUES (%s, 'many urls', %s) RETURNING id::text",
            [SELLER_ID, urls],
        )
    ).fetchone()
    assert row is not None
    await drain(app, concurrency=2)
    await db.execute("DELETE FROM listings WHERE id = %s", [row[0]])
    other = await (
        await db.execute(
            "INSERT INTO listings (user_id, title) VALUES (%s, 'unrelated') RETURNING id::text",
            [SELLER_ID],
        )
    ).fetchone()
    assert other is not None
    await drain(app, concurrency=2)
    lines = worker_log.getvalue().splitlines()
    starting = [line for line in lines if "Starting job images:cleanup" in line]
    assert starting and all("characters cut]" in line for line in starting)
    assert max(len(line) for line in lines) < MAX_MESSAGE + 1000
    documents = await indexed_documents(app, LISTING)
    assert other[0] in documents and row[0] not in documents
