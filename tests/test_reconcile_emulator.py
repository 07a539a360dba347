"""Lost submit answers resolved through the prediction list, against the emulator over sockets.

Every form of lost answer (a dropped connection, a gateway 502/504 without an
id, a sync wait the gateway or the connection gave up on, a read timeout, a
submit that never created a task), in sync and poll mode, in ``remove`` and
in ``watch``: every output is checked pixel by pixel and the emulator's count
of tasks per uploaded content must be exactly one per image. Then the cases
that must end in the clear error and never a second task: no list route, a
clock five minutes off. Then ``kill -9`` of the daemon between sending a
submit and reading its answer, and a restart that adopts the task.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from bgremove.cli import main
from bgremove.emulator import Emulator, Fault, keyout_alpha
from tests.conftest import configured, make_keyed_image
from tests.holding_proxy import HoldingProxy
from tests.test_watch_support import DaemonRun, files, wait_until

REPO = Path(__file__).resolve().parents[1]

#: name -> (emulator options, config keys, modes it applies to)
LOST: dict[str, tuple[dict[str, Any], dict[str, Any], tuple[str, ...]]] = {
    "dropped": ({"faults": (Fault("drop", route="submit", first=2, after=True),)}, {},
                ("sync", "poll")),
    # a service that zeroes the colours it cuts away: matched by the opaque pixels alone
    "dropped-zero-clear": ({"output_colours": "zero-clear", "faults": (
        Fault("drop", route="submit", first=2, after=True),)}, {}, ("sync", "poll")),
    "dropped-input-listed": ({"list_input": True, "faults": (
        Fault("drop", route="submit", first=2, after=True),)}, {}, ("sync", "poll")),
    "gateway-502": ({"faults": (Fault("status", route="submit", status=502, first=2,
                                      after=True),)}, {}, ("sync", "poll")),
    "gateway-504": ({"faults": (Fault("status", route="submit", status=504, first=2,
                                      after=True),)}, {}, ("sync", "poll")),
    "never-created": ({"faults": (Fault("drop", route="submit", first=2),)}, {},
                      ("sync", "poll")),
    "read-timeout": ({"faults": (Fault("delay", route="submit", first=2, seconds=0.6),)},
                     {"wavespeed.timeouts.submit": 0.3, "wavespeed.timeouts.sync_wait": 0.3,
                      "wavespeed.reconcile.settle": 1.5}, ("sync", "poll")),
    "sync-wait-gateway": ({"delay": 0.5, "sync_timeout": 0.2, "sync_timeout_style": "gateway"},
                          {}, ("sync",)),
    "sync-wait-dropped": ({"delay": 0.5, "sync_timeout": 0.2, "sync_timeout_style": "drop"},
                          {}, ("sync",)),
}
CASES = [(name, mode) for name, (_, _, modes) in LOST.items() for mode in modes]


def subjects(n: int) -> list[Image.Image]:
    """Images no cut-out of one matches another (different sizes and colours)."""
    return [make_keyed_image(size=(48 + 8 * i, 36 + 4 * i), key=(40 * i, 200, 255 - 40 * i))
            for i in range(n)]


def assert_cutout(path: Path, original: Image.Image) -> None:
    with Image.open(path) as out:
        assert out.size == original.size
        assert out.getchannel("A").tobytes() == keyout_alpha(original).tobytes()


def assert_one_task_per_image(emu: Emulator, images: int) -> None:
    per_content = emu.stats()["tasks_per_content"]
    assert sorted(per_content.values()) == [1] * images, per_content


def write_config(path: Path, emu: Emulator, wait: str, keys: dict[str, Any]) -> Path:
    from bgremove.config import Config

    config = configured(emu, {"wavespeed.wait": wait, **keys})
    assert isinstance(config, Config)
    values: dict[str, Any] = {"backend": "wavespeed"}
    for dotted, value in {"wavespeed.wait": wait, "wavespeed.poll.initial": 0.05,
                          "wavespeed.poll.max": 0.2, "wavespeed.retry.backoff_initial": 0.01,
                          "wavespeed.retry.backoff_max": 0.1,
                          "wavespeed.reconcile.settle": 0.3, **keys}.items():
        node = values
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    path.write_text(json.dumps(values), encoding="utf-8")  # JSON is YAML
    return path


def run_remove(tmp_path: Path, emu: Emulator, monkeypatch: pytest.MonkeyPatch,
               capsys: pytest.CaptureFixture[str], inputs: list[Path], wait: str,
               keys: dict[str, Any] | None = None,
               json_lines: bool = True) -> tuple[int, list[dict[str, Any]], str]:
    monkeypatch.setenv("WAVESPEED_API_KEY", emu.api_key)
    monkeypatch.setenv("WAVESPEED_BASE_URL", emu.base_url)
    config = write_config(tmp_path / "config.yaml", emu, wait, keys or {})
    code = main(["remove", *map(str, inputs), "-o", str(tmp_path / "out"),
                 *(["--json"] if json_lines else []), "--concurrency", "3",
                 "--config", str(config)])
    out, err = capsys.readouterr()
    return code, [json.loads(line) for line in out.splitlines()] if json_lines else [], err


@pytest.mark.parametrize(("lost", "wait"), CASES)
def test_remove_resolves_every_lost_answer(tmp_path: Path, emulator_factory: Any,
                                           monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str], lost: str,
                                           wait: str) -> None:
    options, keys, _ = LOST[lost]
    emu = emulator_factory(**options)
    images = subjects(3)
    inputs = []
    for i, image in enumerate(images):
        inputs.append(tmp_path / f"in{i}.png")
        image.save(inputs[-1])
    code, results, err = run_remove(tmp_path, emu, monkeypatch, capsys, inputs, wait, keys)
    assert code == 0, err
    assert [r["status"] for r in results] == ["ok"] * 3
    for i, image in enumerate(images):
        assert_cutout(tmp_path / "out" / f"in{i}.png", image)
    assert_one_task_per_image(emu, 3)
    # the answer really was lost, and resolved through the list
    if lost == "never-created":
        assert "submitting it again" in err and emu.count("submit") == 5
    else:
        assert "found its task" in err and emu.count("submit") == 3
    if lost == "dropped-input-listed":  # matched by the upload's URL: no output compared
        assert emu.count("download") == 3


@pytest.mark.parametrize("wait", ["sync", "poll"])
def test_a_lost_answer_of_a_model_answering_below_full_size_is_adopted(
        tmp_path: Path, emulator_factory: Any, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], wait: str) -> None:
    # outputs capped to 32 px: matched by their scaled-down pixels, never submitted again
    emu = emulator_factory(output_max_side=32,
                           faults=(Fault("drop", route="submit", first=2, after=True),))
    images = subjects(3)
    inputs = []
    for i, image in enumerate(images):
        inputs.append(tmp_path / f"in{i}.png")
        image.save(inputs[-1])
    code, results, err = run_remove(tmp_path, emu, monkeypatch, capsys, inputs, wait)
    assert code == 0, err
    assert [r["status"] for r in results] == ["ok"] * 3
    for i, image in enumerate(images):
        with Image.open(tmp_path / "out" / f"in{i}.png") as out:
            assert out.size == image.size
    assert "found its task" in err and emu.count("submit") == 3
    assert_one_task_per_image(emu, 3)


def test_identical_images_in_one_batch_each_adopt_one_task(
        tmp_path: Path, emulator_factory: Any, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    emu = emulator_factory(delay=0.2,
                           faults=(Fault("drop", route="submit", first=3, after=True),))
    image = make_keyed_image()
    inputs = [tmp_path / f"same{i}.png" for i in range(3)]
    for path in inputs:
        image.save(path)
    code, results, err = run_remove(tmp_path, emu, monkeypatch, capsys, inputs, "poll")
    assert code == 0, err
    for i in range(3):
        assert_cutout(tmp_path / "out" / f"same{i}.png", image)
    assert list(emu.stats()["tasks_per_content"].values()) == [3]  # one per image
    assert len({r["task_id"] for r in results}) == 3


@pytest.mark.parametrize("lost", [n for n, m in CASES if m == "poll"])
def test_watch_resolves_every_lost_answer(tmp_path: Path, emulator_factory: Any,
                                          caplog: pytest.LogCaptureFixture, lost: str) -> None:
    caplog.set_level(logging.INFO)
    options, keys, _ = LOST[lost]
    emu = emulator_factory(**options)
    images = subjects(3)
    run = DaemonRun(tmp_path, emu)
    run.config = run.config.with_overrides(keys)
    with run:
        for i, image in enumerate(images):
            image.save(run.inbox / f"w{i}.png")
        wait_until(lambda: len(files(run.done)) + len(files(run.failed)) == 3, 60,
                   what="every file done")
    assert files(run.failed) == []
    # the answers really were lost, and resolved through the list
    assert ("submitting it again" if lost == "never-created" else "found its task") in caplog.text
    for i, image in enumerate(images):
        assert_cutout(run.outbox / f"w{i}.png", image)
    assert_one_task_per_image(emu, 3)


def test_watch_looks_again_later_when_the_list_is_down_past_the_deadline(
        tmp_path: Path, emulator_factory: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    emu = emulator_factory(faults=(Fault("drop", route="submit", first=1, after=True),
                                   Fault("status", route="list", status=503, first=10**9)))
    image = make_keyed_image()
    run = DaemonRun(tmp_path, emu)
    run.config = run.config.with_overrides({"wavespeed.timeouts.overall": 1.5})
    with run:
        image.save(run.inbox / "d.png")
        wait_until(lambda: "could not be read in time" in caplog.text, 30,
                   what="the first look given up")
        emu.set_faults()  # the list is back
        wait_until(lambda: files(run.done) or files(run.failed), 30, what="an outcome")
    assert files(run.done) == ["d.png"] and files(run.failed) == []
    assert_cutout(run.outbox / "d.png", image)
    assert "looking for its task" in caplog.text and "found its task" in caplog.text
    assert emu.count("submit") == 1 and emu.stats()["tasks_submitted"] == 1


def test_watch_never_adopts_a_task_its_journal_already_holds(
        tmp_path: Path, emulator_factory: Any, caplog: pytest.LogCaptureFixture) -> None:
    """The same picture cut out a moment ago (another run, --reprocess now): its task is in
    the list's window and matches the pixels, but it is not this submit's."""
    caplog.set_level(logging.INFO)
    emu = emulator_factory()
    image = make_keyed_image()
    with DaemonRun(tmp_path, emu) as run:
        image.save(run.inbox / "x.png")
        wait_until(lambda: files(run.done) == ["x.png"], 30, what="the first run")
    emu.set_faults(Fault("drop", route="submit", first=1))  # lost before any task exists
    with DaemonRun(tmp_path, emu, reprocess=True) as run:
        image.save(run.inbox / "x.png")
        wait_until(lambda: len(files(run.done)) == 2, 30, what="the second run")
    assert "submitting it again" in caplog.text and "found its task" not in caplog.text
    assert emu.stats()["tasks_submitted"] == 2 and emu.count("submit") == 3


def test_a_submit_the_journal_cannot_record_is_not_sent(
        tmp_path: Path, emulator_factory: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from bgremove.watcher.journal import Journal

    emu = emulator_factory()
    real_update = Journal.update
    refused: list[float] = []
    journaled: list[int] = []  # submits the service had seen when a send was journaled

    def update(self: Journal, key: str, **fields: Any) -> None:
        if fields.get("submit_sent") and not refused:
            refused.append(fields["submit_sent"])
            raise sqlite3.OperationalError("disk I/O error")
        real_update(self, key, **fields)
        if fields.get("submit_sent"):
            journaled.append(emu.count("submit"))

    monkeypatch.setattr(Journal, "update", update)
    image = make_keyed_image()
    with DaemonRun(tmp_path, emu) as run:
        image.save(run.inbox / "j.png")
        wait_until(lambda: files(run.done) or files(run.failed), 30, what="an outcome")
    assert refused and files(run.done) == ["j.png"]
    assert journaled == [0]  # the one submit left only after it was journaled
    assert emu.count("submit") == 1 and emu.stats()["tasks_submitted"] == 1


# -- the clear error, never a second task --------------------------------------------------------

def own_lines(err: str) -> list[str]:
    """bgremove's own lines on stderr (the in-process emulator logs there too)."""
    return [x for x in err.splitlines()
            if x.startswith("bgremove: ") and "WaveSpeed emulator" not in x]


