"""The batch runner in core (``bgremove.batch``), without the command line around it."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from PIL import Image

from bgremove.batch import Breaker, plan_outputs, run_batch
from bgremove.config import Config
from bgremove.contract import Cutout, JobHooks
from bgremove.errors import (
    AccountSuspendedError,
    AuthenticationError,
    BgremoveError,
    NotAttemptedError,
    ProtocolError,
    RateLimitError,
    ServiceConnectionError,
    ServiceTimeoutError,
)
from bgremove.jobs import JobResult
from tests.images import tiny_pngs


def _result(error: BgremoveError | None) -> JobResult:
    return JobResult(Path("x.png"), None, "failed" if error else "ok", error, 0.0)


REFUSED = [AuthenticationError("401", status_code=401),
           AccountSuspendedError("403", status_code=403)]
OUTAGE = [ServiceConnectionError("refused"), ServiceTimeoutError("timed out")]
OTHER = [None, ProtocolError("bad json"), RateLimitError("429", status_code=429),
         BgremoveError("something")]


@pytest.mark.parametrize("error", REFUSED, ids=lambda e: type(e).__name__)
def test_a_refusal_trips_at_once_and_names_the_reason(error: BgremoveError) -> None:
    breaker = Breaker()
    assert breaker.trips(_result(error))
    assert not breaker.trips(_result(error))  # once
    with pytest.raises(NotAttemptedError) as info:
        breaker.check(Path("later.png"))
    skipped = info.value
    assert skipped.kind == "not_attempted"
    assert str(error) in str(skipped) and "later.png" in str(skipped)


@pytest.mark.parametrize("other", OTHER, ids=lambda e: type(e).__name__)
def test_an_outage_trips_after_three_in_a_row_and_anything_else_resets_the_count(
        other: BgremoveError | None) -> None:
    breaker = Breaker()
    assert not breaker.trips(_result(OUTAGE[0]))
    assert not breaker.trips(_result(OUTAGE[1]))
    assert not breaker.trips(_result(other))
    assert not breaker.trips(_result(OUTAGE[0]))
    assert not breaker.trips(_result(OUTAGE[1]))
    assert breaker.trips(_result(OUTAGE[0]))


class RefusingBackend:
    """Refuses the key on every image, like a service with a bad key.

    From the second image on it first waits until the caller has seen a result, so
    the worker is inside an image while the batch decides to stop (the race a real
    batch has) and the test knows how many images were started.
    """

    name = "fake"

    def __init__(self) -> None:
        self.calls = 0
        self.first_seen = threading.Event()

    def cut_out(self, image: Image.Image, hooks: JobHooks | None = None) -> Cutout:
        self.calls += 1
        if self.calls > 1:
            assert self.first_seen.wait(30), "the first result never reached the caller"
        raise AuthenticationError("key refused", status_code=401)

    def close(self) -> None:
        pass


def test_results_reach_the_callback_on_the_calling_thread_and_a_refusal_stops_the_rest(
        tmp_path: Path) -> None:
    srcs = tiny_pngs(tmp_path, 5)
    config = Config().with_overrides({"concurrency": 1})
    plan = plan_outputs(srcs, tmp_path / "out", config.output)
    backend = RefusingBackend()
    seen: list[tuple[str, str | None]] = []

    def on_result(result: JobResult) -> None:
        seen.append((threading.current_thread().name,
                     result.error.kind if result.error else None))
        backend.first_seen.set()

    results = run_batch(plan, backend, config, on_result=on_result)
    assert len(results) == len(seen) == 5
    assert {name for name, _ in seen} == {threading.current_thread().name}
    kinds = [kind for _, kind in seen]
    # The first refusal stops the batch; an image the worker had already taken finishes.
    assert backend.calls in (1, 2) and kinds.count("auth") == backend.calls
    assert kinds.count("not_attempted") == 5 - backend.calls
    assert not list((tmp_path / "out").glob("*.png"))
