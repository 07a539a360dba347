"""The in-memory work queue: files (ready or claimed) ordered by when they are due."""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bgremove.errors import BgremoveError
    from bgremove.watcher.readiness import Ready


@dataclass(order=True)
class WorkItem:
    due: float
    seq: int
    ready: Ready | None = dataclasses.field(default=None, compare=False)
    claimed: Path | None = dataclasses.field(default=None, compare=False)
    rel: Path | None = dataclasses.field(default=None, compare=False)
    input_error: BgremoveError | None = dataclasses.field(default=None, compare=False)


class Scheduler:
    """Work items by due time; workers block in ``get``."""

    def __init__(self) -> None:
        self._heap: list[WorkItem] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._closed = False

    def put(self, due: float = 0.0, **fields: Any) -> None:
        with self._cond:
            heapq.heappush(self._heap, WorkItem(due, next(self._seq), **fields))
            self._cond.notify()

    def get(self, timeout: float) -> WorkItem | None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                now = time.monotonic()
                if self._closed:
                    return None
                if self._heap and self._heap[0].due <= now:
                    return heapq.heappop(self._heap)
                wait = deadline - now
                if self._heap:
                    wait = min(wait, self._heap[0].due - now)
                if wait <= 0 and now >= deadline:
                    return None
                self._cond.wait(max(wait, 0.001))

    def __len__(self) -> int:
        with self._cond:
            return len(self._heap)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
