"""What the emulated service keeps: uploaded files, upload tickets, tasks and their outputs.

Everything lives in memory for ``retention`` seconds of the service's clock (7 days, like
the service), the oldest entries dropped sooner beyond a count or byte budget.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Generic, TypeVar

from bgremove.emulator.options import MODEL_ID, EmulatorOptions

K = TypeVar("K")
V = TypeVar("V")
TERMINAL = ("completed", "failed")


class BoundedStore(Generic[K, V]):
    """An insertion-ordered map that drops its oldest entries beyond a count or byte budget."""

    def __init__(self, max_items: int, max_bytes: int, size_of: Callable[[V], int]) -> None:
        self._items: OrderedDict[K, V] = OrderedDict()
        self._max_items, self._max_bytes, self._size_of = max_items, max_bytes, size_of
        self._bytes = 0
        self._lock = threading.Lock()
        self.evicted = 0

    def put(self, key: K, value: V) -> None:
        with self._lock:
            if key in self._items:
                self._bytes -= self._size_of(self._items.pop(key))
            self._items[key] = value
            self._bytes += self._size_of(value)
            while len(self._items) > 1 and (
                    len(self._items) > self._max_items or self._bytes > self._max_bytes):
                _, old = self._items.popitem(last=False)
                self._bytes -= self._size_of(old)
                self.evicted += 1

    def get(self, key: K) -> V | None:
        with self._lock:
            return self._items.get(key)

    def __len__(self) -> int:
        return len(self._items)

    def values(self) -> list[V]:
        with self._lock:
            return list(self._items.values())


@dataclass
class Media:
    """An uploaded file."""

    filename: str
    content_type: str
    data: bytes
    created: float  # the service's clock


@dataclass
class Ticket:
    """A direct upload's promise: the PUT must bring exactly this."""

    filename: str
    content_type: str
    size: int


@dataclass
class Task:
    """One prediction, from submit to its end."""

    id: str
    created: float  # the service's clock, whole milliseconds (what created_at shows)
    image_url: str
    image: bytes | None  # None: not one of ours (the task fails with 1402)
    base64_output: bool
    public_base: str
    input: dict[str, Any]  # the submit's JSON body
    seq: int  # submit order, to sort tasks created in the same millisecond
    fail_code: int | None = None
    status: str = "created"
    outputs: list[str] = field(default_factory=list)
    error: str = ""
    code: int | None = None
    inference_ms: int = 0
    done: threading.Event = field(default_factory=threading.Event)
    # Set by the first ``end_delays()`` after the task was created (the service's)
    delays_over: threading.Event = field(default_factory=threading.Event)
    # What an async submit answers: the task as created, before it ran
    submitted: dict[str, Any] = field(default_factory=dict)

    def prediction(self, *, with_input: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id,
            "model": MODEL_ID,
            "outputs": list(self.outputs),
            "urls": {"get": f"{self.public_base}/api/v3/predictions/{self.id}/result"},
            "has_nsfw_contents": [False] * len(self.outputs),
            "status": self.status,
            "created_at": datetime.fromtimestamp(self.created, timezone.utc)
            .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "error": self.error,
            "executionTime": self.inference_ms,
            "timings": {"inference": self.inference_ms},
        }
        if self.code is not None:
            data["code"] = self.code
        if with_input:
            data["input"] = dict(self.input)
        return data


class Store:
    """The service's memory; lookups see only what is within the retention window."""

    def __init__(self, options: EmulatorOptions, clock: Callable[[], float]) -> None:
        self._retention, self._clock = options.retention, clock
        self.media: BoundedStore[str, Media] = BoundedStore(
            options.max_stored, options.max_stored_bytes, lambda m: len(m.data))
        self.tickets: BoundedStore[str, Ticket] = BoundedStore(
            options.max_stored, 1 << 62, lambda t: 1)
        self.outputs: BoundedStore[str, bytes] = BoundedStore(
            options.max_stored, options.max_stored_bytes, len)
        self.tasks: BoundedStore[str, Task] = BoundedStore(
            options.max_stored, 1 << 62, lambda t: 1)

    def live(self, created: float) -> bool:
        """Whether something created at ``created`` (service clock) is still kept."""
        return self._clock() - created < self._retention

    def task(self, task_id: str) -> Task | None:
        task = self.tasks.get(task_id)
        return task if task is not None and self.live(task.created) else None

    def live_tasks(self) -> list[Task]:
        return [task for task in self.tasks.values() if self.live(task.created)]

    def file(self, token: str) -> Media | None:
        media = self.media.get(token)
        return media if media is not None and self.live(media.created) else None

    def output(self, task_id: str) -> bytes | None:
        return self.outputs.get(task_id) if self.task(task_id) is not None else None

    def sizes(self) -> dict[str, int]:
        return {"media": len(self.media), "outputs": len(self.outputs), "tasks": len(self.tasks)}

    @property
    def evicted(self) -> int:
        return self.media.evicted + self.outputs.evicted + self.tasks.evicted
