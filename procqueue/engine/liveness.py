"""Whether this worker process is alive: its fetch loop and its heartbeat go round.
The worker's metrics port answers `/livez` from it (procqueue/engine/probes.py).

Alive is not healthy: an Elasticsearch outage (an open circuit), a backlog or failing
jobs leave a worker alive, and so does the database being away, which the worker
waits out (its readiness, `/readyz`, says that). A loop is judged by when it last
ended a turn, a success or an error it waits out alike, so only a loop that no longer
turns is dead: the event loop blocked by a job's blocking code, a statement hanging
on a connection that never answers, a loop that ended. Restarting such a worker is
what helps; restarting one during an outage would not.

Each `Pulse` is written by the worker's event loop and read by the probe server's
thread: plain float assignments, which need no lock."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from procqueue.engine.outages import RECONNECT_MAX_WAIT

#: The longest wait between two attempts to reach a database that went away.
LONGEST_BACKOFF = RECONNECT_MAX_WAIT * 1.25


@dataclass
class Pulse:
    """One loop of the worker: since when it is inside a turn (a statement, which may
    wait for a pooled connection) or since when it is between turns.

    Between turns it may rest `idle_allowance` seconds; a turn may last
    `busy_allowance`. A loop waiting on something that bounds itself (the fetch loop
    while every slot runs a job: the jobs have their timeout) is not judged."""

    name: str
    idle_allowance: float
    busy_allowance: float
    clock: Callable[[], float] = time.monotonic
    busy_since: float | None = None
    idle_since: float = field(default=0.0)
    waiting: bool = False

    def __post_init__(self) -> None:
        self.idle_since = self.clock()

    def begin(self) -> None:
        self.waiting = False
        self.busy_since = self.clock()

    def end(self) -> None:
        self.waiting = False
        self.idle_since = self.clock()
        self.busy_since = None

    def wait(self) -> None:
        """Waiting on something with its own bound; `end` when it is over."""
        self.waiting = True

    def problem(self) -> str | None:
        """Why this loop is dead, in a few words; None while it goes round."""
        now = self.clock()
        busy_since = self.busy_since
        if busy_since is not None:
            if now - busy_since > self.busy_allowance:
                return (
                    f"the {self.name} is stuck: one turn has run for {now - busy_since:.0f} s "
                    f"(at most {self.busy_allowance:g} s)"
                )
            return None
        if not self.waiting and now - self.idle_since > self.idle_allowance:
            return (
                f"the {self.name} is stale: no turn for {now - self.idle_since:.0f} s "
                f"(at most {self.idle_allowance:g} s)"
            )
        return None


class Liveness:
    """A running worker's fetch loop and heartbeat (`Pulse`s), and whether it stops.
    The worker hands it to `Services.liveness` once registered (None before: starting)."""

    def __init__(
        self,
        *,
        polling_interval: float,
        heartbeat_interval: float,
        stalled_timeout: float,
        pool_timeout: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # A turn may wait for a pooled connection (pool_timeout) while the database is
        # away; between turns a loop rests its interval, or a backoff in an outage.
        busy = stalled_timeout + pool_timeout
        self.fetch = Pulse(
            "fetch loop", polling_interval + stalled_timeout + LONGEST_BACKOFF, busy, clock
        )
        self.heartbeat = Pulse(
            "heartbeat",
            heartbeat_interval + stalled_timeout + LONGEST_BACKOFF,
            busy,
            clock,
        )
        self.stopping = False

    def started(self) -> None:
        """The worker's run loop starts: its first fetch, its first heartbeat to come."""
        self.fetch.begin()
        self.heartbeat.end()

    def stop(self) -> None:
        self.stopping = True

    def verdict(self) -> tuple[bool, str]:
        """(alive, one line saying why)."""
        if self.stopping:
            return False, "the worker is stopping (SIGTERM, or a side task failed)"
        problems = [
            problem for pulse in (self.fetch, self.heartbeat) if (problem := pulse.problem())
        ]
        if problems:
            return False, "; ".join(problems) + ": restart the worker"
        return True, "alive: the fetch loop and the heartbeat go round"
