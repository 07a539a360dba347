"""When to retry a call to the service, and how long to wait first: small pure functions.

Retried: connection errors, timeouts and dropped connections, and the
statuses 408, 429 and 5xx. The wait honours the server's ``Retry-After``
(``retry-after-ms``, seconds, or an HTTP date) up to ``retry_after_max``;
otherwise it is a capped exponential backoff with full jitter. Every call of
one image shares one overall ``Deadline``; no wait may run past it.

The submit policy (a submit creates a task, and a task may be billed)
---------------------------------------------------------------------
A submit POST is sent again only when no task can have been created:

* the connection failed before the request was sent (``ConnectError``,
  ``ConnectTimeout``, ``PoolTimeout``: see ``request_not_sent``), or
* the service itself answered 408, 429, 500, 503 (or another 5xx) with an
  error that names no task id: it refused the request.

The exceptions are the gateway statuses 502 and 504 (sync or async mode): the
gateway in front of the service gave up, and the service behind it may have
created the task and may still run it. With a task id in the body the client
polls that id; without one it raises ``SubmitUncertainError``.

When the answer was lost after the request was sent (read timeout, the
connection dropped mid-answer, an answer that is not a valid envelope), the
task may exist and be billed. The request loop raises
``SubmitUncertainError``; the client then looks the task up in the
service's prediction list (``bgremove.wavespeed._reconcile``): found, it is
adopted; surely absent (the window settled, the clock checked), the image is
submitted again, the one safe resend; otherwise the error stands with the
reason, and nothing is sent again. Any error answer that does carry a task
id is followed by polling that id, never by a second POST.

Idempotent calls (the result GET, downloads, balance) and uploads are retried
under the normal rules.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timezone
from email.utils import parsedate_to_datetime

import httpx

#: Statuses worth another try: request timeout, rate limit, and every server error.
RETRY_STATUSES = frozenset({408, 429})
#: A gateway's answer: the service behind it may have created the task anyway.
GATEWAY_STATUSES = frozenset({502, 504})


def is_retryable_status(status: int) -> bool:
    """408, 429 and 5xx may succeed on another try; other statuses will not."""
    return status in RETRY_STATUSES or 500 <= status <= 599


def is_retryable_exception(exc: BaseException) -> bool:
    """Transport failures (connect, timeout, dropped connection) are worth another try."""
    return isinstance(exc, (httpx.TimeoutException, httpx.NetworkError,
                            httpx.RemoteProtocolError))


def request_not_sent(exc: BaseException) -> bool:
    """True when the request surely never reached the server, so no task can exist.

    A read/write timeout or a connection dropped mid-request does not qualify:
    the server may have the whole request already.
    """
    return isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout))


def should_retry_submit(status: int | None, exc: BaseException | None, *,
                        has_task_id: bool, sync: bool) -> bool:
    """The submit policy above as one predicate (``status`` None: a transport error)."""
    if exc is not None:
        return request_not_sent(exc)
    if status is None or has_task_id:
        return False
    if status in GATEWAY_STATUSES:
        return False
    return is_retryable_status(status)


def parse_retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds the server asked us to wait, or None when it did not say (or said nonsense).

    ``retry-after-ms`` (milliseconds) wins over ``retry-after`` (seconds, or an
    HTTP date compared with ``now``, a Unix time). Negative values count as 0.
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    raw_ms = lowered.get("retry-after-ms")
    if raw_ms is not None:
        try:
            value = float(raw_ms) / 1000.0
        except ValueError:
            value = math.nan
        if math.isfinite(value):
            return max(0.0, value)
    raw = lowered.get("retry-after")
    if raw is None or not raw.strip():
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if math.isfinite(value):
        return max(0.0, value)
    try:
        when = parsedate_to_datetime(raw.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000": an HTTP date is always GMT
        when = when.replace(tzinfo=timezone.utc)
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


def backoff_delay(attempt: int, *, initial: float, cap: float, spread: float | None = None,
                  rand: Callable[[], float] = random.random) -> float:
    """Capped exponential backoff around ``min(cap, initial * 2**(attempt-1))``: the one
    backoff of bgremove (the client's retries and the daemon's).

    ``attempt`` is the number of the attempt that just failed (1 for the first). With
    ``spread`` None the jitter is full: uniform in [0, ceiling]. With a spread ``s`` it is
    uniform in [(1-s), (1+s)] times the ceiling (``s=0``: exactly the ceiling).
    """
    ceiling = min(cap, initial * (2.0 ** min(max(attempt - 1, 0), 62)))
    if spread is None:
        return rand() * ceiling
    return ceiling * (1.0 - spread + 2.0 * spread * rand())


@dataclass(frozen=True)
class RetryDecision:
    """Whether to try again, after how long, and why not if not."""

    retry: bool
    delay: float = 0.0
    reason: str = ""


def decide(attempt: int, *, max_attempts: int, retry_after: float | None,
           retry_after_max: float, backoff_initial: float, backoff_max: float,
           remaining: float, rand: Callable[[], float] = random.random) -> RetryDecision:
    """Decide about the next attempt after attempt number ``attempt`` failed retryably.

    ``remaining`` is the time left before the overall deadline: a wait that
    would end past it is not started. A ``Retry-After`` longer than
    ``retry_after_max`` is not waited out here; the caller raises the error
    with ``retry_after`` so a scheduler (the daemon) can come back later.
    """
    if attempt >= max_attempts:
        return RetryDecision(False, reason=f"gave up after {attempt} attempts")
    if retry_after is not None:
        if retry_after > retry_after_max:
            return RetryDecision(False, reason=f"the service asked to wait {retry_after:.0f} s, "
                                 f"more than retry.retry_after_max ({retry_after_max:.0f} s)")
        delay = retry_after
    else:
        delay = backoff_delay(attempt, initial=backoff_initial, cap=backoff_max, rand=rand)
    if delay >= remaining:
        return RetryDecision(False, reason="no time left before the overall deadline "
                             "(wavespeed.timeouts.overall)")
    return RetryDecision(True, delay=delay)


class Deadline:
    """The overall time budget of one image, over every attempt and every poll."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self._clock = clock
        self._end = clock() + seconds

    def remaining(self) -> float:
        return self._end - self._clock()

    @property
    def expired(self) -> bool:
        return self.remaining() <= 0.0

    def extend(self, seconds: float) -> None:
        """Move the end ``seconds`` later (time spent waiting on this machine, not the service)."""
        self._end += max(0.0, seconds)

    def clamp(self, seconds: float) -> float:
        """``seconds``, shortened so it ends at the deadline (never below 1 ms)."""
        return max(0.001, min(seconds, self.remaining()))
