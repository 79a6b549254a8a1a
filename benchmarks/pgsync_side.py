"""PGSync (its PyPI release) as subprocesses, for benchmarks/vs_pgsync.py.

PGSync pins elasticsearch-py 7 and procqueue uses 8, so it lives in a virtualenv of
its own (made on first use under ~/.cache/procqueue/, reused afterwards) and is
never imported: `bootstrap` installs its triggers and replication slot, a one-shot
`pgsync` run is its initial sync, `pgsync --daemon` follows changes
(LISTEN/NOTIFY -> Redis -> Elasticsearch). Its settings are its defaults, except
where the benchmark needs them: our cluster, our ES-API server (with the request
timeout procqueue gets too: the shared emulator, loaded, can take over PGSync's
default 10 s for a 5,000-document `_bulk`), our Redis database, and a working
directory of its own for the checkpoint file and logs.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

VERSION = "7.3.0"
DEFAULT_VENV = Path(
    os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "procqueue", f"pgsync-{VERSION}"
)


def ensure_venv(venv: Path) -> Path:
    """The venv's bin directory, with PGSync installed (pip, from the package index)."""
    bin_dir = venv / "bin"
    if not (bin_dir / "pgsync").exists():
        print(f"installing pgsync=={VERSION} into {venv} (once)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(bin_dir / "pip"), "install", "-q", f"pgsync=={VERSION}"],
            check=True, stderr=subprocess.DEVNULL,
        )  # fmt: skip
    return bin_dir


@dataclass(frozen=True)
class PgSync:
    bin_dir: Path
    work_dir: Path  # schema.json, the checkpoint file, the daemon's log
    database: str
    index: str
    environment: Mapping[str, str]

    @classmethod
    def configure(
        cls,
        bin_dir: Path,
        work_dir: Path,
        *,
        host: str,
        port: int,
        database: str,
        index: str,
        es_url: str,
        es_timeout: float,
        redis_url: str,
        table: str,
        columns: Sequence[str],
        properties: Mapping[str, Any],
    ) -> PgSync:
        schema, name = table.split(".")
        document = {
            "database": database,
            "index": index,
            "nodes": {"table": name, "schema": schema, "columns": list(columns)},
            "mapping": dict(properties),  # the same field types as procqueue's index
        }
        (work_dir / "schema.json").write_text(json.dumps([document], indent=2))
        environment = {
            **os.environ,
            "PG_HOST": host,
            "PG_PORT": str(port),
            "PG_USER": "postgres",
            "PG_DATABASE": database,
            "ELASTICSEARCH_URL": es_url,
            "ELASTICSEARCH_TIMEOUT": str(es_timeout),
            "REDIS_URL": redis_url,
            "CHECKPOINT_PATH": str(work_dir),
            "CONSOLE_LOGGING_HANDLER_MIN_LEVEL": "WARNING",
        }
        return cls(bin_dir, work_dir, database, index, environment)

    @property
    def redis_keys(self) -> str:
        """The pattern of PGSync's Redis keys for this index (queue and meta)."""
        return f"queue:{self.database.lower()}_{self.index}*"

    def _run(self, command: str, *args: str) -> float:
        started = time.perf_counter()
        result = subprocess.run(
            [str(self.bin_dir / command), "--config", str(self.work_dir / "schema.json"), *args],
            cwd=self.work_dir, env=self.environment, capture_output=True, text=True, check=False,
        )  # fmt: skip
        if result.returncode != 0:
            raise RuntimeError(f"{command} {' '.join(args)} failed: {result.stderr[-2000:]}")
        return time.perf_counter() - started

    def bootstrap(self) -> None:
        """Triggers, view and replication slot; PGSync's own bootstrap first tears down
        the previous ones, the checkpoint file and the Redis queue."""
        self._run("bootstrap")

    def teardown(self) -> None:
        with contextlib.suppress(RuntimeError):
            self._run("bootstrap", "--teardown")
        script = (
            "import redis, sys\n"
            "client = redis.Redis.from_url(sys.argv[1])\n"
            "for key in client.scan_iter(sys.argv[2]):\n"
            "    client.delete(key)\n"
        )
        subprocess.run(
            [str(self.bin_dir / "python"), "-c", script, self.environment["REDIS_URL"],
             self.redis_keys],
            check=False, capture_output=True,
        )  # fmt: skip

    def initial_sync(self) -> float:
        """Wall time of a one-shot `pgsync` run: the whole table into the index."""
        return self._run("pgsync")

    @contextlib.contextmanager
    def daemon(self, timeout: float = 120.0) -> Iterator[subprocess.Popen[bytes]]:
        """`pgsync --daemon`, returned once it listens and consumes (its first status
        line), terminated afterwards."""
        log_path = self.work_dir / "daemon.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [str(self.bin_dir / "pgsync"), "--config", str(self.work_dir / "schema.json"),
                 "--daemon"],
                cwd=self.work_dir, env=self.environment, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        try:
            deadline = time.monotonic() + timeout
            while b"Xlog: [" not in log_path.read_bytes():
                if process.poll() is not None or time.monotonic() > deadline:
                    tail = log_path.read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"pgsync --daemon did not start: {tail}")
                time.sleep(0.1)
            yield process
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
