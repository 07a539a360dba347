"""The stages pipeline (``bgremove.stages``): real emulator sockets, real threads.

Waits are on deadlines (``_until``), never fixed sleeps; nothing is timed.
"""

from __future__ import annotations

import _thread
import gc
import io
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from bgremove.batch import plan_outputs, run_batch
from bgremove.config import Config
from bgremove.contract import CancelToken, JobHooks, Prepared, Result, Upload
from bgremove.emulator import Emulator
from bgremove.errors import CancelledError, ServiceTimeoutError, TaskFailedError
from bgremove.jobs import JobResult
from bgremove.stages import Call, FileJob, Pipeline, Poller
from bgremove.wavespeed import WaveSpeedBackend, WaveSpeedClient
from tests.conftest import configured, make_keyed_image
from tests.images import tiny_pngs

REPO = Path(__file__).resolve().parents[1]


def _until(check: Callable[[], bool], seconds: float = 60.0, what: str = "it") -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"{what} did not happen within {seconds} s"
        time.sleep(0.02)


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


@dataclass(eq=False)
class BytesJob:
    """A job whose input is PNG bytes in memory; records how it ended."""

    data: bytes
    size: tuple[int, int]
    hooks: JobHooks = field(default_factory=JobHooks)
    results: list[Result] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    ended: threading.Event = field(default_factory=threading.Event)

    def prepare(self) -> Prepared:
        return Prepared(Upload(self.data, "image/png", "image.png", self.size), self.size)

    def finish(self, prepared: Prepared, result: Result) -> None:
        assert prepared.upload.data == b""  # dropped once sent
        self.results.append(result)
        self.ended.set()

    def failed(self, error: BaseException) -> None:
        self.errors.append(error)
        self.ended.set()


def _alpha(result: Result) -> Image.Image:
    assert result.data is not None
    from bgremove.imaging import alpha_from_bytes

    return alpha_from_bytes(result.data, max_pixels=result.max_pixels)


# -- sync and poll mode on the emulator -------------------------------------------------------

@pytest.mark.parametrize(("wait", "in_flight", "io_threads", "sync"), [
    ("sync", 3, None, True),    # one blocking submit per task: no polls
    ("poll", 3, None, False),
    ("sync", 3, 2, False),      # more tasks than IO threads: sync would block them, so poll
])
def test_sync_only_when_every_task_in_flight_has_an_io_thread(
        emulator_factory: Callable[..., Emulator], wait: str, in_flight: int,
        io_threads: int | None, sync: bool) -> None:
    emu = emulator_factory(delay=0.2)
    config = configured(emu, wavespeed__wait=wait)
    backend = WaveSpeedBackend(config)
    image = make_keyed_image((40, 30))
    jobs = [BytesJob(_png(image), image.size) for _ in range(6)]
    tasks: list[str] = []
    for job in jobs:
        job.hooks.on_task = tasks.append
    with Pipeline(backend, config, in_flight=in_flight, io_threads=io_threads) as pipeline:
        assert pipeline.sync is sync
        for job in jobs:
            pipeline.start(job)
        assert pipeline.drain(120)
    assert all(not j.errors and len(j.results) == 1 for j in jobs)
    stats = emu.stats()
    polls = emu.count("result")
    reference = backend.cut_out(image).alpha
    backend.close()
    assert {_alpha(j.results[0]).tobytes() for j in jobs} == {reference.tobytes()}
    assert stats["tasks_submitted"] == 6 and len(set(tasks)) == 6
    assert stats["max_concurrent_tasks"] <= in_flight
    assert (polls == 0) if sync else (polls >= 6)


def test_file_jobs_write_the_same_cut_out_as_cut_out(
        emulator: Emulator, tmp_path: Path) -> None:
    config = configured(emulator, wavespeed__wait="poll")
    backend = WaveSpeedBackend(config)
    image = make_keyed_image((64, 48))
    src = tmp_path / "in.png"
    image.save(src)
    ended: list[JobResult] = []
    with Pipeline(backend, config, in_flight=2) as pipeline:
        pipeline.start(FileJob(src, tmp_path / "out.png", config, done=ended.append))
    reference = backend.cut_out(image).alpha
    backend.close()
    assert [r.status for r in ended] == ["ok"] and ended[0].task_id
    with Image.open(tmp_path / "out.png") as written:
        assert written.mode == "RGBA"
        assert written.getchannel("A").tobytes() == reference.tobytes()


def test_a_resumed_task_is_polled_not_uploaded_again(emulator: Emulator) -> None:
    config = configured(emulator, wavespeed__wait="poll")
    image = make_keyed_image((40, 30))
    with WaveSpeedClient(config.wavespeed) as client:
        ctx = client.context()
        url = client.upload(_png(image), "image.png", "image/png", ctx=ctx)
        task = client.submit(url, sync=False, ctx=ctx).id
    emulator.reset_stats()
    backend = WaveSpeedBackend(config)
    job = BytesJob(b"", image.size, hooks=JobHooks(resume_task=task))
    with Pipeline(backend, config, in_flight=2) as pipeline:
        pipeline.start(job)
    backend.close()
    assert not job.errors and job.results[0].task_id == task
    assert emulator.count("upload") == 0 and emulator.count("upload_put") == 0
    assert emulator.stats()["tasks_submitted"] == 0