def test_remove_without_the_list_route_fails_clearly_with_one_task(
        tmp_path: Path, emulator_factory: Any, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    emu = emulator_factory(list_route=False,
                           faults=(Fault("drop", route="submit", first=1, after=True),))
    path = tmp_path / "a.png"
    make_keyed_image().save(path)
    code, _, err = run_remove(tmp_path, emu, monkeypatch, capsys, [path], "sync",
                              json_lines=False)
    assert code == 1 and not (tmp_path / "out" / "a.png").exists()
    *line, closing = own_lines(err)
    assert closing == "bgremove: 1 image: 0 done, 1 failed"
    assert len(line) == 1 and "no task list" in line[0] and "bgremove tasks" in line[0]
    assert "Traceback" not in err and emu.api_key not in err
    assert emu.stats()["tasks_submitted"] == 1 and emu.count("submit") == 1


@pytest.mark.parametrize("list_input", [False, True], ids=["by-pixels", "by-input-url"])
def test_a_near_identical_photos_task_is_never_taken_when_ours_was_never_created(
        tmp_path: Path, emulator_factory: Any, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], list_input: bool) -> None:
    from bgremove.wavespeed import WaveSpeedClient

    emu = emulator_factory(list_input=list_input)
    ours = make_keyed_image(size=(200, 150))
    near = ours.copy()  # a burst's next photo: 16 subject pixels differ (within the allowance)
    near.paste((10, 10, 250), (60, 45, 64, 49))
    near_png = tmp_path / "near.png"
    near.save(near_png)
    # another program of the account cuts out the near photo first
    with WaveSpeedClient(configured(emu).wavespeed) as other:
        url = other.upload(near_png.read_bytes(), "image.png", "image/png")
        assert other.run(url, sync=True).status == "completed"
    emu.set_faults(Fault("drop", route="submit", first=1))  # our submit creates no task
    path = tmp_path / "ours.png"
    ours.save(path)
    code, _, err = run_remove(tmp_path, emu, monkeypatch, capsys, [path], "poll",
                              json_lines=False)
    if list_input:  # the list shows no task of this upload: the one safe resend
        assert code == 0, err
        assert_cutout(tmp_path / "out" / "ours.png", ours)
        assert "submitting it again" in err and emu.count("submit") == 3
        assert sorted(emu.stats()["tasks_per_content"].values()) == [1, 1]
    else:  # it cannot be told: neither the other photo's mask nor a second submit
        assert code == 1 and not (tmp_path / "out" / "ours.png").exists()
        *line, closing = own_lines(err)
        assert closing == "bgremove: 1 image: 0 done, 1 failed"
        assert len(line) == 1 and "not exactly" in line[0] and "bgremove tasks" in line[0]
        assert emu.count("submit") == 2 and emu.stats()["tasks_submitted"] == 1


