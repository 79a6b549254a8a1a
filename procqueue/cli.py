"""The `procqueue` command: queue operations for Supabase + Procrastinate."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from procqueue import __version__
from procqueue.commands import bulk, dashboard, health, images, jobs, metrics, migrate, worker
from procqueue.errors import ProcqueueError
from procqueue.queue.logs import configure_logging

#: Each command group adds its parsers; add a group by adding its module here.
COMMAND_GROUPS: tuple[Callable[[Any], None], ...] = (
    migrate.register,
    worker.register,
    health.register,
    jobs.register,
    metrics.register,
    images.register,
    dashboard.register,
    bulk.register,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="procqueue", description=__doc__)
    parser.add_argument("--version", action="version", version=f"procqueue {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)
    for register in COMMAND_GROUPS:
        register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(verbose=args.verbose)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except ProcqueueError as error:
        print(f"procqueue: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
