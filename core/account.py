"""The WaveSpeed account's limits: tasks at once and images per minute, for every command.

The account's level and images per minute are said once, as ``wavespeed.account_level`` and
``wavespeed.images_per_minute``; ``remove`` and ``watch`` both keep to them (``watch.*`` keys of
the same names, when set, win for the daemon alone). The level caps both the tasks at once and
the images per minute at the account's own limits (the service's account-levels page). The
limit is kept per process: two commands sharing one account each keep to the whole of it.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bgremove.choices import ACCOUNT_LIMITS

if TYPE_CHECKING:
    from bgremove.config import Config
    from bgremove.contract import CancelToken

#: The service's minute, in seconds (the default window of a ``RateLimiter``).
MINUTE = 60.0


@dataclass(frozen=True)
class AccountLimits:
    concurrency: int  # tasks at the service at once
    images_per_minute: int  # submits in any minute; 0: no limit


def account_limits(config: Config, *, daemon: bool = False) -> AccountLimits:
    """The limits a command keeps to: its ``concurrency`` (``watch.concurrency`` for the
    ``daemon``) and the account's images per minute, both capped by the account level.

    For the daemon, ``watch.account_level`` and ``watch.images_per_minute`` win over the
    ``wavespeed.*`` keys when they are set.
    """
    level = config.wavespeed.account_level
    per_minute = config.wavespeed.images_per_minute
    concurrency = config.concurrency
    if daemon:
        watch = config.watch
        level = watch.account_level or level
        if watch.images_per_minute is not None:
            per_minute = watch.images_per_minute
        concurrency = watch.concurrency
    if level:
        level_conc, level_rate = ACCOUNT_LIMITS[level]
        concurrency = min(concurrency, level_conc)
        per_minute = level_rate if per_minute == 0 else min(per_minute, level_rate)
    return AccountLimits(concurrency, per_minute)


class RateLimiter:
    """At most ``per_minute`` submits in any 60-second window (0: unlimited), as the service
    counts them: when each submit leaves, not when its job was admitted.

    A job takes a token before it is admitted (``acquire``) and holds it until its submit
    leaves (``commit``), or gives it back when nothing was submitted (``release``). Held
    tokens count in the window, so jobs admitted together cannot send a burst when their
    uploads end together. A token stays in the window ``slack`` seconds longer than the
    window: a submit's way to the service takes a moment.
    """

    def __init__(self, per_minute: int, *, clock: Callable[[], float] = time.monotonic,
                 window: float | None = None, slack: float = 1.0) -> None:
        self.per_minute = per_minute
        self.window = MINUTE if window is None else window
        self.slack = slack
        self._clock = clock
        self._times: deque[float] = deque()  # when each counted submit left
        self._held = 0  # tokens taken whose submit has not left yet
        self._lock = threading.Lock()

    def _wait(self, now: float) -> float:
        """Under the lock: seconds until a token is free (0 now)."""
        span = self.window + self.slack
        while self._times and now - self._times[0] >= span:
            self._times.popleft()
        if len(self._times) + self._held < self.per_minute:
            return 0.0
        # all taken: the oldest submit leaves the window then (or a held token comes back)
        return span - (now - self._times[0]) if self._times else 0.25

    def delay(self) -> float:
        """Seconds until the next acquisition is allowed (0 now)."""
        if self.per_minute <= 0:
            return 0.0
        with self._lock:
            return self._wait(self._clock())

    def try_acquire(self) -> bool:
        if self.per_minute <= 0:
            return True
        with self._lock:
            if self._wait(self._clock()) > 0:
                return False
            self._held += 1
            return True

    def acquire(self, cancel: CancelToken, give_up: Callable[[], bool] = lambda: False) -> bool:
        """Block until allowed; False if cancelled or ``give_up()`` meanwhile."""
        while not self.try_acquire():
            if give_up() or cancel.wait(min(max(self.delay(), 0.01), 0.25)):
                return False
        return True

    def commit(self, *, held: bool = True) -> None:
        """A submit leaves now: it counts from now, in place of its held token (``held``;
        a second submit after one that surely created no task holds none: it counts too)."""
        if self.per_minute <= 0:
            return
        with self._lock:
            if held and self._held:
                self._held -= 1
            self._times.append(self._clock())

    def release(self) -> None:
        """A held token whose job sent no submit (it failed first, or resumed a task)."""
        if self.per_minute <= 0:
            return
        with self._lock:
            self._held = max(0, self._held - 1)
