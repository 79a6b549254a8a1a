"""Local servers for the demo and the tests, so both run on a bare machine.

- Postgres: the configured one, else the one on 127.0.0.1:5432 if it answers,
  else a throwaway server from the `pgserver` wheel.
- An Elasticsearch-API server: the configured ELASTICSEARCH_URL, else the
  `noida-db` wheel's binary started on a free loopback port (an Elasticsearch 8
  API emulator; never a stand-in for a real cluster's performance).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

DEFAULT_LOCAL_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def postgres_answers(dsn: str) -> bool:
    try:
        with psycopg.connect(dsn, connect_timeout=3):
            return True
    except psycopg.Error:
        return False


@contextlib.contextmanager
def local_postgres(preferred: str | None = None) -> Iterator[str]:
    """Yield an admin DSN: `preferred`, the machine's server, or a throwaway one."""
    for dsn in (preferred, DEFAULT_LOCAL_DSN):
        if dsn and postgres_answers(dsn):
            yield dsn
            return
    try:
        import pgserver
    except ImportError as missing:
        raise RuntimeError(
            "no Postgres answers on 127.0.0.1:5432 and the pgserver wheel is not installed: "
            "pip install 'procqueue[local]' or set DATABASE_URL"
        ) from missing
    data_dir = tempfile.mkdtemp(prefix="procqueue-pg-")
    server = pgserver.get_server(  # type: ignore[attr-defined]
        data_dir, cleanup_mode="stop"
    )
    try:
        yield server.get_uri()
    finally:
        server.cleanup()
        shutil.rmtree(data_dir, ignore_errors=True)


def _noida_binary() -> Path:
    try:
        import noida_db
    except ImportError as missing:
        raise RuntimeError(
            "no ELASTICSEARCH_URL is set and the noida-db wheel is not installed: "
            "pip install 'procqueue[local]' or point ELASTICSEARCH_URL at a cluster"
        ) from missing
    return Path(noida_db.__file__).parent / "noida-db"


@dataclass
class LocalSearchServer:
    """The noida-db ES-API server as a child process we can stop and start."""

    port: int = field(default_factory=free_port)
    data_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="procqueue-es-")))
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> None:
        command = [
            str(_noida_binary()), "start", "--only", "elasticsearch", "--host", "127.0.0.1",
            "--elasticsearch-port", str(self.port), "--data-dir", str(self.data_dir),
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the ES-API server exited at start ({self.process.returncode})")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(self.url, timeout=1):
                    return
            time.sleep(0.05)
        raise RuntimeError(f"the ES-API server did not answer on {self.url} in {timeout:g} s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)


@contextlib.contextmanager
def local_search(preferred: str | None = None) -> Iterator[str]:
    """Yield an Elasticsearch URL: `preferred`, or a local ES-API server."""
    if preferred:
        yield preferred
        return
    server = LocalSearchServer()
    server.start()
    try:
        yield server.url
    finally:
        server.remove()


def env(name: str) -> str | None:
    return os.environ.get(name) or None


def database_dsn(admin_dsn: str, name: str) -> str:
    """The DSN of database `name` on the server of `admin_dsn`."""
    params = psycopg.conninfo.conninfo_to_dict(admin_dsn)
    params["dbname"] = name
    return psycopg.conninfo.make_conninfo("", **{k: v for k, v in params.items() if v is not None})


def install_sample_schema(dsn: str) -> None:
    from procqueue import resources

    with psycopg.connect(dsn) as conn:
        conn.execute(resources.sample_schema().read_text(encoding="utf-8"))


@contextlib.contextmanager
def scratch_database(admin_dsn: str, name: str, *, keep: bool = False) -> Iterator[str]:
    """A new database with the sample schema, dropped afterwards unless `keep`."""
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    dsn = database_dsn(admin_dsn, name)
    install_sample_schema(dsn)
    try:
        yield dsn
    finally:
        if not keep:
            with psycopg.connect(admin_dsn, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
