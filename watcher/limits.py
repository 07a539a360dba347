"""How fast the daemon may go: concurrency, images per minute, and the cost guard.

``watch.account_level`` is a ceiling matching the WaveSpeed account's limits
(docs, account-levels page): the daemon never runs more tasks at once, nor
submits more images a minute, than the level allows, whatever
``watch.concurrency`` and ``watch.images_per_minute`` say.

The cost guard counts submissions (from the journal, so a restart keeps the
count) in a sliding hour and day; when a cap is reached intake pauses with
one log line and resumes by itself when the window moves on. Nothing is
dropped: files wait in INBOX.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from core.backends import CancelToken
    from core.config import WatchConfig
    from watcher.journal import Journal

log = logging.getLogger(__name__)

#: level -> (tasks at once, images a minute)
ACCOUNT_LEVELS: dict[str, tuple[int, int]] = {
    "bronze": (2, 2),
    "silver": (300, 500),
    "gold": (3000, 3000),
    "ultra": (10000, 5000),
}
#: Worker threads are cheap but not free: above this, more threads buy nothing.
MAX_WORKERS = 256

HOUR, DAY = 3600.0, 86400.0


@dataclass(frozen=True)
class Limits:
    concurrency: int
    images_per_minute: int  # 0: no limit
    max_per_hour: int
    max_per_day: int


def effective_limits(watch: WatchConfig) -> Limits:
    """Combine the configured limits with the account level's ceiling."""
    concurrency = watch.concurrency
    per_minute = watch.images_per_minute
    if watch.account_level:
        level_conc, level_rate = ACCOUNT_LEVELS[watch.account_level]
        concurrency = min(concurrency, level_conc)
        per_minute = level_rate if per_minute == 0 else min(per_minute, level_rate)
    return Limits(min(concurrency, MAX_WORKERS), per_minute, watch.max_per_hour,
                  watch.max_per_day)


class RateLimiter:
    """At most ``per_minute`` acquisitions in any 60-second window (0: unlimited)."""

    def __init__(self, per_minute: int, *, clock: Callable[[], float] = time.monotonic,
                 window: float = 60.0) -> None:
        self.per_minute = per_minute
        self.window = window
        self._clock = clock
        self._times: deque[float] = deque()
        self._lock = threading.Lock()

    def delay(self) -> float:
        """Seconds until the next acquisition is allowed (0 now)."""
        if self.per_minute <= 0:
            return 0.0
        with self._lock:
            now = self._clock()
            while self._times and now - self._times[0] >= self.window:
                self._times.popleft()
            if len(self._times) < self.per_minute:
                return 0.0
            return self.window - (now - self._times[0])

    def try_acquire(self) -> bool:
        if self.per_minute <= 0:
            return True
        with self._lock:
            now = self._clock()
            while self._times and now - self._times[0] >= self.window:
                self._times.popleft()
            if len(self._times) < self.per_minute:
                self._times.append(now)
                return True
            return False

    def acquire(self, cancel: CancelToken, give_up: Callable[[], bool] = lambda: False) -> bool:
        """Block until allowed; False if cancelled or ``give_up()`` meanwhile."""
        while not self.try_acquire():
            if give_up() or cancel.wait(min(max(self.delay(), 0.01), 0.25)):
                return False
        return True


class CostGuard:
    """Caps on submissions per sliding hour and day, counted in the journal."""

    def __init__(self, journal: Journal, *, per_hour: int, per_day: int,
                 clock: Callable[[], float] = time.time) -> None:
        self.journal = journal
        self.per_hour = per_hour
        self.per_day = per_day
        self._clock = clock
        self._lock = threading.Lock()
        self._paused_reason: str | None = None
        self._recent: deque[float] | None = None

    @property
    def enabled(self) -> bool:
        return self.per_hour > 0 or self.per_day > 0

    @property
    def paused(self) -> str | None:
        """Why intake is paused, or None."""
        return self._paused_reason

    def _load(self) -> deque[float]:
        if self._recent is None:
            now = self._clock()
            self.journal.prune(now - DAY - 60)
            self._recent = deque(self.journal.submits_since(now - DAY))
        return self._recent

    def _blocked_for(self, now: float) -> tuple[float, str] | None:
        recent = self._load()
        while recent and now - recent[0] >= DAY:
            recent.popleft()
        if self.per_day and len(recent) >= self.per_day:
            return DAY - (now - recent[0]), f"watch.max_per_day={self.per_day}"
        if self.per_hour:
            in_hour = [t for t in recent if now - t < HOUR]
            if len(in_hour) >= self.per_hour:
                return HOUR - (now - in_hour[0]), f"watch.max_per_hour={self.per_hour}"
        return None

    def open_now(self) -> bool:
        """True if one more submission is allowed now (nothing recorded)."""
        if not self.enabled:
            return True
        with self._lock:
            if self._blocked_for(self._clock()) is not None:
                return False
            if self._paused_reason is not None:
                log.info("cost guard: below the cap again, intake resumes")
                self._paused_reason = None
            return True

    def try_acquire(self, key: str) -> float:
        """Record a submission and return 0, or return seconds to wait (nothing recorded)."""
        if not self.enabled:
            self.journal.add_submit(key)
            return 0.0
        with self._lock:
            now = self._clock()
            blocked = self._blocked_for(now)
            if blocked is not None:
                wait, what = blocked
                if self._paused_reason is None:
                    resume = time.strftime("%H:%M:%S", time.localtime(now + wait))
                    self._paused_reason = f"cost cap {what} reached"
                    log.warning("cost guard: %s; intake paused until about %s, files wait "
                                "in INBOX", self._paused_reason, resume)
                return max(wait, 0.01)
            if self._paused_reason is not None:
                log.info("cost guard: below the cap again, intake resumes")
                self._paused_reason = None
            self._load().append(now)
            self.journal.add_submit(key, now)
            return 0.0

    def acquire(self, key: str, cancel: CancelToken,
                give_up: Callable[[], bool] = lambda: False) -> bool:
        """Block until the caps allow one more submission; False if cancelled or given up."""
        while True:
            wait = self.try_acquire(key)
            if wait <= 0:
                return True
            if give_up() or cancel.wait(min(wait, 0.25)):
                return False
