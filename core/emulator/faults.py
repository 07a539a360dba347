"""Fault injection: which request gets which misbehaviour.

A ``Fault`` targets one route (or ``"*"``) and fires for the first N matching
requests, every Nth one, and/or at a seeded random rate, so tests are
deterministic. Kinds:

    status      answer ``status`` (429 may carry Retry-After, in seconds or HTTP-date form);
                with ``after=True`` on submit the task is created and the error carries no id
    drop        close the socket without an answer; with ``after=True`` on submit the task is
                created first and the answer is lost (in sync mode when the wait ends)
    malformed   answer 200 with a body that is not valid JSON
    truncate    a download announces its full length, sends part of it and closes
    fail_task   (submit) the task is created but ends ``failed`` with task ``code``
    delay       wait ``seconds`` before handling the request

The text form used by ``bgremove emulator --fault`` is
``KIND[,key=value...]``, e.g. ``status,route=submit,status=429,every=3,retry_after=2``.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field, fields
from email.utils import formatdate
from typing import Any

from bgremove.errors import ConfigError

FAULT_KINDS = ("status", "drop", "malformed", "truncate", "fail_task", "delay")
#: Route names requests are counted under (``stats()["requests"]``) and faults target.
ROUTES = ("submit", "result", "list", "upload", "upload_put", "upload_binary", "media", "download",
          "balance", "control", "unknown")
#: Fault route aliases that cover several routes.
ROUTE_GROUPS = {
    "*": ROUTES,
    "uploads": ("upload", "upload_put", "upload_binary"),
    "downloads": ("media", "download"),
}

TASK_ERRORS = {
    1200: "The content was flagged by moderation",
    1400: "Missing required parameter",
    1401: "Invalid parameter",
    1402: "Failed to access the input media: the URL expired or is unreachable",
    1403: "Task failed",
    1405: "Task failed",
    5000: "Internal server error",
    5003: "Service temporarily unavailable",
    5004: "Task timed out",
}


@dataclass(frozen=True)
class Fault:
    """One injected misbehaviour; see the module docstring."""

    kind: str
    route: str = "*"
    status: int = 500
    code: int = 5000  # task code for fail_task
    first: int = 0  # the first N matching requests
    every: int = 0  # every Nth matching request
    rate: float = 0.0  # probability per matching request (seeded)
    after: bool = False  # drop/status on submit: after the task was created
    retry_after: str | None = None  # seconds ("2") or "date" for an HTTP-date that far ahead
    seconds: float = 0.0  # for delay
    fraction: float = 0.5  # for truncate: share of the body sent

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ConfigError(f"unknown fault kind {self.kind!r}",
                              hint=f"allowed: {', '.join(FAULT_KINDS)}")
        if self.route not in ROUTES and self.route not in ROUTE_GROUPS:
            raise ConfigError(f"unknown fault route {self.route!r}",
                              hint=f"allowed: {', '.join((*ROUTES, *ROUTE_GROUPS))}")
        if not (self.first or self.every or self.rate):
            raise ConfigError(f"fault {self.kind!r} never fires",
                              hint="give first=N, every=N or rate=P")
        if not 0.0 <= self.rate <= 1.0:
            raise ConfigError(f"fault rate {self.rate} is not between 0 and 1")
        if not 0.0 <= self.fraction < 1.0:
            raise ConfigError(f"truncate fraction {self.fraction} must be in [0, 1)")

    def covers(self, route: str) -> bool:
        return route == self.route or route in ROUTE_GROUPS.get(self.route, ())

    def retry_after_header(self) -> str | None:
        """The Retry-After value to send, if any."""
        if self.retry_after is None:
            return None
        if self.retry_after.startswith("date"):
            # "date" or "date:N": an HTTP-date N seconds ahead (default 1)
            _, _, ahead = self.retry_after.partition(":")
            import time

            return formatdate(time.time() + float(ahead or 1), usegmt=True)
        return self.retry_after

    @classmethod
    def parse(cls, spec: str) -> Fault:
        """Parse ``KIND[,key=value...]`` (the ``--fault`` flag)."""
        kind, *pairs = [part.strip() for part in spec.split(",") if part.strip()] or [""]
        types = {f.name: f.type for f in fields(cls)}
        values: dict[str, Any] = {"kind": kind}
        for pair in pairs:
            key, sep, raw = pair.partition("=")
            key = key.strip().replace("-", "_")
            if not sep or key not in types or key == "kind":
                raise ConfigError(f"bad fault setting {pair!r} in {spec!r}",
                                  hint="use key=value with keys: "
                                  + ", ".join(n for n in types if n != "kind"))
            kind_of = str(types[key])
            try:
                if kind_of == "int":
                    values[key] = int(raw)
                elif kind_of == "float":
                    values[key] = float(raw)
                elif kind_of == "bool":
                    values[key] = raw.lower() in ("1", "true", "yes", "on")
                else:
                    values[key] = raw
            except ValueError:
                raise ConfigError(f"fault setting {key}={raw!r} is not a {kind_of}") from None
        return cls(**values)


@dataclass
class FaultPlan:
    """Decides, request by request, which faults fire. Thread-safe."""

    faults: tuple[Fault, ...] = ()
    seed: int = 0
    _counts: list[int] = field(default_factory=list, init=False)
    _random: random.Random = field(init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def __post_init__(self) -> None:
        self._counts = [0] * len(self.faults)
        self._random = random.Random(self.seed)

    def pick(self, route: str, kinds: tuple[str, ...], *, after: bool = False) -> list[Fault]:
        """The faults of ``kinds`` that fire for this request to ``route``.

        ``after`` selects the status/drop faults meant for after a submit created its task.
        """
        fired: list[Fault] = []
        with self._lock:
            for index, fault in enumerate(self.faults):
                if fault.kind not in kinds or not fault.covers(route):
                    continue
                if fault.kind in ("status", "drop") and fault.after != after:
                    continue
                self._counts[index] += 1
                n = self._counts[index]
                if (n <= fault.first or (fault.every and n % fault.every == 0)
                        or (fault.rate and self._random.random() < fault.rate)):
                    fired.append(fault)
        return fired

    def reset(self) -> None:
        with self._lock:
            self._counts = [0] * len(self.faults)
            self._random = random.Random(self.seed)


def task_error(code: int) -> str:
    return TASK_ERRORS.get(code, "Task failed")
