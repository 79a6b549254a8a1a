"""A progress bar on stderr for the long commands (reindex, verify): done/total, rows/s
and ETA, drawn by tqdm. Only on a terminal: when stderr is a file or a pipe (cron, CI,
`2>log`), or with `--quiet`, nothing is drawn, so redirected output holds no bar."""

from __future__ import annotations

import sys
from typing import Any, TextIO

from tqdm import tqdm


class Progress:
    def __init__(
        self, label: str, total: int = 0, *, quiet: bool = False, stream: TextIO | None = None
    ) -> None:
        stream = stream if stream is not None else sys.stderr
        self._bar: Any = tqdm(
            desc=label,
            total=total or None,
            unit=" rows",
            file=stream,
            # tqdm's `None`: disabled unless the stream is a terminal.
            disable=True if quiet else None,
            dynamic_ncols=True,
            leave=True,
        )

    def start(self, total: int, done: int = 0) -> None:
        """Known at last: the total, and what an earlier run already did."""
        self._bar.reset(total=max(total, done) or None)
        self._bar.update(done)

    def advance(self, count: int) -> None:
        if self._bar.total is not None and self._bar.n + count > self._bar.total:
            self._bar.total = self._bar.n + count  # the estimate was low
        self._bar.update(count)

    def finish(self) -> None:
        self._bar.close()
