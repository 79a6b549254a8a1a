"""`procqueue worker`: the same as `procrastinate --app=procqueue.app.app worker`.

A worker that cannot work says why in one line and exits non-zero (2): the
database does not answer, the preflight checks fail (procqueue/preflight.py), or a
side task failed and stopped it (procqueue/runtime.py)."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from procrastinate.exceptions import ConnectorException
from psycopg_pool import PoolTimeout

from procqueue.app import build_app
from procqueue.errors import ConfigError
from procqueue.queue.server import start_worker_metrics_server
from procqueue.settings import get_settings


def run(args: argparse.Namespace) -> int:
    settings = get_settings()
    if args.concurrency:
        settings = settings.model_copy(update={"concurrency": args.concurrency})
    app = build_app(settings)
    if settings.metrics_port:
        start_worker_metrics_server(settings.metrics_port)

    async def work() -> None:
        async with app.open_async():
            try:
                if args.queue:
                    await app.run_worker_async(queues=args.queue, name=args.name)
                else:  # every queue (queues=[] would match no queue at all)
                    await app.run_worker_async(name=args.name)
            finally:
                await app.services.aclose()

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
    parser.add_argument("--concurrency", type=int, default=None, help="jobs run at once")
    parser.add_argument("--queue", action="append", help="only this queue (repeatable)")
    parser.add_argument("--name", default=None, help="worker name shown in logs")
    parser.set_defaults(handler=run)
