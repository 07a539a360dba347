"""The retry policy as a table: what is retried, how long each wait is, when to give up."""

from __future__ import annotations

from email.utils import formatdate

import httpx
import pytest

from bgremove import retry

NOW = 1_700_000_000.0
REQUEST = httpx.Request("POST", "https://api.example/api/v3/x")


@pytest.mark.parametrize(("status", "expected"), [
    (200, False), (400, False), (401, False), (403, False), (404, False), (413, False),
    (408, True), (429, True), (500, True), (502, True), (503, True), (504, True), (599, True),
])
def test_retryable_status(status: int, expected: bool) -> None:
    assert retry.is_retryable_status(status) is expected


TRANSPORT_CASES = [
    # exception, retryable for idempotent calls, surely not sent (a submit may be retried)
    (httpx.ConnectError("refused", request=REQUEST), True, True),
    (httpx.ConnectTimeout("slow", request=REQUEST), True, True),
    (httpx.PoolTimeout("pool", request=REQUEST), True, True),
    (httpx.ReadTimeout("read", request=REQUEST), True, False),
    (httpx.WriteTimeout("write", request=REQUEST), True, False),
    (httpx.ReadError("reset", request=REQUEST), True, False),
    (httpx.WriteError("broken pipe", request=REQUEST), True, False),
    (httpx.RemoteProtocolError("peer closed", request=REQUEST), True, False),
    (httpx.UnsupportedProtocol("ftp", request=REQUEST), False, False),
    (httpx.DecodingError("bad gzip", request=REQUEST), False, False),
]


@pytest.mark.parametrize(("exc", "retryable", "not_sent"), TRANSPORT_CASES,
                         ids=[type(c[0]).__name__ for c in TRANSPORT_CASES])
def test_transport_errors(exc: Exception, retryable: bool, not_sent: bool) -> None:
    assert retry.is_retryable_exception(exc) is retryable
    assert retry.request_not_sent(exc) is not_sent


@pytest.mark.parametrize(("status", "exc", "has_id", "sync", "expected"), [
    # the request never left: no task can exist
    (None, httpx.ConnectError("x", request=REQUEST), False, True, True),
    (None, httpx.ConnectTimeout("x", request=REQUEST), False, False, True),
    (None, httpx.PoolTimeout("x", request=REQUEST), False, True, True),
    # the answer was lost after sending: the task may exist and be billed
    (None, httpx.ReadTimeout("x", request=REQUEST), False, True, False),
    (None, httpx.ReadError("x", request=REQUEST), False, False, False),
    (None, httpx.RemoteProtocolError("x", request=REQUEST), False, True, False),
    (None, httpx.WriteTimeout("x", request=REQUEST), False, True, False),
    # the server refused before creating anything
    (429, None, False, True, True), (500, None, False, False, True),
    (503, None, False, True, True), (408, None, False, True, True),
    # a gateway 502/504 without an id, sync or async: the task may exist behind it
    (504, None, False, False, False), (502, None, False, False, False),
    (502, None, False, True, False), (504, None, False, True, False),
    # an answer naming a task: the task exists, poll it instead
    (500, None, True, False, False), (429, None, True, True, False), (504, None, True, True, False),
    # not retryable at all
    (400, None, False, True, False), (401, None, False, False, False),
])
def test_submit_policy(status: int | None, exc: Exception | None, has_id: bool, sync: bool,
                       expected: bool) -> None:
    assert retry.should_retry_submit(status, exc, has_task_id=has_id, sync=sync) is expected


@pytest.mark.parametrize(("headers", "expected"), [
    ({}, None),
    ({"Retry-After": "3"}, 3.0),
    ({"retry-after": "1.5"}, 1.5),
    ({"Retry-After": "0"}, 0.0),
    ({"Retry-After": "-4"}, 0.0),
    ({"retry-after-ms": "250"}, 0.25),
    ({"retry-after-ms": "250", "Retry-After": "9"}, 0.25),  # ms wins
    ({"retry-after-ms": "soon", "Retry-After": "9"}, 9.0),  # a bad ms falls back
    ({"Retry-After": formatdate(NOW + 20, usegmt=True)}, 20.0),
    ({"Retry-After": formatdate(NOW - 20, usegmt=True)}, 0.0),  # a date in the past
    ({"Retry-After": formatdate(NOW + 7, localtime=False)}, 7.0),  # "-0000" form
    ({"Retry-After": "next tuesday"}, None),
    ({"Retry-After": "  "}, None),
    ({"Retry-After": "nan"}, None),
    ({"Retry-After": "inf"}, None),
])
def test_parse_retry_after(headers: dict[str, str], expected: float | None) -> None:
    got = retry.parse_retry_after(headers, now=NOW)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected)


