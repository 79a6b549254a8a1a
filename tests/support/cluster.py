"""A throwaway PostgreSQL 15 cluster of its own, for tests that restart Postgres:
never the machine's shared server. Trust authentication on a free loopback port,
in a temporary directory removed afterwards. As root (initdb refuses root) the
server binaries run as the `postgres` OS user, which owns the directory.

    with throwaway_cluster() as cluster:
        with supabase_database(cluster.dsn, "pq_chaos") as dsn:
            migrate(dsn)
            ...
            cluster.restart(downtime=3.0)   # stop -m immediate, wait, start
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from procqueue.local import free_port

BIN_DIR = Path("/usr/lib/postgresql/15/bin")
SERVER_USER = "postgres"
#: Enough for several worker processes (each: a pool of concurrency + 2 and a LISTEN
#: connection), writers and the test's own connections.
MAX_CONNECTIONS = 300


class ThrowawayCluster:
    """One initialised cluster; `stop` leaves its files, `throwaway_cluster` removes them."""

    def __init__(self, root: Path, port: int) -> None:
        self.root = root
        self.port = port
        self.data_dir = root / "data"
        self.socket_dir = root / "socket"
        self.log_file = root / "server.log"
        self.dsn = f"postgresql://postgres@127.0.0.1:{port}/postgres"

    def _run(self, *command: str, timeout: float = 120.0) -> None:
        prefix = ["runuser", "-u", SERVER_USER, "--"] if os.geteuid() == 0 else []
        result = subprocess.run(
            [*prefix, *command], capture_output=True, text=True, timeout=timeout, check=False
        )
        if result.returncode != 0:
            log = (
                self.log_file.read_text(errors="replace")[-2000:] if self.log_file.exists() else ""
            )
            raise RuntimeError(
                f"{Path(command[0]).name} failed ({result.returncode}): "
                f"{(result.stderr or result.stdout).strip()}\n{log}"
            )

    def _initdb(self) -> None:
        self._run(
            str(BIN_DIR / "initdb"), "-D", str(self.data_dir), "-U", "postgres",
            "-A", "trust", "-E", "UTF8", "--locale=C", "--no-instructions", "--no-sync",
        )  # fmt: skip

    def _start(self) -> None:
        options = " ".join(
            [
                f"-p {self.port}",
                "-c listen_addresses=127.0.0.1",
                f"-c unix_socket_directories={self.socket_dir}",
                f"-c max_connections={MAX_CONNECTIONS}",
                # No fsync: an immediate stop loses no commit (the WAL is written to the
                # OS at commit), only an OS crash would. synchronous_commit stays on.
                "-c fsync=off",
            ]
        )
        self._run(
            str(BIN_DIR / "pg_ctl"), "start", "-D", str(self.data_dir), "-w", "-t", "60",
            "-l", str(self.log_file), "-o", options,
        )  # fmt: skip

    def _pg_ctl_stop(self, mode: str) -> None:
        self._run(str(BIN_DIR / "pg_ctl"), "stop", "-D", str(self.data_dir), "-w", "-m", mode)

    def _running(self) -> bool:
        return (self.data_dir / "postmaster.pid").exists()

    def restart(self, downtime: float = 3.0) -> None:
        """Stop the server as a crash would (`-m immediate`: every connection cut, no
        checkpoint), keep it down `downtime` seconds, start it again (crash recovery);
        returns once it accepts connections."""
        self.down()
        time.sleep(downtime)  # the outage itself: nothing to await
        self.up()

    def down(self) -> None:
        """Stop the server as a crash would; it stays down until `up()`."""
        self._pg_ctl_stop("immediate")

    def up(self) -> None:
        """Start the server again (crash recovery); returns once it accepts connections."""
        self._start()

    def stop(self) -> None:
        if self._running():
            self._pg_ctl_stop("immediate")


def _owned_by_server_user(path: Path) -> None:
    if os.geteuid() == 0:
        user = pwd.getpwnam(SERVER_USER)
        os.chown(path, user.pw_uid, user.pw_gid)


@contextlib.contextmanager
def throwaway_cluster() -> Iterator[ThrowawayCluster]:
    """A started cluster; stopped and removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="procqueue-cluster-"))
    try:
        _owned_by_server_user(root)
        socket_dir = root / "socket"
        socket_dir.mkdir()
        _owned_by_server_user(socket_dir)
        cluster = ThrowawayCluster(root, free_port())
        cluster._initdb()
        for attempt in range(3):  # the free port may be taken between choosing and binding
            try:
                cluster._start()
                break
            except RuntimeError:
                if attempt == 2:
                    raise
                cluster.port = free_port()
                cluster.dsn = f"postgresql://postgres@127.0.0.1:{cluster.port}/postgres"
        try:
            yield cluster
        finally:
            cluster.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)
