"""When a dropped file is complete: size and mtime unchanged for a while, then it decodes.

Events and scans only *announce* a path (``seen``). The tracker stats it,
and again each time it is due; once ``(size, mtime)`` has not changed for
``stable_seconds`` on this daemon's clock (not the file server's) the path
is handed out by ``check_due``. Workers then try to decode it; a file that
does not decode is handed back with ``not_yet`` and only declared broken
after it has stayed unchanged for ``settle_seconds`` more, so a writer that
pauses mid-file is not mistaken for a corrupt image.

A path announced ``whole`` (moved into INBOX: see ``events``) is handed out
at once, marked ``early``, without the wait: a file renamed in was written
elsewhere and arrives complete. It is only a hint: the worker's completeness
check (it must decode) still decides, and a file that fails it, or changes,
goes back to the normal wait as if just seen, never to failed/. One early try
per pending file.

Memory is one small record per pending path; 10,000 pending files cost a
few megabytes.
"""

from __future__ import annotations

import heapq
import itertools
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass
class _Pending:
    size: int
    mtime_ns: int
    stable_since: float
    decode_failed_at: float | None = None
    handed_out: bool = False
    #: announced ``whole`` and not tried yet: hand it out without the wait
    whole: bool = False
    #: tried early once already (the hint is not taken again)
    tried_early: bool = False


@dataclass(frozen=True)
class Ready:
    path: Path
    size: int
    mtime_ns: int
    #: True when it failed to decode before and has been unchanged long enough since:
    #: a decode failure now is final.
    settled: bool
    #: handed out without the wait (announced whole): a decode failure or a change now
    #: means back to the normal wait.
    early: bool = False


class ReadinessTracker:
    """Thread-safe: watcher threads call ``seen``; the readiness thread ``check_due``."""

    def __init__(self, stable_seconds: float, settle_seconds: float, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stable_seconds = stable_seconds
        self.settle_seconds = settle_seconds
        self._clock = clock
        self._pending: dict[Path, _Pending] = {}
        self._heap: list[tuple[float, int, Path]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._closed = False

    def __len__(self) -> int:
        with self._cond:
            return len(self._pending)

    def seen(self, path: Path, *, whole: bool = False) -> None:
        """A path was created, modified or moved in (or found by a scan); ``whole``: it was
        moved in (see the module doc)."""
        with self._cond:
            entry = self._pending.get(path)
            if entry is not None and entry.handed_out:
                return
            if entry is None:
                stat = _stat(path)
                if stat is None:
                    return
                entry = self._pending[path] = _Pending(stat[0], stat[1], self._clock())
            if whole and not entry.tried_early:
                entry.whole = True
            self._schedule(path, self._clock())
            self._cond.notify_all()

    def _schedule(self, path: Path, at: float) -> None:
        heapq.heappush(self._heap, (at, next(self._seq), path))

    def forget(self, path: Path) -> None:
        """The path is finished with (claimed, vanished, or handled)."""
        with self._cond:
            self._pending.pop(path, None)

    def not_yet(self, ready: Ready, *, decode_failed: bool = True) -> None:
        """A handed-out file did not decode, or was changing: watch it again."""
        with self._cond:
            entry = self._pending.get(ready.path)
            if entry is None:
                return
            now = self._clock()
            entry.handed_out = False
            if ready.early:  # the hint was wrong: wait as if just seen
                decode_failed = False
            if not decode_failed:
                entry.decode_failed_at = None
                entry.stable_since = now
            elif entry.decode_failed_at is None:
                entry.decode_failed_at = now
            self._schedule(ready.path, now + max(self.stable_seconds, 0.05))
            self._cond.notify_all()

    def pending_paths(self) -> set[Path]:
        with self._cond:
            return set(self._pending)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def check_due(self) -> list[Ready]:
        """Stat every due path; return the ones that have become stable."""
        out: list[Ready] = []
        while True:
            with self._cond:
                now = self._clock()
                if not self._heap or self._heap[0][0] > now:
                    return out
                _at, _n, path = heapq.heappop(self._heap)
                entry = self._pending.get(path)
                if entry is None or entry.handed_out:
                    continue
            stat = _stat(path)  # outside the lock: may be slow on a share
            with self._cond:
                if self._pending.get(path) is not entry:
                    continue
                now = self._clock()
                if stat is None:
                    del self._pending[path]
                    continue
                if entry.whole:  # tried at once, as it is now (see the module doc)
                    entry.whole, entry.tried_early = False, True
                    entry.size, entry.mtime_ns = stat
                    entry.stable_since = now
                    entry.handed_out = True
                    out.append(Ready(path, entry.size, entry.mtime_ns, False, early=True))
                    continue
                if stat != (entry.size, entry.mtime_ns):
                    entry.size, entry.mtime_ns = stat
                    entry.stable_since = now
                    entry.decode_failed_at = None
                    self._schedule(path, now + self.stable_seconds)
                    continue
                stable_for = now - entry.stable_since
                if stable_for < self.stable_seconds:
                    self._schedule(path, entry.stable_since + self.stable_seconds)
                    continue
                settled = False
                if entry.decode_failed_at is not None:
                    since = now - entry.decode_failed_at
                    if since < self.settle_seconds:
                        # unchanged since it failed to decode: keep watching until it
                        # changes (a writer resumed) or settles (it is really broken)
                        step = max(self.stable_seconds, 0.25)
                        self._schedule(path, now + min(self.settle_seconds - since, step))
                        continue
                    settled = True
                entry.handed_out = True
                out.append(Ready(path, entry.size, entry.mtime_ns, settled))

    def wait_for_work(self, timeout: float) -> None:
        """Block the readiness thread until something is due or announced."""
        with self._cond:
            if self._closed:
                return
            now = self._clock()
            due = self._heap[0][0] - now if self._heap else timeout
            self._cond.wait(max(0.0, min(due, timeout)))


def _stat(path: Path) -> tuple[int, int] | None:
    """(size, mtime) of a regular file or a symbolic link (never followed: a link is handed
    out too, so the daemon moves it to failed/); None for anything else (FIFOs, devices and
    sockets stay where they are, unopened)."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
        return None
    return st.st_size, st.st_mtime_ns
