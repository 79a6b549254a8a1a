"""`procqueue worker` as a child process, with its exit codes, plus the test tasks,
`test:sleep` and `test:block_loop`: `python -m tests.support.cli_worker` (settings from PROCQUEUE_*
in the environment). `start_cli_worker` starts one with its output in a file."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

from procqueue.app import build_app
from procqueue.commands import worker
from procqueue.engine.app import ProcqueueApp
from procqueue.errors import ProcqueueError
from procqueue.features import get_settings, load_settings
from procqueue.queue.logs import configure_logging
from tests.support import tasks


def register(app: ProcqueueApp) -> None:
    """The test tasks, `test:sleep` and `test:block_loop`."""
    tasks.register(app)

    @app.task(name="test:sleep", queue="tests")
    async def sleep(seconds: float) -> str:
        """Runs `seconds` without touching the database."""
        await asyncio.sleep(seconds)
        return "slept"

    @app.task(name="test:block_loop", queue="tests")
    async def block_loop(seconds: float) -> str:
        """Blocks the worker's event loop for `seconds` (blocking code in a job)."""
        time.sleep(seconds)  # noqa: ASYNC251 - what the task is for
        return "blocked"


def main() -> int:
    configure_logging(get_settings, verbose=False)
    try:
        app = build_app(load_settings())
        register(app)
        return worker.serve(app, name=os.environ.get("TEST_WORKER_NAME"))
    except ProcqueueError as error:  # as the `procqueue` command does
        print(f"procqueue: error: {error}", file=sys.stderr)
        return 2


async def start_cli_worker(
    env: dict[str, str], log: Path, name: str = "worker"
) -> asyncio.subprocess.Process:
    """A worker process writing stdout and stderr to `log`."""
    with log.open("ab") as output:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.support.cli_worker",
            env={**os.environ, **env, "TEST_WORKER_NAME": name},
            stdout=output, stderr=output,
        )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
