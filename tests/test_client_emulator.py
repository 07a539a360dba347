"""The WaveSpeed backend end to end over real sockets, against the built-in emulator.

The emulator's key-out model makes every alpha pixel predictable, so each
test checks the mask itself, not just that a call returned.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from conftest import configured, make_keyed_image

from bgremove.contract import CancelToken, JobHooks
from bgremove.emulator import Emulator, Fault, keyout_alpha
from bgremove.errors import (
    AccountSuspendedError,
    AuthenticationError,
    CancelledError,
    ServiceTimeoutError,
    SubmitUncertainError,
    TaskFailedError,
)
from bgremove.wavespeed import WaveSpeedBackend

MakeBackend = Callable[..., WaveSpeedBackend]


@pytest.fixture
def make_backend() -> Iterator[MakeBackend]:
    backends: list[WaveSpeedBackend] = []

    def make(emu: Emulator, wait: str = "sync", **keys: Any) -> WaveSpeedBackend:
        backend = WaveSpeedBackend(configured(emu, {"wavespeed.wait": wait}, **keys))
        backends.append(backend)
        return backend

    yield make
    for backend in backends:
        backend.close()


def assert_keyed_out(alpha: Any, image: Any) -> None:
    expected = keyout_alpha(image)
    assert alpha.mode == "L" and alpha.size == image.size
    assert alpha.tobytes() == expected.tobytes()
    assert 0 < sum(1 for v in expected.tobytes() if v == 0) < image.width * image.height


@pytest.mark.parametrize(("wait", "min_requests"), [("sync", 4), ("poll", 5)])
def test_cut_out_matches_the_model(emulator_factory: Any, make_backend: MakeBackend,
                                   wait: str, min_requests: int) -> None:
    emu = emulator_factory(delay=0.05)
    backend = make_backend(emu, wait)
    image = make_keyed_image()
    progress: list[tuple[str, float]] = []
    tasks: list[str] = []
    cutout = backend.cut_out(image, JobHooks(progress=lambda s, f: progress.append((s, f)),
                                             on_task=tasks.append))
    assert_keyed_out(cutout.alpha, image)
    assert cutout.backend == "wavespeed" and cutout.task_id == tasks[0]
    assert emu.prediction(cutout.task_id)["status"] == "completed"
    if wait == "sync":
        assert cutout.requests == 4
    else:
        assert cutout.requests >= min_requests and emu.count("result") == cutout.requests - 4
    assert emu.count("submit", "POST") == 1 and emu.count("upload_put", "PUT") == 1
    fractions = [f for _, f in progress]
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == 0.95
    assert [s for s, _ in progress][:2] == ["upload", "upload"]


def test_rgba_input_keeps_its_transparency(emulator: Emulator,
                                           make_backend: MakeBackend) -> None:
    image = make_keyed_image(mode="RGBA")
    cutout = make_backend(emulator).cut_out(image)
    assert_keyed_out(cutout.alpha, image)
    assert 128 in set(cutout.alpha.tobytes())  # the half-transparent stripe came back


def test_poll_mode_reports_the_task_before_waiting(emulator_factory: Any,
                                                   make_backend: MakeBackend) -> None:
    emu = emulator_factory(delay=0.4)
    backend = make_backend(emu, "poll")
    states: list[str] = []

    def on_task(task_id: str) -> None:
        states.append(emu.prediction(task_id)["status"])
        states.append(str(emu.count("result")))

    backend.cut_out(make_keyed_image(), JobHooks(on_task=on_task))
    assert states[0] in ("created", "processing") and states[1] == "0"


def test_resume_waits_on_the_old_task_without_resubmitting(
        emulator_factory: Any, make_backend: MakeBackend) -> None:
    emu = emulator_factory(delay=0.2)
    backend = make_backend(emu, "poll")
    image = make_keyed_image()

    class Crash(Exception):
        pass

    def crash(task_id: str) -> None:
        recorded.append(task_id)
        raise Crash

    recorded: list[str] = []
    with pytest.raises(Crash):
        backend.cut_out(image, JobHooks(on_task=crash))
    cutout = backend.cut_out(image, JobHooks(resume_task=recorded[0]))
    assert cutout.task_id == recorded[0]
    assert_keyed_out(cutout.alpha, image)
    assert emu.count("submit") == 1 and emu.count("upload") == 1


def test_resume_of_an_unknown_task_says_to_resubmit(emulator: Emulator,
                                                    make_backend: MakeBackend) -> None:
    with pytest.raises(TaskFailedError) as info:
        make_backend(emulator, "poll").cut_out(make_keyed_image(),
                                               JobHooks(resume_task="no-such-task"))
    assert info.value.status == "not_found" and "submit the image again" in str(info.value)
    assert info.value.task_id == "no-such-task"


@pytest.mark.parametrize("style", ["504", "processing"])
def test_sync_timeout_is_recovered_by_polling(emulator_factory: Any, make_backend: MakeBackend,
                                              style: str) -> None:
    emu = emulator_factory(delay=0.3, sync_timeout=0.05, sync_timeout_style=style)
    image = make_keyed_image()
    tasks: list[str] = []
    cutout = make_backend(emu, "sync").cut_out(image, JobHooks(on_task=tasks.append))
    assert_keyed_out(cutout.alpha, image)
    assert tasks == [cutout.task_id]
    assert emu.count("submit") == 1 and emu.count("result") >= 1
    assert emu.stats()["sync_timeouts"] == 1


@pytest.mark.parametrize("fault", [
    Fault("status", route="submit", status=429, first=2, retry_after="0.05"),
    Fault("status", route="submit", status=503, first=1),
    Fault("status", route="upload", status=500, first=1),
    Fault("status", route="upload_put", status=502, first=1),
    Fault("status", route="result", status=503, first=2),
    Fault("status", route="download", status=500, first=1),
    Fault("drop", route="upload", first=1),
    Fault("drop", route="upload_put", first=1),
    Fault("drop", route="result", first=1),
    Fault("drop", route="download", first=1),
    Fault("truncate", route="download", first=1),
    Fault("malformed", route="result", first=1),
    Fault("delay", route="result", first=1, seconds=0.05),
], ids=lambda f: f"{f.kind}-{f.route}-{f.status if f.kind == 'status' else ''}")
def test_injected_faults_are_recovered(emulator_factory: Any, make_backend: MakeBackend,
                                       fault: Fault) -> None:
    emu = emulator_factory(delay=0.05, faults=(fault,))
    backend = make_backend(emu, "poll")
    image = make_keyed_image()
    cutout = backend.cut_out(image)
    assert_keyed_out(cutout.alpha, image)
    assert emu.count("submit") == 1 + (fault.first if fault.route == "submit" else 0)
    assert emu.stats()["tasks_submitted"] == 1  # never a second task
    if fault.kind != "delay":
        assert backend.stats.snapshot()["retries"] >= 1


def test_an_async_submit_answers_the_task_as_created(emulator_factory: Any,
                                                    make_backend: MakeBackend,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # The race behind result faults that never fired: the task's thread finishes before the
    # submit's answer is written. The answer must still be the created task, so it is polled.
    from bgremove.emulator import service

    submit = service.Service.submit

    def finish_first(self: Any, *args: Any, **kwargs: Any) -> Any:
        task = submit(self, *args, **kwargs)
        assert task.done.wait(10), "the task never finished"
        return task

    monkeypatch.setattr(service.Service, "submit", finish_first)
    emu = emulator_factory(faults=(Fault("drop", route="result", first=1),))
    backend = make_backend(emu, "poll")
    image = make_keyed_image()
    assert_keyed_out(backend.cut_out(image).alpha, image)
    assert emu.count("result") == 2 and backend.stats.snapshot()["retries"] == 1


def test_direct_upload_missing_falls_back_to_binary(emulator_factory: Any,
                                                   make_backend: MakeBackend) -> None:
    emu = emulator_factory(faults=(Fault("status", route="upload", status=404, first=100),))
    backend = make_backend(emu)
    image = make_keyed_image()
    for _ in range(2):
        assert_keyed_out(backend.cut_out(image).alpha, image)
    assert emu.count("upload") == 1  # learned once, then straight to the binary endpoint
    assert emu.count("upload_binary") == 2 and emu.count("upload_put") == 0


@pytest.mark.parametrize("wait", ["sync", "poll"])
def test_answer_lost_after_submit_adopts_the_task(emulator_factory: Any,
                                                  make_backend: MakeBackend, wait: str) -> None:
    emu = emulator_factory(faults=(Fault("drop", route="submit", first=1, after=True),))
    image = make_keyed_image()
    assert_keyed_out(make_backend(emu, wait).cut_out(image).alpha, image)
    assert emu.count("submit") == 1 and emu.stats()["tasks_submitted"] == 1


def test_answer_lost_without_the_list_route_is_uncertain(emulator_factory: Any,
                                                         make_backend: MakeBackend) -> None:
    emu = emulator_factory(list_route=False,
                           faults=(Fault("drop", route="submit", first=1, after=True),))
    with pytest.raises(SubmitUncertainError) as info:
        make_backend(emu).cut_out(make_keyed_image())
    assert emu.count("submit") == 1 and emu.stats()["tasks_submitted"] == 1
    assert "billed" in str(info.value) and "no task list" in str(info.value)


def test_sync_504_without_task_id_and_no_task_is_sent_again(
        emulator_factory: Any, make_backend: MakeBackend) -> None:
    emu = emulator_factory(faults=(Fault("status", route="submit", status=504, first=1),))
    image = make_keyed_image()
    assert_keyed_out(make_backend(emu, "sync").cut_out(image).alpha, image)
    assert emu.count("submit") == 2 and emu.stats()["tasks_submitted"] == 1


@pytest.mark.parametrize(("code", "transient"), [(1200, False), (1402, False), (5003, True),
                                                 (5000, True)])
@pytest.mark.parametrize("wait", ["sync", "poll"])
def test_failed_tasks_carry_their_code(emulator_factory: Any, make_backend: MakeBackend,
                                       code: int, transient: bool, wait: str) -> None:
    emu = emulator_factory(faults=(Fault("fail_task", code=code, first=1),))
    with pytest.raises(TaskFailedError) as info:
        make_backend(emu, wait).cut_out(make_keyed_image())
    assert info.value.code == code and info.value.transient is transient
    assert info.value.task_id and str(code) in str(info.value)
    assert emu.count("submit") == 1


@pytest.mark.parametrize(("key_state", "cls", "words"), [
    ("inactive", AuthenticationError, "top-up"),
    ("suspended", AccountSuspendedError, "support"),
])
def test_account_problems(emulator_factory: Any, make_backend: MakeBackend, key_state: str,
                          cls: type[Exception], words: str) -> None:
    emu = emulator_factory(key_state=key_state)
    with pytest.raises(cls, match=words):
        make_backend(emu).cut_out(make_keyed_image())
    assert emu.stats()["tasks_submitted"] == 0


def test_wrong_key_is_refused_and_never_logged(emulator_factory: Any,
                                               caplog: pytest.LogCaptureFixture) -> None:
    for name in (None, "httpx", "httpcore"):  # another test may have quietened httpx
        caplog.set_level(logging.DEBUG, logger=name)
    emu = emulator_factory(api_key="the-right-key-123")
    wrong = "wsk-WRONG-do-not-log-42"
    backend = WaveSpeedBackend(configured(emu, {"wavespeed.api_key": wrong}))
    try:
        with pytest.raises(AuthenticationError) as info:
            backend.cut_out(make_keyed_image())
    finally:
        backend.close()
    assert "WAVESPEED_API_KEY" in str(info.value)
    assert wrong not in str(info.value) and wrong not in repr(info.value)
    assert wrong not in caplog.text and wrong not in repr(backend)
    assert any(r.name.startswith("httpcore") for r in caplog.records)  # debug was on


def test_cancel_while_polling(emulator_factory: Any, make_backend: MakeBackend) -> None:
    emu = emulator_factory(delay=120.0)
    backend = make_backend(emu, "poll", wavespeed__poll__initial=60.0,
                           wavespeed__poll__max=60.0)
    token = CancelToken()
    started = time.monotonic()
    with pytest.raises(CancelledError):
        backend.cut_out(make_keyed_image(),
                        JobHooks(cancel=token, on_task=lambda _: token.cancel()))
    assert time.monotonic() - started < 30.0  # neither the task nor a poll interval waited out
    assert emu.count("result") == 0


def test_overall_deadline(emulator_factory: Any, make_backend: MakeBackend) -> None:
    emu = emulator_factory(delay=120.0)
    backend = make_backend(emu, "poll", wavespeed__timeouts__overall=1.0)
    started = time.monotonic()
    with pytest.raises(ServiceTimeoutError) as info:
        backend.cut_out(make_keyed_image())
    assert 0.9 < time.monotonic() - started < 30.0  # at the deadline, not the task's end
    assert info.value.task_id and info.value.task_id in str(info.value)


def test_sync_wait_timeout_adopts_the_running_task(emulator_factory: Any,
                                                   make_backend: MakeBackend) -> None:
    emu = emulator_factory(delay=1.0)
    backend = make_backend(emu, "sync", wavespeed__timeouts__sync_wait=0.3)
    image = make_keyed_image()
    assert_keyed_out(backend.cut_out(image).alpha, image)
    assert emu.count("submit") == 1 and emu.stats()["tasks_submitted"] == 1


@pytest.mark.parametrize("wait", ["sync", "poll"])
def test_sixteen_threads_share_one_backend(emulator_factory: Any, make_backend: MakeBackend,
                                           wait: str) -> None:
    emu = emulator_factory(delay=0.1)
    backend = make_backend(emu, wait, concurrency=16)
    images = [make_keyed_image(size=(40 + i, 32), key=(i * 6, 100, 60)) for i in range(32)]
    with ThreadPoolExecutor(16) as pool:
        cutouts = list(pool.map(backend.cut_out, images))
    for image, cutout in zip(images, cutouts, strict=True):
        assert_keyed_out(cutout.alpha, image)
    assert len({c.task_id for c in cutouts}) == 32
    stats = emu.stats()
    assert stats["tasks_submitted"] == 32 and emu.count("submit") == 32
    assert stats["max_concurrent_tasks"] >= 4  # the threads really overlapped
    assert stats["connections"] <= 20  # pooled: at most the pool's size, reused
    assert backend.stats.snapshot()["requests"] == sum(c.requests for c in cutouts)
    if wait == "sync":
        assert all(c.requests == 4 for c in cutouts)


def test_no_thread_or_connection_leaks(emulator: Emulator, make_backend: MakeBackend) -> None:
    before = threading.active_count()
    backend = make_backend(emulator)
    backend.cut_out(make_keyed_image())
    pool = backend.client._http._transport._pool  # type: ignore[attr-defined]
    assert len(pool.connections) == 1  # kept alive for the next image
    backend.close()
    assert backend.client._http.is_closed and pool.connections == []
    # the emulator's handler thread for that connection ends once it sees the close
    deadline = time.monotonic() + 5.0
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert threading.active_count() <= before