def test_watch_without_the_list_route_sends_the_file_to_failed_with_one_task(
        tmp_path: Path, emulator_factory: Any) -> None:
    emu = emulator_factory(list_route=False,
                           faults=(Fault("drop", route="submit", first=1, after=True),))
    with DaemonRun(tmp_path, emu) as run:
        make_keyed_image().save(run.inbox / "u.png")
        wait_until(lambda: files(run.failed), 30, what="the file in failed/")
    report = json.loads((run.failed / "u.png.error.json").read_text())
    assert report["kind"] == "submit_uncertain" and "no task list" in report["error"]
    assert "move the file back into INBOX" in report["hint"]
    assert emu.stats()["tasks_submitted"] == 1 and emu.count("submit") == 1


@pytest.mark.parametrize("wait", ["sync", "poll"])
@pytest.mark.parametrize("off", [300.0, -300.0])
def test_a_clock_five_minutes_off_fails_clearly_with_one_task(
        emulator_factory: Any, wait: str, off: float) -> None:
    from bgremove.errors import SubmitUncertainError
    from bgremove.wavespeed import WaveSpeedBackend

    emu = emulator_factory(faults=(Fault("drop", route="submit", first=1),))  # no task made
    backend = WaveSpeedBackend(configured(emu, {"wavespeed.wait": wait}),
                               wall_clock=lambda: time.time() + off)
    try:
        with pytest.raises(SubmitUncertainError, match=r"clock is (299|300|301) s"):
            backend.cut_out(make_keyed_image())
    finally:
        backend.close()
    assert emu.count("submit") == 1 and emu.stats()["tasks_submitted"] == 0


