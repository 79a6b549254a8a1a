"""A one-line progress bar on stderr: done/total, rows/s and ETA."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(self, label: str, total: int, stream: TextIO | None = None) -> None:
        self.label = label
        self.total = max(total, 0)
        self.done = 0
        self.stream = stream if stream is not None else sys.stderr
        self.started = time.monotonic()
        self._shown = 0.0

    def start(self, total: int, done: int = 0) -> None:
        """Known at last: the total, and what an earlier run already did."""
        self.total, self.done = total, done
        self.started = time.monotonic()

    def advance(self, count: int) -> None:
        self.done += count
        now = time.monotonic()
        if now - self._shown >= 0.2:
            self._shown = now
            self._draw(end="\r")

    def finish(self) -> None:
        self._draw(end="\n")

    @property
    def rate(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.done / elapsed if elapsed > 0 else 0.0

    def _draw(self, end: str) -> None:
        total = max(self.total, self.done)
        fraction = self.done / total if total else 1.0
        bar = "#" * int(fraction * 30)
        rate = self.rate
        eta = (total - self.done) / rate if rate > 0 else 0.0
        self.stream.write(
            f"{self.label} [{bar:<30}] {self.done}/{total} rows, {rate:,.0f} rows/s, "
            f"ETA {eta:,.0f} s{end}"
        )
        self.stream.flush()
