"""Shared set-up for the benchmarks: a scratch database with the sample schema
and the queue, and an Elasticsearch-API server (ELASTICSEARCH_URL, else local).

Every benchmark prints ratios measured side by side in the same run, because
this machine is shared and noisy and the ES-API emulator is not Elasticsearch.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import statistics
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from procqueue.features import Settings, load_settings
from procqueue.local import env, local_postgres, local_search, scratch_database
from procqueue.migrate import migrate
from tests.support.cluster import ThrowawayCluster, throwaway_cluster

T = TypeVar("T")

_TICKS = os.sysconf("SC_CLK_TCK")
USER_ID = "00000000-0000-4000-8000-00000000be01"


@dataclass(frozen=True)
class Environment:
    dsn: str
    es_url: str

    def settings(self, **overrides: object) -> Settings:
        values: dict[str, object] = {
            "database_url": self.dsn,
            "elasticsearch_url": self.es_url,
            "index_prefix": f"bench{uuid.uuid4().hex[:6]}_",
        }
        values.update(overrides)
        return load_settings(**values)


@contextlib.contextmanager
def environment(name: str) -> Iterator[Environment]:
    with (
        local_postgres(env("PROCQUEUE_TEST_DATABASE_URL")) as admin,
        scratch_database(admin, f"pq_bench_{name}") as dsn,
        local_search(env("ELASTICSEARCH_URL")) as es_url,
    ):
        migrate(dsn)
        import psycopg

        with psycopg.connect(dsn) as conn:
            conn.execute("INSERT INTO auth.users (id) VALUES (%s)", [USER_ID])
        yield Environment(dsn, es_url)


def _proc_stat(proc: Path) -> list[str]:
    """The fields of /proc/PID/stat after the command name (field 3 onwards)."""
    return (proc / "stat").read_text().rsplit(")", 1)[1].split()


def process_cpu_seconds(cmdline_part: str) -> float | None:
    """CPU time (user + system) used so far by the process whose command line
    contains `cmdline_part` (e.g. the ES-API server sharing this machine's cores)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            if cmdline_part not in cmdline:
                continue
            fields = _proc_stat(proc)
        except OSError:
            continue
        return (int(fields[11]) + int(fields[12])) / _TICKS
    return None


def es_server_marker(es_url: str) -> str:
    """What the command line of the ES-API server this run started on `es_url` holds
    (for process_cpu_seconds; none matches a server given by ELASTICSEARCH_URL)."""
    return f"--elasticsearch-port {urlsplit(es_url).port}"


def tree_cpu_seconds(pid: int) -> float:
    """CPU time used so far by process `pid` and all its descendants, live or reaped
    (a postmaster and its backends, a worker and its threads)."""
    stats: dict[int, list[str]] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                stats[int(proc.name)] = _proc_stat(proc)
    children: dict[int, list[int]] = {}
    for child, fields in stats.items():
        children.setdefault(int(fields[1]), []).append(child)
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        if current not in stats:
            continue
        fields = stats[current]
        # utime, stime, and cutime, cstime: the children it has reaped.
        total += sum(int(value) for value in fields[11:15])
        todo.extend(children.get(current, []))
    return total / _TICKS


def postmaster_pid(dsn: str) -> int:
    """The pid of the server `dsn` reaches (on this machine): its backend's parent."""
    import psycopg

    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None
    return int(_proc_stat(Path(f"/proc/{row[0]}"))[1])


@contextlib.contextmanager
def logical_cluster() -> Iterator[ThrowawayCluster]:
    """A throwaway PostgreSQL cluster of this run's own with `wal_level=logical`
    (what PGSync's replication slot needs), removed afterwards."""
    import psycopg

    with throwaway_cluster() as cluster:
        with psycopg.connect(cluster.dsn, autocommit=True) as conn:
            conn.execute("ALTER SYSTEM SET wal_level = logical")
        cluster.restart(downtime=0)  # wal_level is read at server start only
        yield cluster


@dataclass(frozen=True)
class MachineCpu:
    """The machine's CPU time counters (/proc/stat), busy and idle, in ticks."""

    busy: int
    idle: int

    def busy_share_since(self, earlier: MachineCpu) -> float:
        busy, idle = self.busy - earlier.busy, self.idle - earlier.idle
        return busy / max(1, busy + idle)


def machine_cpu() -> MachineCpu:
    """Every process's CPU time so far: what this shared machine's cores did."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return MachineCpu(busy=sum(fields[:8]) - idle, idle=idle)


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def summary_ms(values: Sequence[float]) -> str:
    parts = [f"p{int(q * 100)} {percentile(values, q) * 1000:.1f} ms" for q in (0.5, 0.95, 0.99)]
    parts.append(f"mean {statistics.fmean(values) * 1000:.1f} ms (n={len(values)})")
    return ", ".join(parts)


async def arrive_at_rate(
    arrivals: asyncio.Queue[T | None], make: Callable[[], T], rng: random.Random,
    rate: float, seconds: float, consumers: int,
) -> None:  # fmt: skip
    """Put `make()` into `arrivals` at `rate` per second on average (exponential gaps)
    for `seconds`, then one None per consumer."""
    deadline = time.monotonic() + seconds
    next_at = time.monotonic()
    while next_at < deadline:
        next_at += rng.expovariate(rate)
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        arrivals.put_nowait(make())
    for _ in range(consumers):
        arrivals.put_nowait(None)
