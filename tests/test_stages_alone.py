"""One job on the calling thread (``bgremove.stages.Alone``): ``remove`` of one image, the
library's ``remove_file`` and the GIMP bridge. The same steps as the pipeline's, no pools,
no poller: real emulator sockets and real threads; waits on deadlines, nothing timed.
"""

from __future__ import annotations

import _thread
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from bgremove.batch import plan_outputs, run_batch
from bgremove.contract import JobHooks, Prepared, Result
from bgremove.emulator import Emulator
from bgremove.errors import CancelledError
from bgremove.stages import Alone, Call, remove_file
from bgremove.wavespeed import WaveSpeedBackend
from tests.conftest import configured, make_keyed_image
from tests.test_stages import FakeRemote, StagedJob, _until

#: The names of the pipeline's threads (its CPU pool, IO pool and poller).
PIPELINE_THREADS = ("bgremove-cpu", "bgremove-io", "bgremove-poller")


@contextmanager
def threads_started(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The name of every thread started inside the block."""
    names: list[str] = []
    start = threading.Thread.start

    def recording(thread: threading.Thread) -> None:
        names.append(thread.name)
        start(thread)

    with monkeypatch.context() as patch:
        patch.setattr(threading.Thread, "start", recording)
        yield names


@pytest.mark.parametrize("wait", ["sync", "poll"])
def test_remove_file_runs_every_step_on_the_calling_thread(
        emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, wait: str) -> None:
    """Prepare, submit, each poll, the task's id and the finish happen on the caller's
    thread; the only thread started is the warm (the input decoded while the task waits)."""
    config = configured(emulator, {"wavespeed.wait": wait})
    backend = WaveSpeedBackend(config)
    make_keyed_image((16, 16)).save(tmp_path / "a.png")
    seen: list[tuple[str, threading.Thread]] = []

    def progress(stage: str, _fraction: float) -> None:
        seen.append((stage, threading.current_thread()))

    hooks = JobHooks(progress=progress,
                     on_submit=lambda *_: seen.append(("submit", threading.current_thread())),
                     on_task=lambda _id: seen.append(("task", threading.current_thread())))
    with threads_started(monkeypatch) as started:
        result = remove_file(tmp_path / "a.png", tmp_path / "out.png", backend, config, hooks)
    backend.close()
    assert result.status == "ok" and (tmp_path / "out.png").is_file()
    stages = {stage for stage, _ in seen}
    assert {"prepare", "submit", "task", "compose"} <= stages, stages
    assert all(thread is threading.current_thread() for _, thread in seen), seen
    ours = [name for name in started if name.startswith("bgremove")]  # not the emulator's
    assert not [name for name in ours if name.startswith(PIPELINE_THREADS)], ours
    assert ours == ["bgremove-warm"], ours


def test_remove_of_one_image_starts_no_pipeline_thread(
        emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = configured(emulator, {"wavespeed.wait": "sync"})
    backend = WaveSpeedBackend(config)
    make_keyed_image((16, 16)).save(tmp_path / "a.png")
    plan = plan_outputs([tmp_path / "a.png"], tmp_path / "out", config.output)
    with threads_started(monkeypatch) as started:
        results = run_batch(plan, backend, config, on_result=lambda r: None)
    backend.close()
    assert [r.status for r in results] == ["ok"] and plan[0][1].is_file()
    ours = [name for name in started if name.startswith("bgremove")]  # not the emulator's
    assert ours == ["bgremove-warm"], ours


def test_a_ctrl_c_flagged_during_one_images_sync_wait_stops_it_at_once(
        emulator_factory: Callable[..., Emulator], tmp_path: Path) -> None:
    """A Ctrl-C that Python only flags (it interrupted no system call: it landed just
    before the socket wait began) while one image's sync submit waits on this thread must
    end it while the task still runs, not when the service answers (here: never, unless
    the test ends the task). The batch says its one image may be billed."""
    emu = emulator_factory(delay=3600)
    config = configured(emu, {"wavespeed.wait": "sync"})
    backend = WaveSpeedBackend(config)
    make_keyed_image((16, 16)).save(tmp_path / "a.png")
    plan = plan_outputs([tmp_path / "a.png"], tmp_path / "out", config.output)
    told: list[int] = []
    rescued = threading.Event()

    def flag_ctrl_c() -> None:
        _until(lambda: emu.stats().get("running_tasks", 0) == 1, what="the sync submit")
        _thread.interrupt_main()
        try:
            _until(lambda: bool(told), what="the Ctrl-C acted on")
        except AssertionError:  # not seen: end the task rather than hang
            rescued.set()
            emu.end_delays()

    threading.Thread(target=flag_ctrl_c, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        run_batch(plan, backend, config, on_result=lambda r: None, on_interrupt=told.append)
    backend.close()
    assert not rescued.is_set(), "the flagged Ctrl-C was seen only once the task ended"
    assert told == [1]
    assert emu.stats()["tasks_submitted"] == 1 and emu.stats().get("running_tasks") == 1
    assert not plan[0][1].exists()


# -- the same outcomes as the pipeline's, step by step ---------------------------------------

@pytest.mark.parametrize("stage", ["prepare", "before_send", "send", "poll", "fetch", "finish"])
def test_a_failure_in_any_step_ends_the_job_once(stage: str) -> None:
    job_stage = stage in ("prepare", "before_send", "finish")
    job = StagedJob(fail=stage if job_stage else None)
    remote = FakeRemote(fail=None if job_stage else stage)
    Alone(None, remote=remote).start(job)
    assert len(job.errors) == 1 and not job.results
    assert job.finished == (stage == "finish")
    assert remote.asked["send"] == (stage not in ("prepare", "before_send"))


def test_a_ctrl_c_in_any_step_ends_the_job_once_as_cancelled_and_goes_up() -> None:
    class Interrupted(FakeRemote):
        def poll(self, call: Call) -> None:
            raise KeyboardInterrupt

    job = StagedJob()
    alone = Alone(None, remote=Interrupted())
    with pytest.raises(KeyboardInterrupt):
        alone.start(job)
    assert [type(e) for e in job.errors] == [CancelledError] and not job.results
    assert alone.at_service() == 1  # its task may be billed


def test_a_job_is_warmed_on_its_own_thread_while_its_task_waits() -> None:
    """The warm overlaps the remote step: the task here waits until the warm has run."""
    warmed = threading.Event()
    on: list[str] = []

    class WaitsForWarm(FakeRemote):
        def poll(self, call: Call) -> None:
            assert warmed.wait(60), "no warm while the task waited"
            super().poll(call)

    class Warmed(StagedJob):
        def warm(self, prepared: Prepared) -> None:
            on.append(threading.current_thread().name)
            warmed.set()

        def finish(self, prepared: Prepared, result: Result) -> None:
            on.append(threading.current_thread().name)
            super().finish(prepared, result)

    job = Warmed()
    Alone(None, remote=WaitsForWarm()).start(job)
    assert job.results and on == ["bgremove-warm", threading.current_thread().name]
