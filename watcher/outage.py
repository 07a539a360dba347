"""A problem no single file can fix (the service unreachable, the API key refused or the
account suspended, the offline model missing): intake pauses with one line, one file tries
again every ``retry_seconds``, and the first success resumes intake. Nothing goes to failed/
for it."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from bgremove.errors import (
    AccountSuspendedError,
    AuthenticationError,
    ModelError,
    TransportError,
)
from bgremove.watcher.naming import shown

if TYPE_CHECKING:
    from bgremove.errors import BgremoveError

log = logging.getLogger(__name__)

#: (what the pause line says, what the resume line says) per kind of outage.
SERVICE = ("service unreachable", "the service answers again")
MODEL = ("offline model unavailable", "the offline model works again")
# Every file would fail alike (a new key answers 401 until the account is topped up).
KEY = ("API key refused", "the service accepts the key again")
SUSPENDED = ("account suspended", "the account works again")


def outage_of(exc: BgremoveError) -> tuple[str, str] | None:
    """The outage an error shows, or None when it is about this file only."""
    if isinstance(exc, ModelError):
        return MODEL
    if isinstance(exc, TransportError):
        return SERVICE
    if isinstance(exc, AuthenticationError):
        return KEY
    if isinstance(exc, AccountSuspendedError):
        return SUSPENDED
    return None


class Outage:
    """Whether intake is paused for an outage; ``reason`` holds what the pause line said."""

    def __init__(self, retry_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.retry_seconds = retry_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self.reason: str | None = None
        self._resumed = ""
        self._next_try = 0.0

    def begin(self, kind: tuple[str, str], exc: BgremoveError) -> bool:
        """Pause intake (or keep it paused after a failed try); True when this starts it."""
        with self._lock:
            newly = self.reason is None
            self.reason, self._resumed = kind
            self._next_try = self._clock() + self.retry_seconds
        if newly:
            log.error("%s: intake paused, retrying every %.0f s (%s)", kind[0],
                      self.retry_seconds, shown(exc),
                      extra={"event": "warning", "error_kind": exc.kind})
        else:
            log.debug("still %s: %s", kind[0], exc)
        return newly

    def may_try(self) -> bool:
        """True when not paused, and once every ``retry_seconds`` while paused."""
        with self._lock:
            if self.reason is None:
                return True
            now = self._clock()
            if now < self._next_try:
                return False
            self._next_try = now + self.retry_seconds
            return True

    def end(self) -> None:
        """A job succeeded: resume intake (one line if it was paused)."""
        with self._lock:
            was, self.reason = self.reason, None
        if was is not None:
            log.warning("%s: resuming intake", self._resumed)
