"""`procqueue worker`: the same as `procrastinate --app=procqueue.app.app worker`.

The worker runs until SIGTERM or SIGINT (exit status 0): a database that goes
away (killed connections, a restart) is waited for, never a reason to stop
(procqueue/engine/worker.py). A worker that cannot work says why in one line and exits
non-zero (2): a bad setting, the database does not answer at start, the preflight
checks fail (procqueue/engine/preflight.py), or a side task failed on something other
than the database being away."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Iterable
from typing import Any

from procrastinate.exceptions import ConnectorException
from psycopg_pool import PoolTimeout

from procqueue.app import build_app
from procqueue.commands.arguments import whole_number
from procqueue.engine.app import ProcqueueApp
from procqueue.engine.probes import start_worker_server
from procqueue.errors import ConfigError
from procqueue.features import get_settings

#: PROCQUEUE_CONCURRENCY's range (procqueue/settings.py).
CONCURRENCY = whole_number(1, 200)


def run(args: argparse.Namespace) -> int:
    settings = get_settings()
    if args.concurrency:
        settings = settings.model_copy(update={"concurrency": args.concurrency})
    return serve(build_app(settings), queues=args.queue, name=args.name, wait=not args.one_shot)


def serve(
    app: ProcqueueApp,
    *,
    queues: Iterable[str] | None = None,
    name: str | None = None,
    wait: bool = True,
) -> int:
    """Run a worker of `app` until a signal stops it (`wait=False`: until no job is
    left to run now); 0, or a ProcqueueError."""
    settings = app.services.settings
    if settings.metrics_port:
        start_worker_server(app.services, settings.metrics_port)

    options: dict[str, Any] = {"name": name, "wait": wait}
    if queues:  # else every queue (queues=[] would match no queue at all)
        options["queues"] = list(queues)

    async def work() -> None:
        async with app.open_async():  # the worker closes the app's clients as it stops
            await app.run_worker_async(**options)

    try:
        asyncio.run(work())
    except (ConnectorException, PoolTimeout) as error:
        cause = error.__cause__ or error
        text = str(cause).strip()
        first = text.splitlines()[0] if text else type(cause).__name__
        raise ConfigError(f"the worker cannot reach the database (DATABASE_URL): {first}") from None
    return 0


def register(commands: Any) -> None:
    parser = commands.add_parser("worker", help="run a worker")
    parser.add_argument(
        "--concurrency", type=CONCURRENCY, default=None, help="jobs run at once (1 to 200)"
    )
    parser.add_argument("--queue", action="append", help="only this queue (repeatable)")
    parser.add_argument("--name", default=None, help="worker name shown in logs")
    parser.add_argument(
        "--one-shot",
        action="store_true",
        help="run the jobs that are due now, then exit (as `procrastinate worker --one-shot`)",
    )
    parser.set_defaults(handler=run)
