"""How often sign-in may fail, per client address and over all addresses.

- Per address: 5 failed sign-ins within 15 minutes lock that address out for
  1 minute. Each further failure before the address has been quiet for 15
  minutes locks it again for twice as long (2, 4, 8 … at most 60 minutes). A
  successful sign-in forgets the address. IPv6 addresses count per /64.
- Over all addresses: 60 failed sign-ins within a minute close sign-in for
  everyone until the oldest of them is a minute old (signed-in sessions work on).

A locked-out attempt is answered 429 without checking its credentials and
without an audit row; the lock-out itself is one row. So refused sign-ins write
at most about one audit row a second, whoever sends them.

The counts live in the dashboard process (each process counts its own).
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

ADDRESS_FAILURES = 5
ADDRESS_WINDOW = 15 * 60.0
FIRST_LOCK = 60.0
LONGEST_LOCK = 3600.0
GLOBAL_FAILURES = 60
GLOBAL_WINDOW = 60.0
#: Addresses remembered at most (the least recently seen are forgotten first).
MAX_ADDRESSES = 10_000


@dataclass(frozen=True)
class Lock:
    """A lock-out one failure has just started."""

    seconds: int
    everyone: bool  # True: sign-in closed for all addresses

    def describe(self) -> str:
        who = "every address" if self.everyone else "this address"
        return f"too many failed sign-ins: {who} locked out for {self.seconds} s"


@dataclass
class _Address:
    failures: deque[float] = field(default_factory=deque)
    locked_until: float = 0.0
    locks: int = 0
    last_failure: float = 0.0


def address_key(address: str | None) -> str:
    """IPv4 addresses as they are; IPv6 ones by their /64 (one host's usual share)."""
    if not address:
        return "?"
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address
    if parsed.version == 6:
        return str(ipaddress.ip_network(f"{parsed}/64", strict=False))
    return str(parsed)


def _seconds(value: float) -> int:
    return max(1, math.ceil(value))


class SignInLimiter:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._addresses: OrderedDict[str, _Address] = OrderedDict()
        self._recent: deque[float] = deque()  # failures from every address, last minute

    def _entry(self, key: str, now: float) -> _Address:
        entry = self._addresses.get(key)
        if entry is None or now > max(entry.locked_until, entry.last_failure) + ADDRESS_WINDOW:
            entry = _Address()
        self._addresses[key] = entry
        self._addresses.move_to_end(key)
        while len(self._addresses) > MAX_ADDRESSES:
            self._addresses.popitem(last=False)
        return entry

    def _global_wait(self, now: float) -> float:
        while self._recent and self._recent[0] <= now - GLOBAL_WINDOW:
            self._recent.popleft()
        if len(self._recent) < GLOBAL_FAILURES:
            return 0.0
        return self._recent[0] + GLOBAL_WINDOW - now

    def wait(self, address: str | None) -> int | None:
        """Seconds this address must wait before it may try again; None: it may now."""
        now = self._clock()
        entry = self._addresses.get(address_key(address))
        waits = [self._global_wait(now), entry.locked_until - now if entry else 0.0]
        longest = max(waits)
        return _seconds(longest) if longest > 0 else None

    def failed(self, address: str | None) -> Lock | None:
        """Count a failed sign-in; returns the lock-out it starts, if it starts one."""
        now = self._clock()
        entry = self._entry(address_key(address), now)
        entry.last_failure = now
        while entry.failures and entry.failures[0] <= now - ADDRESS_WINDOW:
            entry.failures.popleft()
        entry.failures.append(now)
        self._global_wait(now)  # forgets failures older than the global window
        self._recent.append(now)
        if entry.locks or len(entry.failures) >= ADDRESS_FAILURES:
            entry.locks += 1
            seconds = min(FIRST_LOCK * 2 ** (entry.locks - 1), LONGEST_LOCK)
            entry.locked_until = now + seconds
            entry.failures.clear()
            return Lock(_seconds(seconds), everyone=False)
        if len(self._recent) == GLOBAL_FAILURES:
            return Lock(_seconds(self._global_wait(now)), everyone=True)
        return None

    def succeeded(self, address: str | None) -> None:
        self._addresses.pop(address_key(address), None)