# -- a thousand tasks waiting, a bounded number of threads ------------------------------------

@contextmanager
def _emulator_process(*args: str) -> Iterator[str]:
    """``bgremove emulator`` in its own process (its threads are not counted here)."""
    process = subprocess.Popen([sys.executable, "-m", "bgremove", "emulator", "--port", "0",
                                "--log-level", "warning", *args], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert process.stdout is not None
        yield process.stdout.readline().strip()
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()


def test_a_thousand_waiting_tasks_need_no_thread_each() -> None:
    count = 1000
    with _emulator_process("--delay", "3600") as base_url:
        config = Config().with_overrides({
            "backend": "wavespeed", "wavespeed.base_url": base_url, "wavespeed.api_key": "k",
            "wavespeed.poll.initial": 2.0, "wavespeed.poll.max": 5.0,
            "wavespeed.timeouts.overall": 3600.0})
        backend = WaveSpeedBackend(config)  # the config's wait is sync: too many tasks for it
        data = _png(Image.new("RGB", (8, 8), (0, 200, 0)))
        jobs = [BytesJob(data, (8, 8)) for _ in range(count)]
        before = threading.active_count()
        pipeline = Pipeline(backend, config, in_flight=count, cpu_workers=2, io_threads=8)
        assert not pipeline.sync
        try:
            for job in jobs:
                pipeline.start(job)
            most = 0

            def all_waiting() -> bool:
                nonlocal most
                most = max(most, threading.active_count())
                return pipeline.counts().get("waiting", 0) == count

            _until(all_waiting, 300, "1000 tasks waiting")
            # every task is at the service, none has a thread of its own
            assert most <= before + 2 + 8 + 1
            with httpx.Client(base_url=base_url) as api:
                stats = api.get("/_emulator/stats").json()
            assert stats["tasks_submitted"] == count and stats["running_tasks"] == count
        finally:
            pipeline.close(wait=False)
        assert pipeline.drain(120)
        backend.close()
    assert all(len(j.errors) == 1 and isinstance(j.errors[0], CancelledError) and not j.results
               for j in jobs)


# -- cancel -------------------------------------------------------------------------------------

@pytest.mark.parametrize("wait", ["sync", "poll"])
def test_cancel_ends_every_job_once_at_every_stage(
        emulator_factory: Callable[..., Emulator], wait: str) -> None:
    emu = emulator_factory(delay=3600)
    # polls far apart: a waiting task ends at once only because the cancel hands it out
    config = configured(emu, {"wavespeed.wait": wait, "wavespeed.poll.initial": 600.0,
                              "wavespeed.poll.max": 600.0})
    backend = WaveSpeedBackend(config)
    data = _png(make_keyed_image((16, 16)))
    jobs = [BytesJob(data, (16, 16)) for _ in range(8)]
    pipeline = Pipeline(backend, config, in_flight=3, cpu_workers=1)
    for job in jobs:
        pipeline.start(job)
    _until(lambda: emu.stats().get("running_tasks", 0) == 3, what="3 tasks at the service")
    pipeline.cancel()
    if wait == "sync":  # a sync submit sent cannot be interrupted: the service ends it here
        emu.stop()
    assert pipeline.drain(60)
    pipeline.close()
    backend.close()
    assert all(len(j.errors) == 1 and not j.results for j in jobs)
    assert sum(isinstance(j.errors[0], CancelledError) for j in jobs) >= 5
    assert emu.stats()["tasks_submitted"] == 3  # nothing sent after the cancel


def _ctrl_c_with_two_at_the_service(emu: Emulator, tmp_path: Path,
                                    interrupt: Callable[[list[int]], None]) -> list[int]:
    """A batch of 5 images at concurrency 2 whose tasks never end; once two wait at the
    service, ``interrupt(told)`` runs on another thread and ``run_batch`` must raise
    ``KeyboardInterrupt``. Returns ``told``: what its ``on_interrupt`` was told."""
    config = configured(emu, {"concurrency": 2, "wavespeed.wait": "poll"})
    backend = WaveSpeedBackend(config)
    srcs = []
    for i in range(5):
        make_keyed_image((16, 16)).save(tmp_path / f"{i}.png")
        srcs.append(tmp_path / f"{i}.png")
    plan = plan_outputs(srcs, tmp_path / "out", config.output)
    told: list[int] = []

    def interrupt_when_two_are_waiting() -> None:
        _until(lambda: emu.stats().get("running_tasks", 0) == 2)
        interrupt(told)

    threading.Thread(target=interrupt_when_two_are_waiting, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        run_batch(plan, backend, config, on_result=lambda r: None, on_interrupt=told.append)
    backend.close()
    return told


def test_ctrl_c_in_a_batch_abandons_the_images_at_the_service_and_says_how_many(
        emulator_factory: Callable[..., Emulator], tmp_path: Path) -> None:
    emu = emulator_factory(delay=3600)
    main = threading.current_thread()
    told = _ctrl_c_with_two_at_the_service(
        emu, tmp_path, lambda _told: signal.pthread_kill(main.ident or 0, signal.SIGINT))
    assert told == [2]
    assert emu.stats()["tasks_submitted"] == 2
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_a_ctrl_c_that_lands_just_before_the_batch_waits_still_stops_it(
        emulator_factory: Callable[..., Emulator], tmp_path: Path) -> None:
    """A SIGINT that arrives after the batch's last look at the flags but before its wait
    blocks interrupts no system call: Python only flags it. ``interrupt_main`` makes
    exactly that state. The batch must act on it while its images still wait at the
    service, not when one of them ends (here: never, unless the test ends the tasks)."""
    emu = emulator_factory(delay=3600)
    rescued = threading.Event()

    def flag_ctrl_c(told: list[int]) -> None:
        _thread.interrupt_main()
        deadline = time.monotonic() + 60
        while not told and time.monotonic() < deadline:
            time.sleep(0.02)
        if not told:  # the batch did not see it: end the tasks rather than hang
            rescued.set()
            emu.end_delays()

    told = _ctrl_c_with_two_at_the_service(emu, tmp_path, flag_ctrl_c)
    assert not rescued.is_set(), "the flagged Ctrl-C was seen only once an image ended"
    assert told == [2]
    assert emu.stats()["tasks_submitted"] == 2


# -- a failure in each stage is reported once ----------------------------------------------------

class FakeRemote:
    """A remote in memory: each step can be made to fail; counts what it was asked."""

    name = "fake"
    wants_sync = False
    threads = None

    def __init__(self, fail: str | None = None, polls: int = 2) -> None:
        self.fail = fail
        self.polls = polls
        self.asked: Counter[str] = Counter()
        self._lock = threading.Lock()

    def _step(self, name: str) -> None:
        with self._lock:
            self.asked[name] += 1
        if self.fail == name:
            raise TaskFailedError(f"{name} failed", task_id="t")

    def send(self, prepared: Prepared, hooks: JobHooks, *, sync: bool) -> Call:
        self._step("send")
        return Call(prepared, hooks, due=0.0, task_id="t", state=[self.polls])

    def poll(self, call: Call) -> None:
        self._step("poll")
        call.state[0] -= 1
        call.due = 0.0 if call.state[0] > 0 else None

    def fetch(self, call: Call) -> Result:
        self._step("fetch")
        return Result(backend="fake", alpha=Image.new("L", (2, 2), 255), task_id="t")


class StagedJob(BytesJob):
    def __init__(self, fail: str | None = None) -> None:
        super().__init__(b"x", (2, 2))
        self.fail = fail
        self.finished = 0

    def _step(self, name: str) -> None:
        if self.fail == name:
            raise RuntimeError(f"{name} failed")

    def prepare(self) -> Prepared:
        self._step("prepare")
        return super().prepare()

    def before_send(self) -> None:
        self._step("before_send")

    def finish(self, prepared: Prepared, result: Result) -> None:
        self.finished += 1
        self._step("finish")
        super().finish(prepared, result)


@pytest.mark.parametrize("stage", ["prepare", "before_send", "send", "poll", "fetch", "finish"])
def test_a_failure_in_any_stage_ends_that_job_once_and_the_others_go_on(stage: str) -> None:
    job_stage = stage in ("prepare", "before_send", "finish")
    remote = FakeRemote(fail=None if job_stage else stage)
    failing = StagedJob(fail=stage if job_stage else None)
    others = [StagedJob() for _ in range(4)]
    if not job_stage:  # the remote fails every job at that step: give the others their own
        ok_remote = FakeRemote()
        with Pipeline(None, Config(), in_flight=2, remote=ok_remote) as fine:
            for job in others:
                fine.start(job)
    with Pipeline(None, Config(), in_flight=2, remote=remote) as pipeline:
        pipeline.start(failing)
        if job_stage:
            for job in others:
                pipeline.start(job)
    assert pipeline.counts() == {}  # every job ended exactly once
    assert len(failing.errors) == 1 and f"{stage} failed" in str(failing.errors[0])
    assert not failing.results
    assert failing.finished == (1 if stage == "finish" else 0)
    assert all(not j.errors and len(j.results) == 1 for j in others)
    later = {"prepare": ("send", "poll", "fetch"), "before_send": ("send", "poll", "fetch"),
             "send": ("poll", "fetch"), "poll": ("fetch",)}.get(stage, ())
    if not job_stage:
        assert all(remote.asked[step] == 0 for step in later)


def test_a_failing_failed_callback_does_not_stop_the_pipeline() -> None:
    class Rude(StagedJob):
        def failed(self, error: BaseException) -> None:
            super().failed(error)
            raise ValueError("callback bug")

    rude, fine = Rude(fail="prepare"), StagedJob()
    with Pipeline(None, Config(), in_flight=1, remote=FakeRemote()) as pipeline:
        pipeline.start(rude)
        pipeline.start(fine)
    assert len(rude.errors) == 1 and fine.results


def test_cancelling_the_token_the_pipeline_was_given_ends_a_waiting_job_at_once() -> None:
    """The GIMP bridge cancels through the token it gave the pipeline, not ``cancel()``:
    a task waiting for its next poll must end then, not when that poll comes due."""

    class Patient(FakeRemote):
        def send(self, prepared: Prepared, hooks: JobHooks, *, sync: bool) -> Call:
            call = super().send(prepared, hooks, sync=sync)
            call.due = 3600.0
            return call

    token, remote, job = CancelToken(), Patient(), StagedJob()
    pipeline = Pipeline(None, Config(), in_flight=1, remote=remote, cancel=token)
    pipeline.start(job)
    _until(lambda: pipeline.counts() == {"waiting": 1})
    token.cancel()
    assert pipeline.drain(timeout=20), pipeline.counts()
    pipeline.close()
    assert len(job.errors) == 1 and isinstance(job.errors[0], CancelledError)
    assert remote.asked["poll"] == 0  # ended by the cancel, without asking the service

# -- waiting for the jobs is bounded ---------------------------------------------------------------

class StuckRemote(FakeRemote):
    """A remote whose upload hangs until ``release`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.returned = threading.Event()

    def send(self, prepared: Prepared, hooks: JobHooks, *, sync: bool) -> Call:
        self.release.wait(120)
        try:
            return super().send(prepared, hooks, sync=sync)
        finally:
            self.returned.set()


def test_drain_and_close_are_bounded_when_a_step_is_stuck(
        caplog: pytest.LogCaptureFixture) -> None:
    remote, job, fine = StuckRemote(), StagedJob(), StagedJob()
    pipeline = Pipeline(None, Config(), in_flight=2, remote=remote)
    pipeline.start(fine)
    _until(lambda: pipeline.counts().get("sending") == 1)
    pipeline.start(job)
    _until(lambda: pipeline.counts().get("sending") == 2)
    assert pipeline.drain(0.3) is False
    assert pipeline.open_jobs() == 2
    with caplog.at_level("WARNING", logger="bgremove.stages._pipeline"):
        pipeline.close(timeout=1.0)  # returns: both jobs end, given up
    assert "2 image(s) did not end within 1 s: given up" in caplog.text
    for stuck in (job, fine):
        assert len(stuck.errors) == 1 and isinstance(stuck.errors[0], ServiceTimeoutError)
        assert "did not end within" in str(stuck.errors[0])
    assert pipeline.open_jobs() == 0 and pipeline.drain(0) is True
    remote.release.set()  # the stuck steps return now: their outcome is dropped
    _until(remote.returned.is_set)
    pipeline._io.shutdown(wait=True)
    assert len(job.errors) == 1 and not job.results and remote.asked["poll"] == 0


def test_close_waits_as_long_as_the_open_jobs_may_take() -> None:
    """``longest``: each job's overall deadline at the service and its CPU time,
    ``in_flight`` at a time."""
    from bgremove.stages._pipeline import CPU_SECONDS

    remote = StuckRemote()
    config = Config().with_overrides({"wavespeed.timeouts.overall": 100.0})
    pipeline = Pipeline(None, config, in_flight=2, remote=remote)
    assert pipeline.longest() == 0
    for _ in range(3):
        pipeline.start(StagedJob())
    assert pipeline.longest() == 2 * (100.0 + CPU_SECONDS)
    remote.release.set()
    pipeline.close()
    assert pipeline.longest() == 0


def test_a_finish_given_up_on_reports_its_file_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A finish stuck (a hung disk, say) when ``close`` gives up: the file's one result is
    the give-up; the finish returning later reports nothing more."""
    from bgremove import imaging

    release, finishing = threading.Event(), threading.Event()

    def stuck_finish(*args: object, **kwargs: object) -> None:
        finishing.set()
        release.wait(120)

    monkeypatch.setattr(imaging, "finish_file", stuck_finish)
    src = tmp_path / "in.png"
    make_keyed_image((8, 8)).save(src)
    ended: list[JobResult] = []
    pipeline = Pipeline(None, Config(), in_flight=1, remote=FakeRemote(polls=0))
    pipeline.start(FileJob(src, tmp_path / "out.png", Config(), done=ended.append))
    _until(finishing.is_set)
    pipeline.close(timeout=0.2)
    assert [r.status for r in ended] == ["failed"]
    error = ended[0].error
    assert isinstance(error, ServiceTimeoutError)
    # paid for and downloaded: the caller is told so, and given the task to fetch it
    assert ended[0].task_id == error.task_id == "t"
    assert "its result was downloaded (task t) and may still be written" in str(error)
    assert "`bgremove fetch t`" in str(error)
    release.set()
    pipeline._cpu.shutdown(wait=True)
    assert [r.status for r in ended] == ["failed"]


class _FailedLate(FileJob):
    """A ``FileJob`` whose ``failed`` runs late: once it is called (the pipeline has marked
    it ended) it lets the stuck finish go and waits until that finish has reported."""

    def __init__(self, *args: Any, release: threading.Event, reported: threading.Event,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.release, self.reported = release, reported

    def failed(self, error: BaseException) -> None:
        self.release.set()
        self.reported.wait(60)
        super().failed(error)


def test_a_finish_that_returns_as_it_is_given_up_reports_its_file_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The race: ``close`` gives up the job (``entry.ended`` set) and its finish returns
    before ``failed`` runs. One report, the finish's: its output was written."""
    from bgremove import imaging

    release, finishing, reported = threading.Event(), threading.Event(), threading.Event()

    def stuck_finish(*args: object, **kwargs: object) -> None:
        finishing.set()
        release.wait(120)

    def done(result: JobResult) -> None:
        ended.append(result)
        reported.set()

    monkeypatch.setattr(imaging, "finish_file", stuck_finish)
    src = tmp_path / "in.png"
    make_keyed_image((8, 8)).save(src)
    ended: list[JobResult] = []
    pipeline = Pipeline(None, Config(), in_flight=1, remote=FakeRemote(polls=0))
    pipeline.start(_FailedLate(src, tmp_path / "out.png", Config(), done=done,
                               release=release, reported=reported))
    _until(finishing.is_set)
    pipeline.close(timeout=0.2)
    pipeline._cpu.shutdown(wait=True)
    assert [r.status for r in ended] == ["ok"]


def _main_waits_in_drain() -> bool:
    frame = sys._current_frames().get(threading.main_thread().ident or 0)
    return (frame is not None and frame.f_code.co_name == "wait"
            and frame.f_back is not None and frame.f_back.f_code.co_name == "drain")


def _ctrl_c_once_main_waits_in_drain() -> None:
    """Flag a Ctrl-C as a signal landing just before a blocking wait does (no system call
    is interrupted: ``_thread.interrupt_main``), once the main thread waits in ``drain``."""
    _until(_main_waits_in_drain)
    _thread.interrupt_main()


def test_a_ctrl_c_while_close_waits_cancels_what_is_left() -> None:
    """``with Pipeline(...)`` (``run_one``, a library caller) waits in ``close``: a Ctrl-C
    there must not leave the jobs running: those not sent end at once."""
    remote = StuckRemote()
    # one CPU worker: prepared in the order started, so ``stuck`` is the one sent
    pipeline = Pipeline(None, Config(), in_flight=1, cpu_workers=1, remote=remote)
    stuck, queued = StagedJob(), StagedJob()
    pipeline.start(stuck)
    pipeline.start(queued)
    _until(lambda: pipeline.counts() == {"sending": 1, "prepared": 1})
    threading.Thread(target=_ctrl_c_once_main_waits_in_drain, daemon=True).start()
    try:
        with pytest.raises(KeyboardInterrupt):
            pipeline.close()
        assert len(queued.errors) == 1 and isinstance(queued.errors[0], CancelledError)
    finally:
        remote.release.set()
    _until(stuck.ended.is_set)
    assert isinstance(stuck.errors[0], CancelledError)  # its step returned to a cancel


def test_a_ctrl_c_that_lands_while_drain_waits_is_raised_at_once() -> None:
    """``_thread.interrupt_main`` flags a Ctrl-C as a signal landing just before a blocking
    wait does: no system call is interrupted. drain must raise it while its job still
    waits, not once the job ends."""
    remote = StuckRemote()
    pipeline = Pipeline(None, Config(), in_flight=1, remote=remote)
    pipeline.start(StagedJob())
    _until(lambda: pipeline.counts().get("sending") == 1)
    rescued = threading.Event()

    def flag_ctrl_c() -> None:
        _ctrl_c_once_main_waits_in_drain()
        if not raised.wait(30):  # drain did not see it: end the job rather than hang
            rescued.set()
            remote.release.set()

    raised = threading.Event()
    helper = threading.Thread(target=flag_ctrl_c, daemon=True)
    try:
        with pytest.raises(KeyboardInterrupt):
            helper.start()
            pipeline.drain(120)
        raised.set()
    finally:
        remote.release.set()
        pipeline.close(timeout=60)
        helper.join(60)
    assert not rescued.is_set(), "the flagged Ctrl-C was seen only once the job ended"


# -- admission: in flight, prepared ahead, downloads held for the finish pool ------------------

class GatedRemote(FakeRemote):
    """Tasks complete only when the test says; records the most sent and fetched at once."""

    def __init__(self) -> None:
        super().__init__(polls=1)
        self.release = threading.Event()

    def poll(self, call: Call) -> None:
        self._step("poll")
        call.due = None if self.release.is_set() else 0.01


class HeldJob(StagedJob):
    prepared_now = 0
    most_prepared = 0
    lock = threading.Lock()

    def __init__(self, gate: threading.Event) -> None:
        super().__init__()
        self.gate = gate

    def finish(self, prepared: Prepared, result: Result) -> None:
        assert self.gate.wait(60)
        super().finish(prepared, result)


def test_admission_bounds_tasks_in_flight_unsent_uploads_and_downloads() -> None:
    remote = GatedRemote()
    finish_gate = threading.Event()
    jobs = [HeldJob(finish_gate) for _ in range(40)]
    pipeline = Pipeline(None, Config(), in_flight=6, cpu_workers=2, io_threads=3, remote=remote)
    for job in jobs:
        pipeline.start(job)

    def settled() -> bool:  # nothing more can move until a task completes
        counts = pipeline.counts()
        return (counts.get("waiting", 0) >= 6 and not counts.get("sending")
                and not counts.get("preparing"))

    _until(settled, what="6 tasks waiting")
    counts = pipeline.counts()
    assert counts["waiting"] == remote.asked["send"] == 6  # no more at the service
    assert counts.get("prepared", 0) + counts.get("preparing", 0) <= pipeline.prepare_ahead
    assert sum(counts.values()) == 40
    remote.release.set()
    # the finish pool is held: downloads stop at finish_room, and the 6 places are taken by
    # tasks waiting for it (a finishing job holds no place: its task is over)

    def downloaded() -> bool:  # every task done at the service, no download under way
        counts = pipeline.counts()
        return (not counts.get("fetching") and not counts.get("waiting")
                and counts.get("finishing", 0) >= pipeline.finish_room)

    def full() -> bool:  # the finishing jobs gave their places to new tasks, now done too
        return downloaded() and pipeline.counts().get("ready", 0) == 6

    _until(full, what="the finish room full and 6 results waiting for it")
    assert remote.asked["fetch"] == pipeline.counts()["finishing"] == pipeline.finish_room
    assert remote.asked["send"] == 6 + pipeline.finish_room
    assert pipeline.at_service() == 6 + pipeline.finish_room
    finish_gate.set()
    assert pipeline.drain(60)
    pipeline.close()
    assert all(len(j.results) == 1 and not j.errors for j in jobs)


class WarmJob(StagedJob):
    """A job with a ``warm`` step; counts the jobs holding what a warm made (from the warm
    to the job's end) and the most at once."""

    lock = threading.Lock()

    def __init__(self, holding: list[int], fail_warm: bool = False) -> None:
        super().__init__()
        self.holding = holding  # [now, most]
        self.fail_warm = fail_warm
        self.warms = 0
        self.warmed_before_finish = False

    def warm(self, prepared: Prepared) -> None:
        assert prepared.size == self.size
        with self.lock:
            self.warms += 1
            self.holding[0] += 1
            self.holding[1] = max(self.holding[1], self.holding[0])
        if self.fail_warm:
            raise RuntimeError("warm failed")

    def finish(self, prepared: Prepared, result: Result) -> None:
        self.warmed_before_finish = self.warms == 1
        super().finish(prepared, result)
        with self.lock:
            self.holding[0] -= self.warms


def test_jobs_are_warmed_while_their_tasks_wait_at_most_the_finish_room_at_once() -> None:
    remote = GatedRemote()
    holding = [0, 0]
    jobs = [WarmJob(holding, fail_warm=i == 0) for i in range(12)]
    pipeline = Pipeline(None, Config(), in_flight=6, cpu_workers=2, io_threads=3, remote=remote)
    for job in jobs:
        pipeline.start(job)
    _until(lambda: pipeline.counts().get("waiting", 0) == 6, what="6 tasks waiting")
    # warmed while every task waits: as many as the finish room, no more
    _until(lambda: sum(j.warms for j in jobs) >= pipeline.finish_room, what="warms")
    assert not any(j.results for j in jobs)
    remote.release.set()
    assert pipeline.drain(60)
    pipeline.close()
    assert all(len(j.results) == 1 and not j.errors for j in jobs)  # a failed warm too
    assert all(j.warms <= 1 for j in jobs) and jobs[0].warmed_before_finish
    assert holding[1] == pipeline.finish_room


class SlowFirstRemote(FakeRemote):
    """The tasks of the first ``slow`` jobs sent wait until ``release``; the others are done
    at their first poll."""

    def __init__(self, slow: int) -> None:
        super().__init__(polls=1)
        self.slow = slow
        self.sent = 0
        self.release = threading.Event()

    def send(self, prepared: Prepared, hooks: JobHooks, *, sync: bool) -> Call:
        call = super().send(prepared, hooks, sync=sync)
        with self._lock:
            self.sent += 1
            call.state = self.sent <= self.slow
        return call

    def poll(self, call: Call) -> None:
        self._step("poll")
        call.due = 0.01 if call.state and not self.release.is_set() else None


def test_jobs_ended_behind_slow_warmed_ones_are_not_held() -> None:
    """Every warm place is held by a job whose task is slow, so no warm is handed out;
    hundreds of jobs sent meanwhile end, and the pipeline lets go of them."""
    pipeline = Pipeline(None, Config(), in_flight=6, cpu_workers=2, io_threads=3,
                        remote=(remote := SlowFirstRemote(0)))
    remote.slow = pipeline.finish_room + 1  # the warm places, and one waiting cold in front
    total = 400
    alive: list[weakref.ref[WarmJob]] = []
    holding = [0, 0]
    for _ in range(total):
        job = WarmJob(holding)
        alive.append(weakref.ref(job))
        pipeline.start(job)
    del job
    _until(lambda: remote.asked["fetch"] >= total - remote.slow, what="the quick jobs ended")
    gc.collect()
    held = sum(1 for ref in alive[remote.slow:] if ref() is not None)
    remote.release.set()
    assert pipeline.drain(60)
    pipeline.close()
    assert held <= 2 * pipeline.in_flight, f"{held} ended jobs still held"


# -- the poller ----------------------------------------------------------------------------------

def test_the_poller_hands_out_actions_in_due_order_on_one_thread() -> None:
    ran: list[int] = []
    threads: set[str] = set()
    done = threading.Event()

    def run(action: Callable[[], None]) -> None:
        threads.add(threading.current_thread().name)
        action()

    poller = Poller(run)
    for i, delay in enumerate([0.3, 0.1, 0.2, 0.0]):
        poller.add(delay, lambda i=i: ran.append(i))
    poller.add(0.4, done.set)
    assert done.wait(30)
    poller.close()
    assert ran == [3, 1, 2, 0] and len(threads) == 1


def test_a_flushed_poller_hands_out_everything_now_and_close_runs_what_is_left() -> None:
    ran: list[str] = []
    poller = Poller(lambda action: action())
    poller.add(3600, lambda: ran.append("far"))
    poller.flush()
    _until(lambda: ran == ["far"])
    poller.add(3600, lambda: ran.append("later"))  # flushed: at once
    _until(lambda: ran == ["far", "later"])
    poller.close()
    closing = Poller(lambda action: action())
    closing.add(3600, lambda: ran.append("left"))
    closing.close()
    assert ran[-1] == "left"


def test_a_job_with_its_own_token_is_cancelled_alone() -> None:
    remote = GatedRemote()
    mine, other = CancelToken(), StagedJob()
    alone = StagedJob()
    alone.hooks = JobHooks(cancel=mine)
    pipeline = Pipeline(None, Config(), in_flight=4, remote=remote)
    pipeline.start(alone)
    pipeline.start(other)
    _until(lambda: pipeline.counts().get("waiting", 0) == 2)
    mine.cancel()
    _until(alone.ended.is_set)
    assert isinstance(alone.errors[0], CancelledError)
    remote.release.set()
    assert pipeline.drain(60)
    pipeline.close()
    assert other.results and not other.errors


@pytest.mark.parametrize("when", ["between-polls", "during-a-poll"])
def test_a_job_cancelled_while_its_task_waits_ends_at_once_and_its_task_is_left(
        emulator_factory: Callable[..., Emulator], when: str) -> None:
    """A job's own cancel (not the pipeline's) while its hour-long task waits in the poller:
    the job ends now, not when its next poll comes due (10 minutes away here) or answers
    (held 20 s by the service), and nothing more is asked about its task; the other jobs
    wait on."""
    from bgremove.emulator import Fault

    between = when == "between-polls"
    emu = emulator_factory(delay=3600, faults=() if between else (
        Fault("delay", route="result", every=1, seconds=20),))
    config = configured(emu, {"wavespeed.wait": "poll",
                              "wavespeed.poll.initial": 600.0 if between else 0.05,
                              "wavespeed.poll.max": 600.0 if between else 0.05})
    asked: Counter[str] = Counter()  # task id -> result requests sent

    def count(request: httpx.Request) -> None:
        if request.url.path.endswith("/result"):
            asked[request.url.path.split("/")[-2]] += 1

    from bgremove.wavespeed._transport import bound_sockets

    http = httpx.Client(event_hooks={"request": [count]})
    bound_sockets(http)  # as the backend's own client: a cancel reaches a read under way
    backend = WaveSpeedBackend(config, http=http)
    data = _png(make_keyed_image((16, 16)))
    mine, ids = CancelToken(), []
    alone = BytesJob(data, (16, 16), hooks=JobHooks(cancel=mine, on_task=ids.append))
    others = [BytesJob(data, (16, 16)) for _ in range(2)]
    pipeline = Pipeline(backend, config, in_flight=3, cpu_workers=1)
    for job in (alone, *others):
        pipeline.start(job)
    _until(lambda: pipeline.counts() == {"waiting": 3}, what="3 tasks waiting")
    if not between:  # every job's poll is at the service, held there
        _until(lambda: emu.count("result") >= 3, what="3 polls in flight")
    mine.cancel()
    _until(alone.ended.is_set, 15, what="the cancelled job's end")
    assert len(alone.errors) == 1 and isinstance(alone.errors[0], CancelledError)
    assert not alone.results and pipeline.counts() == {"waiting": 2}
    asked_then = asked[ids[0]]
    pipeline.cancel()  # hands out every poll still waiting, the cancelled job's too
    assert pipeline.drain(60)
    pipeline.close()
    backend.close()
    http.close()
    assert asked[ids[0]] == asked_then  # nothing more asked about its task
    assert emu.prediction(ids[0])["status"] == "processing"  # left to the service
    assert all(len(j.errors) == 1 and not j.results for j in others)


def test_remove_file_cancelled_while_its_task_waits_ends_at_once(
        emulator_factory: Callable[..., Emulator], tmp_path: Path) -> None:
    """The library's one-image call: its cancel token is its pipeline's, so a cancel ends
    it now rather than at the next poll, ten minutes away here; nothing is written."""
    from bgremove.stages import remove_file

    emu = emulator_factory(delay=3600)
    config = configured(emu, {"wavespeed.wait": "poll", "wavespeed.poll.initial": 600.0,
                              "wavespeed.poll.max": 600.0})
    backend = WaveSpeedBackend(config)
    make_keyed_image((16, 16)).save(tmp_path / "a.png")
    token, raised = CancelToken(), []

    def run() -> None:
        try:
            remove_file(tmp_path / "a.png", tmp_path / "out.png", backend, config,
                        JobHooks(cancel=token))
        except CancelledError as exc:
            raised.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    _until(lambda: emu.stats().get("running_tasks", 0) == 1, what="the task at the service")
    token.cancel()
    worker.join(15)
    backend.close()
    assert not worker.is_alive() and len(raised) == 1
    assert not (tmp_path / "out.png").exists() and emu.count("result") == 0


def test_a_result_waiting_for_the_finish_pool_is_still_downloaded_after_the_deadline(
        emulator: Emulator) -> None:
    """The wait for a free finish pool is this machine's, not the service's: a task done
    in time is downloaded however long its result waited (it is paid for)."""
    now = [1000.0]
    config = configured(emulator, {"wavespeed.wait": "sync", "wavespeed.timeouts.overall": 60.0})
    backend = WaveSpeedBackend(config, clock=lambda: now[0])
    gate = threading.Event()
    jobs = [HeldJob(gate) for _ in range(4)]
    data = _png(make_keyed_image((16, 16)))
    for job in jobs:
        job.data, job.size = data, (16, 16)
    pipeline = Pipeline(backend, config, in_flight=4, cpu_workers=1)
    for job in jobs:
        pipeline.start(job)

    def held() -> bool:
        counts = pipeline.counts()
        return counts.get("finishing", 0) == pipeline.finish_room and counts.get("ready") == 2

    _until(held, what="two results waiting for the finish pool")
    now[0] += 3600  # an hour in the queue, far past each image's deadline
    gate.set()
    assert pipeline.drain(60)
    pipeline.close()
    backend.close()
    assert [len(j.results) for j in jobs] == [1, 1, 1, 1], [j.errors for j in jobs]


def test_a_big_batch_starts_jobs_as_others_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                               ) -> None:
    import os

    import bgremove.batch
    from bgremove.contract import Cutout

    class GatedBackend:
        name = "fake"

        def __init__(self) -> None:
            self.gate = threading.Event()
            self.calls = 0

        def cut_out(self, image: Image.Image, hooks: JobHooks | None = None) -> Cutout:
            self.calls += 1
            assert self.gate.wait(60)
            return Cutout(alpha=Image.new("L", image.size, 255), backend=self.name)

        def close(self) -> None:
            pass

    made = [0]
    real_init = bgremove.batch._BatchJob.__init__

    def counting_init(self: Any, *args: Any, **kwargs: Any) -> None:
        made[0] += 1
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(bgremove.batch._BatchJob, "__init__", counting_init)
    srcs = tiny_pngs(tmp_path, 200)
    config = Config().with_overrides({"concurrency": 2})
    plan = plan_outputs(srcs, tmp_path / "out", config.output)
    backend = GatedBackend()
    results: list[JobResult] = []
    runner = threading.Thread(target=lambda: results.extend(
        run_batch(plan, backend, config, on_result=lambda r: None)))
    runner.start()
    _until(lambda: backend.calls == 2, what="two images at the backend")
    bound = 2 + 2 + 2 * (os.cpu_count() or 1)  # in flight, IO threads, CPU workers ahead
    assert made[0] <= bound
    backend.gate.set()
    runner.join(120)
    assert len(results) == 200 and all(r.status == "ok" for r in results)
    assert made[0] == 200
