"""The circuit of one outside service: opened by an outage, one probe at a time,
waits doubling per failed probe up to the cap, closed by the first answer."""

from __future__ import annotations

from procqueue.queue.circuit import Circuits


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_an_outage_holds_jobs_back_until_a_probe_gets_an_answer() -> None:
    clock = Clock()
    circuits = Circuits(first_wait=1.0, max_wait=4.0, clock=clock)
    assert circuits.wait_before("es", job_id=1) is None  # closed: run
    assert circuits.tripped("es", 1, "refused") is True  # opened
    assert circuits.tripped("es", 2, "refused") is False  # in flight when it opened
    assert circuits.get("es").probe_due == 101.0  # those do not lengthen the wait
    wait = circuits.wait_before("es", job_id=3)
    assert wait is not None and 1.0 <= wait <= 1.1
    clock.now = 101.0
    assert circuits.wait_before("es", job_id=4) is None  # the probe
    assert circuits.wait_before("es", job_id=5) is not None  # only one at a time
    for expected_wait in (2.0, 4.0, 4.0):  # each failed probe doubles it, up to the cap
        assert circuits.tripped("es", circuits.get("es").probe_job, "refused") is False
        assert circuits.get("es").probe_due == clock.now + expected_wait
        clock.now += expected_wait
        assert circuits.wait_before("es", job_id=6) is None
    closed = circuits.answered("es")
    assert closed is not None and closed.reason == "refused"
    assert circuits.wait_before("es", job_id=7) is None
    assert circuits.answered("es") is None  # already closed


def test_a_vanished_probe_lets_another_start_later_and_sinks_are_apart() -> None:
    clock = Clock()
    circuits = Circuits(first_wait=1.0, max_wait=8.0, clock=clock)
    circuits.tripped("smtp", 1, "down")
    assert circuits.get("smtp").probe_due == 101.0
    assert circuits.wait_before("fcm", job_id=2) is None  # another sink is unaffected
    clock.now = 103.0
    assert circuits.wait_before("smtp", job_id=3) is None  # probe; its worker dies
    clock.now = 104.9
    assert circuits.wait_before("smtp", job_id=4) is not None
    clock.now = 105.0
    assert circuits.wait_before("smtp", job_id=5) is None  # a new probe after the wait
