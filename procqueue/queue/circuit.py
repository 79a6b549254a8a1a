"""Circuits, one per outside service (sink: elasticsearch, cloudinary, smtp, fcm).

A SinkUnavailable error (the service is unreachable, times out, answers 5xx or 429)
opens its sink's circuit: from then on the worker postpones the sink's jobs
(HandleOutcome re-enqueues them, spending no retry) instead of calling the service,
and lets one job through as a probe when the probe is due; the wait doubles with
every failed probe, up to `max_wait`. The first job of the sink that gets an answer
closes it. So an outage of any length costs no job its retries: "3 retries" means
three errors from a service that answered.

Each worker keeps its own circuits; transitions are also written to
procqueue.sink_circuits, which health reads (a circuit stays reported open while
no worker has seen the service answer again).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime


@dataclass
class Circuit:
    sink: str
    opened_at: datetime | None = None
    probes_failed: int = 0
    probe_due: float = 0.0  # monotonic time the next probe may start
    probe_job: int | None = None
    reason: str = ""

    @property
    def is_open(self) -> bool:
        return self.opened_at is not None


@dataclass
class Circuits:
    """The worker's circuits. `first_wait` and `max_wait` in seconds."""

    first_wait: float = 1.0
    max_wait: float = 30.0
    clock: Callable[[], float] = time.monotonic
    _circuits: dict[str, Circuit] = field(default_factory=dict)

    def get(self, sink: str) -> Circuit:
        return self._circuits.setdefault(sink, Circuit(sink))

    def wait_before(self, sink: str, job_id: int | None) -> float | None:
        """None: run the job (its circuit is closed, or the job is the probe); else
        how many seconds the job should wait."""
        circuit = self.get(sink)
        if not circuit.is_open:
            return None
        now = self.clock()
        if now >= circuit.probe_due:
            circuit.probe_job = job_id
            # Should the probe vanish (its worker killed), the next one may start then.
            circuit.probe_due = now + self._wait(circuit.probes_failed + 1)
            return None
        wait = circuit.probe_due - now
        return wait + random.uniform(0, min(1.0, wait / 10))

    def tripped(self, sink: str, job_id: int | None, reason: str) -> bool:
        """A job of `sink` met an outage; True if this opened the circuit. Failures
        of jobs already running when it opened do not lengthen the wait: only a
        failed probe does."""
        circuit = self.get(sink)
        opened = not circuit.is_open
        if opened:
            circuit.opened_at = datetime.now(UTC)
        elif job_id != circuit.probe_job:
            return False
        else:
            circuit.probes_failed += 1
        circuit.reason = reason
        circuit.probe_job = None
        circuit.probe_due = self.clock() + self._wait(circuit.probes_failed)
        return opened

    def answered(self, sink: str) -> Circuit | None:
        """A job of `sink` got an answer: close its circuit; returns it if it was open."""
        circuit = self.get(sink)
        if not circuit.is_open:
            return None
        self._circuits[sink] = Circuit(sink)
        return circuit

    def _wait(self, probes_failed: int) -> float:
        return float(min(self.max_wait, self.first_wait * 2**probes_failed))
