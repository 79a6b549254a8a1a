"""The `procqueue` command."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable, Sequence

from procqueue import __version__
from procqueue.entities import load_entities
from procqueue.errors import ProcqueueError
from procqueue.settings import get_settings

Command = Callable[[argparse.Namespace], int]


def cmd_migrate(args: argparse.Namespace) -> int:
    from procqueue import migrate

    if args.from_scratch:
        entities = load_entities(args.entities_file)
        print(migrate.render(migrate.plan_from_scratch(entities)), end="")
        return 0
    settings = get_settings()
    entities = load_entities(settings.entities_file)
    steps = migrate.migrate(settings.dsn, entities, print_only=args.print_sql)
    if args.print_sql:
        print(migrate.render(steps), end="")
        return 0
    recorded = [step.record_as for step in steps if step.record_as]
    print(f"applied: {', '.join(recorded) if recorded else 'nothing new'}; triggers attached to "
          f"{', '.join(entity.table for entity in entities)}")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from procqueue.app import build_app

    settings = get_settings()
    if args.concurrency:
        settings = settings.model_copy(update={"concurrency": args.concurrency})
    app = build_app(settings)

    async def run() -> None:
        async with app.open_async():
            try:
                await app.run_worker_async(queues=args.queue or None, name=args.name)
            finally:
                await app.services.aclose()

    asyncio.run(run())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="procqueue", description=__doc__)
    parser.add_argument("--version", action="version", version=f"procqueue {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    migrate = commands.add_parser(
        "migrate", help="install the queue and attach the triggers (idempotent)"
    )
    migrate.add_argument(
        "--print-sql", action="store_true", help="print the pending SQL instead of running it"
    )
    migrate.add_argument(
        "--from-scratch",
        action="store_true",
        help="print the SQL for an empty database without connecting (for supabase db push)",
    )
    migrate.add_argument(
        "--entities-file", type=_path, default=None, help="with --from-scratch: entity config"
    )
    migrate.set_defaults(handler=cmd_migrate)

    worker = commands.add_parser("worker", help="run a worker (procrastinate worker shortcut)")
    worker.add_argument("--concurrency", type=int, default=None, help="jobs run at once")
    worker.add_argument("--queue", action="append", help="only these queues (repeatable)")
    worker.add_argument("--name", default=None, help="worker name shown in logs")
    worker.set_defaults(handler=cmd_worker)
    return parser


def _path(value: str) -> object:
    from pathlib import Path

    return Path(value)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    handler: Command = args.handler
    try:
        return handler(args)
    except ProcqueueError as error:
        print(f"procqueue: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