@pytest.mark.parametrize("lost", ["dropped", "never-created"])
def test_remove_with_the_clock_five_minutes_off_fails_clearly_with_one_task(
        tmp_path: Path, emulator_factory: Any, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], lost: str) -> None:
    # the service's clock (created_at and the Date header) 5 minutes ahead of this computer's
    emu = emulator_factory(clock_skew=300.0, faults=(
        Fault("drop", route="submit", first=1, after=lost == "dropped"),))
    path = tmp_path / "a.png"
    make_keyed_image().save(path)
    code, _, err = run_remove(tmp_path, emu, monkeypatch, capsys, [path], "sync",
                              json_lines=False)
    assert code == 1 and not (tmp_path / "out" / "a.png").exists()
    *line, closing = own_lines(err)
    assert closing == "bgremove: 1 image: 0 done, 1 failed"
    assert len(line) == 1 and "clock is 300 s behind" in line[0].replace("299 s", "300 s")
    assert emu.count("submit") == 1
    assert emu.stats()["tasks_submitted"] == (1 if lost == "dropped" else 0)


# -- kill -9 between sending a submit and reading its answer -----------------------------------

class Watch:
    """``python -m bgremove watch`` as a process, its log in a file."""

    def __init__(self, tmp: Path, base_url: str, key: str, name: str) -> None:
        config = tmp / "watch.yaml"
        config.write_text(json.dumps({
            "backend": "wavespeed",
            "wavespeed": {"poll": {"initial": 0.05, "max": 0.2},
                          "retry": {"backoff_initial": 0.01, "backoff_max": 0.1},
                          "reconcile": {"settle": 0.5}},
            "watch": {"stable_seconds": 0.2, "settle_seconds": 0.6, "poll_seconds": 0.1,
                      "stale_claim_seconds": 1.0}}), encoding="utf-8")
        self.log_path = tmp / f"{name}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        env = dict(os.environ, WAVESPEED_API_KEY=key, WAVESPEED_BASE_URL=base_url,
                   PYTHONUNBUFFERED="1")
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "bgremove", "watch", str(tmp / "in"), str(tmp / "out"),
             "--config", str(config)], stdout=subprocess.DEVNULL, stderr=self._log,
            cwd=REPO, env=env)

    def kill(self) -> None:
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(10)
        self._log.close()

    def stop(self) -> int:
        self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(30)
        finally:
            self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")


