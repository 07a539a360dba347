"""A network link of a given speed, shared by every connection that uses it.

Each transfer books the link for ``bytes / rate`` seconds after whatever is booked before it,
then waits for its booking to end: together, all connections move at most ``rate`` bytes a
second, first come first served, in pieces of ``PIECE`` bytes so that they interleave.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

PIECE = 64 * 1024


class LinkClosed(ConnectionError):
    """The emulator is stopping: the transfer is abandoned."""


class Link:
    """``rate_mbit`` megabits a second in total (0: unlimited)."""

    def __init__(self, rate_mbit: float, sleep: Callable[[float], bool],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = rate_mbit * 1_000_000 / 8  # bytes a second
        self._sleep, self._clock = sleep, clock  # sleep(s) -> True when stopping
        self._free_at = 0.0
        self._lock = threading.Lock()

    @property
    def limited(self) -> bool:
        return self._rate > 0

    def take(self, size: int) -> None:
        """Wait until ``size`` more bytes fit through the link."""
        if not self._rate or size <= 0:
            return
        with self._lock:
            now = self._clock()
            self._free_at = max(self._free_at, now) + size / self._rate
            done = self._free_at
        wait = done - self._clock()
        if wait > 0 and self._sleep(wait):
            raise LinkClosed("the emulator is stopping")
