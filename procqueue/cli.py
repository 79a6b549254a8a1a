"""The `procqueue` command: queue operations for Supabase + Procrastinate."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from procqueue import __version__
from procqueue.commands import (
    bulk,
    dashboard,
    health,
    images,
    jobs,
    metrics,
    migrate,
    queues,
    why,
    worker,
)
from procqueue.engine.connections import database_error
from procqueue.errors import ProcqueueError
from procqueue.features import get_settings, warn_unknown_variables
from procqueue.queue.logs import configure_logging

#: The status of a command whose reader went away (`procqueue health --json | head`):
#: what a shell shows for a process that SIGPIPE ended.
CLOSED_PIPE_STATUS = 141

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
    queues.register,
    why.register,
)


class _Parser(argparse.ArgumentParser):
    """argparse's parser, but a usage mistake is one line (not the usage, then it)
    and says where the usage is. Sub-command parsers are of this class too."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


#: Options accepted before and after the sub-command (`procqueue -q verify`,
#: `procqueue verify -q`): (flags, help).
COMMON_OPTIONS = (
    (("-v", "--verbose"), "debug logging"),
    (("-q", "--quiet"), "no progress bars and no info logs: only data, warnings and errors"),
)


def _common_options_after_commands(parser: argparse.ArgumentParser) -> None:
    """Accept the common options after the sub-command too (`procqueue health -v`)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command in action.choices.values():
                for flags, help_text in COMMON_OPTIONS:
                    command.add_argument(
                        *flags, action="store_true", default=argparse.SUPPRESS, help=help_text
                    )
                _common_options_after_commands(command)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="procqueue", description=__doc__)
    parser.add_argument("--version", action="version", version=f"procqueue {__version__}")
    for flags, help_text in COMMON_OPTIONS:
        parser.add_argument(*flags, action="store_true", help=help_text)
    commands = parser.add_subparsers(dest="command", required=True)
    for register in COMMAND_GROUPS:
        register(commands)
    _common_options_after_commands(parser)
    return parser


def _failed(error: ProcqueueError) -> int:
    print(f"procqueue: error: {error}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(get_settings, verbose=args.verbose, quiet=args.quiet)
    warn_unknown_variables()
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        status = handler(args)
        sys.stdout.flush()  # a reader gone away shows here, not at the interpreter's exit
        return status
    except ProcqueueError as error:
        return _failed(error)
    except BrokenPipeError:
        # Later writes (the interpreter's last flush) go nowhere instead of failing again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return CLOSED_PIPE_STATUS
    except KeyboardInterrupt:
        return 130
    except Exception as error:
        # The settings loaded (a command reached the database): the DSN is theirs.
        translated = database_error(error, get_settings().dsn)
        if translated is None:
            raise
        return _failed(translated)


if __name__ == "__main__":
    sys.exit(main())
