"""How fast the daemon may go: concurrency, images per minute, and the cost guard.

The account's level and images per minute (``bgremove.account``: ``wavespeed.*``, or
``watch.*`` for the daemon alone) are a ceiling: the daemon never runs more tasks at once,
nor submits more images a minute, than the level allows, whatever ``watch.concurrency``
and ``watch.images_per_minute`` say.

The cost guard counts submissions (from the journal, so a restart keeps the
count) in a sliding hour and day; when a cap is reached intake pauses with
one log line and resumes by itself when the window moves on. Nothing is
dropped: files not started yet wait in INBOX (or in the daemon's claim folder).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bgremove.account import account_limits

if TYPE_CHECKING:
    from bgremove.config import Config
    from bgremove.contract import CancelToken
    from bgremove.watcher.journal import Journal

log = logging.getLogger(__name__)

HOUR, DAY = 3600.0, 86400.0


@dataclass(frozen=True)
class Limits:
    concurrency: int
    images_per_minute: int  # 0: no limit
    max_per_hour: int
    max_per_day: int


def effective_limits(config: Config) -> Limits:
    """The daemon's limits: the account's (``bgremove.account``) and the cost guard's."""
    account = account_limits(config, daemon=True)
    # no cap for threads: a task in flight needs none (``bgremove.stages``)
    return Limits(account.concurrency, account.images_per_minute,
                  config.watch.max_per_hour, config.watch.max_per_day)


class CostGuard:
    """Caps on submissions per sliding hour and day, counted in the journal.

    A submission counts once the service has given it a task id (``commit``, from
    ``JobHooks.on_task``), not per attempt: an upload that failed costs nothing. Between
    the check and the task id a slot is *reserved* in memory so concurrent workers
    cannot overshoot the cap. Counts are read from the journal at every check, so
    daemons sharing one journal share one cap.
    """

    def __init__(self, journal: Journal, *, per_hour: int, per_day: int,
                 clock: Callable[[], float] = time.time) -> None:
        self.journal = journal
        self.per_hour = per_hour
        self.per_day = per_day
        self._clock = clock
        self._lock = threading.Lock()
        self._paused_reason: str | None = None
        self._reserved = 0
        self._pruned = False

    @property
    def enabled(self) -> bool:
        return self.per_hour > 0 or self.per_day > 0

    @property
    def paused(self) -> str | None:
        """Why intake is paused, or None."""
        return self._paused_reason

    def _blocked_for(self, now: float) -> tuple[float, str] | None:
        if not self._pruned:
            self.journal.prune(now - DAY - 60)
            self._pruned = True
        if self.per_day:
            count, oldest = self.journal.submit_window(now - DAY)
            if count + self._reserved >= self.per_day:
                return DAY - (now - (oldest or now)), f"watch.max_per_day={self.per_day}"
        if self.per_hour:
            count, oldest = self.journal.submit_window(now - HOUR)
            if count + self._reserved >= self.per_hour:
                return HOUR - (now - (oldest or now)), f"watch.max_per_hour={self.per_hour}"
        return None

    def _resumed(self) -> None:
        if self._paused_reason is not None:
            log.info("cost guard: below the cap again, intake resumes")
            self._paused_reason = None

    def open_now(self) -> bool:
        """True if one more submission is allowed now (nothing reserved)."""
        if not self.enabled:
            return True
        with self._lock:
            if self._blocked_for(self._clock()) is not None:
                return False
            self._resumed()
            return True

    def reserve(self) -> float:
        """Reserve a submission and return 0, or return seconds to wait (nothing reserved).
        Follow with ``commit`` once the task id is known, or ``release``."""
        if not self.enabled:
            return 0.0
        with self._lock:
            now = self._clock()
            blocked = self._blocked_for(now)
            if blocked is not None:
                wait, what = blocked
                if self._paused_reason is None:
                    resume = time.strftime("%H:%M:%S", time.localtime(now + wait))
                    self._paused_reason = f"cost cap {what} reached"
                    log.warning("cost guard: %s; intake paused until about %s (files not "
                                "started yet wait in INBOX or in the claim folder; nothing is "
                                "dropped)", self._paused_reason, resume)
                return max(wait, 0.01)
            self._resumed()
            self._reserved += 1
            return 0.0

    def commit(self, key: str) -> None:
        """The reserved submission happened (a task id exists): record it in the journal."""
        with self._lock:
            self.journal.add_submit(key, self._clock())
            if self.enabled and self._reserved > 0:
                self._reserved -= 1

    def release(self) -> None:
        """The reserved submission did not happen."""
        with self._lock:
            if self.enabled and self._reserved > 0:
                self._reserved -= 1

    def try_acquire(self, key: str) -> float:
        """Reserve and record at once (0), or return seconds to wait."""
        wait = self.reserve()
        if wait <= 0:
            self.commit(key)
        return wait

    def acquire(self, cancel: CancelToken,
                give_up: Callable[[], bool] = lambda: False) -> bool:
        """Block until the caps allow one more submission and reserve it; False if
        cancelled or given up."""
        while True:
            wait = self.reserve()
            if wait <= 0:
                return True
            if give_up() or cancel.wait(min(wait, 0.25)):
                return False