@pytest.mark.parametrize(("attempt", "ceiling"), [
    (1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (6, 16.0), (7, 30.0), (50, 30.0), (10_000, 30.0),
])
def test_backoff_full_jitter_bounds(attempt: int, ceiling: float) -> None:
    assert retry.backoff_delay(attempt, initial=0.5, cap=30.0, rand=lambda: 0.0) == 0.0
    assert retry.backoff_delay(attempt, initial=0.5, cap=30.0,
                               rand=lambda: 0.999999) == pytest.approx(ceiling, rel=1e-5)
    assert retry.backoff_delay(attempt, initial=0.5, cap=30.0,
                               rand=lambda: 0.5) == pytest.approx(ceiling / 2)


@pytest.mark.parametrize(("attempt", "ceiling"), [(1, 0.5), (3, 2.0), (7, 30.0), (50, 30.0)])
def test_backoff_with_a_spread_stays_around_the_ceiling(attempt: int, ceiling: float) -> None:
    # The daemon's form: never much sooner than planned (spread 0.2), or exactly (spread 0).
    def delay(spread: float, r: float) -> float:
        return retry.backoff_delay(attempt, initial=0.5, cap=30.0, spread=spread,
                                   rand=lambda: r)

    assert delay(0.2, 0.0) == pytest.approx(0.8 * ceiling)
    assert delay(0.2, 0.5) == pytest.approx(ceiling)
    assert delay(0.2, 0.999999) == pytest.approx(1.2 * ceiling, rel=1e-5)
    assert delay(0.0, 0.123) == pytest.approx(ceiling)


def test_backoff_is_jittered_with_the_real_random_source() -> None:
    delays = {retry.backoff_delay(5, initial=1.0, cap=8.0) for _ in range(50)}
    assert len(delays) > 40  # not a constant
    assert all(0.0 <= d <= 8.0 for d in delays)


POLICY = {"max_attempts": 4, "retry_after_max": 60.0, "backoff_initial": 1.0,
          "backoff_max": 10.0}


@pytest.mark.parametrize(("attempt", "retry_after", "remaining", "retry_", "delay", "reason"), [
    (1, None, 100.0, True, 0.5, ""),              # backoff: 1.0 * 2**0 * rand(0.5)
    (3, None, 100.0, True, 2.0, ""),              # 1.0 * 2**2 * 0.5
    (1, 5.0, 100.0, True, 5.0, ""),               # Retry-After is honoured as given
    (1, 0.0, 100.0, True, 0.0, ""),
    (2, 60.0, 100.0, True, 60.0, ""),             # exactly the cap
    (2, 61.0, 100.0, False, 0.0, "retry_after_max"),  # over the cap: give up, caller reports
    (4, None, 100.0, False, 0.0, "after 4 attempts"),  # attempts used up
    (4, 1.0, 100.0, False, 0.0, "after 4 attempts"),
    (1, 5.0, 4.0, False, 0.0, "deadline"),       # the wait would end past the deadline
    (1, None, 0.1, False, 0.0, "deadline"),      # backoff 0.5 > 0.1 left
])
def test_decide(attempt: int, retry_after: float | None, remaining: float, retry_: bool,
                delay: float, reason: str) -> None:
    decision = retry.decide(attempt, retry_after=retry_after, remaining=remaining,
                            rand=lambda: 0.5, **POLICY)  # type: ignore[arg-type]
    assert decision.retry is retry_
    assert decision.delay == pytest.approx(delay)
    assert reason in decision.reason


def test_deadline_with_an_injected_clock() -> None:
    now = [100.0]
    deadline = retry.Deadline(10.0, clock=lambda: now[0])
    assert deadline.remaining() == 10.0 and not deadline.expired
    assert deadline.clamp(30.0) == 10.0
    assert deadline.clamp(3.0) == 3.0
    now[0] = 109.5
    assert deadline.clamp(30.0) == pytest.approx(0.5)
    now[0] = 110.0
    assert deadline.expired
    assert deadline.clamp(30.0) == 0.001  # a request never gets an unlimited or zero timeout
