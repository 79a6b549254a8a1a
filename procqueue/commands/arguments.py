"""Argument types for the sub-commands: a value out of range is argparse's one-line
usage error (exit 2), not a traceback or a silently accepted 0."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def whole_number(low: int, high: int | None = None) -> Callable[[str], int]:
    """An int from `low` to `high` (None: no upper bound)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bounds = f"from {low} to {high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {value}")
        return value

    return parse


def positive_seconds(high: float) -> Callable[[str], float]:
    """A number of seconds greater than 0, at most `high`."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"must be a number of seconds, got {text!r}"
            ) from None
        if not 0 < value <= high:
            raise argparse.ArgumentTypeError(
                f"must be more than 0 and at most {high:.0f} seconds, got {text}"
            )
        return value

    return parse


POSITIVE = whole_number(1)
PORT = whole_number(1, 65535)
#: Procrastinate's job ids are Postgres bigints.
JOB_ID = whole_number(1, 2**63 - 1)