def journal_job(outbox: Path) -> tuple[str, str | None, float | None] | None:
    path = outbox / ".bgremove" / "journal.sqlite3"
    if not path.exists():
        return None
    db = sqlite3.connect(str(path), timeout=10)
    try:
        row = db.execute("SELECT state, task_id, submit_sent FROM jobs").fetchone()
    except sqlite3.OperationalError:
        return None
    finally:
        db.close()
    return None if row is None else (row[0], row[1], row[2])


@pytest.mark.parametrize("hold", ["answer", "request"],
                         ids=["task-created", "request-never-arrived"])
def test_kill_9_during_a_submit_then_a_restart_adopts_the_task(
        tmp_path: Path, emulator_factory: Any, hold: str) -> None:
    """The daemon is killed with its submit sent and the answer unread: the journal holds
    "submit sent at T for upload U" and no task id. The restart finds the task in the list
    (or, when the request never reached the service, sees there is none and submits once)."""
    emu = emulator_factory()
    image = make_keyed_image(size=(64, 48))
    (tmp_path / "in").mkdir()
    # the outputs' URLs name the proxy, so the restart goes through it too (holding no more)
    with HoldingProxy(emu.host, emu.port, hold=hold) as proxy:
        first = Watch(tmp_path, proxy.base_url, emu.api_key, "first")
        try:
            image.save(tmp_path / "in" / "k.png")
            assert proxy.held.wait(30), "the submit never came"
            wait_until(lambda: (journal_job(tmp_path / "out") or ("", None, None))[2], 10,
                       what="the submit journaled")
        finally:
            first.kill()
        state, task_id, sent = journal_job(tmp_path / "out") or ("", None, None)
        assert state == "claimed" and task_id is None and sent is not None
        assert emu.stats()["tasks_submitted"] == (1 if hold == "answer" else 0)
        second = Watch(tmp_path, proxy.base_url, emu.api_key, "second")
        try:
            wait_until(lambda: files(tmp_path / "out") == ["k.png"], 60, what="the cut-out")
            wait_until(lambda: files(tmp_path / "in" / "done") == ["k.png"], 30, what="done/")
        finally:
            assert second.stop() == 0, second.log()
    assert_cutout(tmp_path / "out" / "k.png", image)
    assert emu.stats()["tasks_submitted"] == 1
    log = second.log()
    assert "looking for its task" in log
    if hold == "answer":
        assert "found its task" in log and emu.count("submit") == 1
    else:
        assert "submitting it again" in log and emu.count("submit") == 1
