"""A transaction pooler in front of the test server: Debian's `pgbouncer` in
`pool_mode = transaction`, as Supabase's port 6543 (Supavisor) behaves.

The session fixture `pgbouncer` starts its own pgbouncer process on a free loopback
port (own ini, log and pid file in a temporary directory) and stops it at the end.
Its pools are small (`default_pool_size = 2`), so clients really share server
connections between transactions: a prepared statement or a session `SET` left by
one client is seen by the next. Authentication is `trust`, users looked up through
the admin role (`auth_user`), so every role a test creates can log in.

Without pgbouncer installed the tests using it are skipped, except under CI=true,
where they fail (`.ci/run` installs it: `apt-get install pgbouncer`).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from procqueue.local import free_port

POOL_SIZE = 2
CANDIDATES = ("pgbouncer", "/usr/sbin/pgbouncer", "/usr/bin/pgbouncer")


def pgbouncer_binary() -> str | None:
    for candidate in CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    return None


@dataclass
class Pgbouncer:
    """A running pgbouncer: `via(dsn)` is the same database and role through it."""

    host: str
    port: int
    directory: Path
    process: subprocess.Popen[bytes]

    def via(self, dsn: str) -> str:
        params = {key: value for key, value in conninfo_to_dict(dsn).items() if value is not None}
        params.update(host=self.host, port=str(self.port))
        params.pop("password", None)
        return make_conninfo("", **params)

    def log(self) -> str:
        path = self.directory / "pgbouncer.log"
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""


def _ini(server: dict[str, str | int | None], admin: str, port: int, directory: Path) -> str:
    host = server.get("host") or "127.0.0.1"
    server_port = server.get("port") or "5432"
    run_as = ""
    if os.geteuid() == 0:  # pgbouncer refuses to run as root
        run_as = "user = postgres\n" if _user_exists("postgres") else "user = nobody\n"
    return (
        "[databases]\n"
        f"* = host={host} port={server_port}\n"
        "[pgbouncer]\n"
        "listen_addr = 127.0.0.1\n"
        f"listen_port = {port}\n"
        "unix_socket_dir =\n"
        "auth_type = trust\n"
        f"auth_file = {directory / 'users.txt'}\n"
        f"auth_user = {admin}\n"
        "pool_mode = transaction\n"
        f"default_pool_size = {POOL_SIZE}\n"
        "min_pool_size = 0\n"
        "reserve_pool_size = 0\n"
        "max_client_conn = 500\n"
        "max_db_connections = 0\n"
        "server_check_delay = 0\n"
        f"logfile = {directory / 'pgbouncer.log'}\n"
        f"pidfile = {directory / 'pgbouncer.pid'}\n"
        f"{run_as}"
    )


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


@contextlib.contextmanager
def running_pgbouncer(admin_dsn: str, binary: str, timeout: float = 15.0) -> Iterator[Pgbouncer]:
    server = conninfo_to_dict(admin_dsn)
    admin = str(server.get("user") or "postgres")
    directory = Path(tempfile.mkdtemp(prefix="procqueue-pgbouncer-"))
    port = free_port()
    (directory / "users.txt").write_text(f'"{admin}" ""\n', encoding="utf-8")
    ini = directory / "pgbouncer.ini"
    ini.write_text(_ini(server, admin, port, directory), encoding="utf-8")
    if os.geteuid() == 0:
        owner = pwd.getpwnam("postgres" if _user_exists("postgres") else "nobody")
        for path in (directory, *directory.iterdir()):
            os.chown(path, owner.pw_uid, owner.pw_gid)
    process = subprocess.Popen(
        [binary, str(ini)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    bouncer = Pgbouncer("127.0.0.1", port, directory, process)
    try:
        _wait_until_it_answers(bouncer, admin_dsn, timeout)
        yield bouncer
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)  # immediate shutdown
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stderr is not None:
            process.stderr.close()
        shutil.rmtree(directory, ignore_errors=True)


def _wait_until_it_answers(bouncer: Pgbouncer, admin_dsn: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if bouncer.process.poll() is not None:
            stderr = bouncer.process.stderr.read().decode() if bouncer.process.stderr else ""
            raise RuntimeError(f"pgbouncer exited at start: {stderr or bouncer.log()}")
        try:
            with psycopg.connect(bouncer.via(admin_dsn), connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"pgbouncer did not answer on port {bouncer.port}: {bouncer.log()[-2000:]}"
                ) from None
            time.sleep(0.05)


@pytest.fixture(scope="session")
def pgbouncer(admin_dsn: str) -> Iterator[Pgbouncer]:
    """Debian's pgbouncer in transaction mode in front of the test server."""
    binary = pgbouncer_binary()
    if binary is None:
        message = "pgbouncer is not installed (apt-get install pgbouncer)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{message}; CI=true: the transaction pooler tests must run")
        pytest.skip(message)
    with running_pgbouncer(admin_dsn, binary) as bouncer:
        yield bouncer
