"""One thread that keeps the next poll of every waiting task and hands each out when due.

Thousands of tasks waiting on the service cost one heap entry each, not a thread:
``Poller`` sleeps until the earliest entry is due, then passes its action to ``run``
(the pipeline puts it on its IO pool, where the short GET is made) and sleeps again.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable

Action = Callable[[], None]


class Poller:
    """A heap of (due time, action); its thread starts with the first ``add``."""

    def __init__(self, run: Callable[[Action], None], *, name: str = "bgremove-poller",
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._run = run
        self._name = name
        self._clock = clock
        self._heap: list[tuple[float, int, Action]] = []
        self._order = itertools.count()
        self._cond = threading.Condition()
        self._flush = False
        self._closed = False
        self._thread: threading.Thread | None = None

    def __len__(self) -> int:
        with self._cond:
            return len(self._heap)

    def add(self, delay: float, action: Action) -> None:
        """Run ``action`` (through ``run``) ``delay`` seconds from now."""
        with self._cond:
            if self._closed:
                raise RuntimeError("the poller is closed")
            heapq.heappush(self._heap, (self._clock() + max(0.0, delay), next(self._order),
                                        action))
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
                self._thread.start()
            elif self._heap[0][2] is action:
                self._cond.notify()  # earlier than what the thread sleeps towards

    def flush(self) -> None:
        """Hand out every action now, and later ones at once (after a cancel: each then sees
        it and ends)."""
        with self._cond:
            self._flush = True
            self._cond.notify()

    def close(self) -> None:
        """Stop the thread, handing out at once the actions still waiting."""
        with self._cond:
            self._closed = True
            left = [action for _, _, action in sorted(self._heap)]
            self._heap.clear()
            self._cond.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        for action in left:
            self._run(action)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._closed:
                    if self._heap and (self._flush or self._heap[0][0] <= self._clock()):
                        break
                    self._cond.wait(self._heap[0][0] - self._clock() if self._heap else None)
                if self._closed:
                    return
                now = self._clock()
                due: list[Action] = []
                while self._heap and (self._flush or self._heap[0][0] <= now):
                    due.append(heapq.heappop(self._heap)[2])
            for action in due:
                self._run(action)
