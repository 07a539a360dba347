"""The emulator's counters (``Emulator.stats()``), guarded by one lock."""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from typing import Any

COUNTERS = (
    "requests_total", "connections", "uploads", "upload_bytes", "tasks_submitted",
    "tasks_completed", "tasks_failed", "duplicate_submits", "max_concurrent_tasks",
    "rate_limited", "sync_timeouts", "auth_failures", "bytes_in", "bytes_out", "answers_lost")


class Stats:
    """Counters by name, requests by route and method, answers by status, faults by kind,
    tasks per uploaded content and one entry per upload (at most ``max_kept`` of each)."""

    def __init__(self, max_kept: int) -> None:
        self._lock = threading.Lock()
        self._max_kept = max_kept
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._requests: dict[str, dict[str, int]] = {}
            self._status_codes: dict[str, int] = {}
            self._faults: dict[str, int] = {}
            self._counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
            self._digests: OrderedDict[str, int] = OrderedDict()
            self._uploads: deque[dict[str, Any]] = deque(maxlen=self._max_kept)

    def add(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._counters[name] += amount

    def high_water(self, name: str, value: int) -> None:
        """Raise counter ``name`` to ``value`` if it is lower."""
        with self._lock:
            self._counters[name] = max(self._counters[name], value)

    def request(self, route: str, method: str, size: int) -> None:
        with self._lock:
            per_route = self._requests.setdefault(route, {})
            per_route[method] = per_route.get(method, 0) + 1
            self._counters["requests_total"] += 1
            self._counters["bytes_in"] += size

    def answer(self, status: int, size: int) -> None:
        with self._lock:
            key = str(status)
            self._status_codes[key] = self._status_codes.get(key, 0) + 1
            self._counters["bytes_out"] += size

    def fault(self, kind: str) -> None:
        with self._lock:
            self._faults[kind] = self._faults.get(kind, 0) + 1

    def upload(self, entry: dict[str, Any]) -> None:
        """Count an upload; ``entry`` has its filename, content_type, bytes (the file's),
        received (the request body's, form framing included), sha256, began and ended."""
        with self._lock:
            self._counters["uploads"] += 1
            self._counters["upload_bytes"] += entry["bytes"]
            self._uploads.append(entry)

    def task(self, digest: str | None) -> None:
        """Count a submitted task, per uploaded content when it is one of ours."""
        with self._lock:
            self._counters["tasks_submitted"] += 1
            if digest is None:
                return
            seen = self._digests.pop(digest, 0)
            if seen:
                self._counters["duplicate_submits"] += 1
            self._digests[digest] = seen + 1
            if len(self._digests) > self._max_kept:
                self._digests.popitem(last=False)

    def tasks_for(self, digest: str) -> int:
        with self._lock:
            return self._digests.get(digest, 0)

    def count(self, route: str, method: str | None = None) -> int:
        with self._lock:
            methods = self._requests.get(route, {})
            return methods.get(method, 0) if method else sum(methods.values())

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            snapshot: dict[str, Any] = dict(self._counters)
            snapshot["tasks_per_content"] = dict(self._digests)
            snapshot["upload_log"] = [dict(entry) for entry in self._uploads]
            snapshot["requests"] = {k: dict(v) for k, v in self._requests.items()}
            snapshot["status_codes"] = dict(self._status_codes)
            snapshot["faults"] = dict(self._faults)
        return snapshot
