"""A ``remove`` stopped while its tasks were at the service, then run again: never paid twice.

Each submit is written to the task log before it leaves. ``remove`` as a process, over
sockets to the emulator on 127.0.0.1, is stopped (SIGINT, ``kill -9``) while 3 tasks are
at the service and their answers not read; the same command again finds them in the
service's list and downloads their results: the emulator's submit count stays 3 and every
output is the photo's own pixels with the emulator's mask. Then the cases the reconcile
rules decide: a recorded submit the list does not know while it shows other inputs is sent
once more (the one allowed resend); no list to look in: the image fails naming why, and
nothing is sent.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from bgremove import tasklog
from tests.cli_process import COMMAND, ROOT, bgremove
from tests.conftest import make_keyed_image
from tests.test_reconcile_emulator import assert_cutout, subjects
from tests.test_watch_support import wait_until

SYNC = ("backend: wavespeed\nwavespeed:\n  wait: sync\n  reconcile:\n    settle: 0.3\n"
        "  poll:\n    initial: 0.05\n    max: 0.2\n")


def log_lines() -> list[dict[str, Any]]:
    path = tasklog.log_path()
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def open_submits() -> list[dict[str, Any]]:
    lines = log_lines()
    closed = {e["submit"] for e in lines if "submit" in e and ("task" in e or e.get("closed"))}
    return [e for e in lines if "submit" in e and "task" not in e and not e.get("closed")
            and e["submit"] not in closed]


@pytest.mark.parametrize(("sig", "wait"), [(signal.SIGINT, "sync"), (signal.SIGKILL, "sync"),
                                           (signal.SIGINT, "poll")],
                         ids=["ctrl-c", "kill-9", "poll-ctrl-c"])
def test_a_remove_stopped_with_3_tasks_at_the_service_is_not_paid_twice(
        tmp_path: Path, emulator_factory: Any, sig: signal.Signals, wait: str) -> None:
    """Sync mode: the ids were to come with the answers, so the log holds 3 open submits.
    Poll mode: it holds 3 tasks whose results were never saved. Either way the second run
    pays nothing more."""
    emu = emulator_factory(delay=4.0)
    images = subjects(3)
    inputs = []
    for i, image in enumerate(images):
        inputs.append(tmp_path / f"p{i}.png")
        image.save(inputs[-1])
    config = tmp_path / "config.yaml"
    settings = SYNC.replace("wait: sync", f"wait: {wait}")
    config.write_text(settings, encoding="utf-8")
    env = dict(os.environ, WAVESPEED_API_KEY=emu.api_key, WAVESPEED_BASE_URL=emu.base_url,
               BGREMOVE_CONFIG=str(config), PYTHONUNBUFFERED="1")
    args = ["remove", *map(str, inputs), "-o", str(tmp_path / "out"), "--concurrency", "3"]
    first = subprocess.Popen([*COMMAND, *args], cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: emu.stats()["tasks_submitted"] == 3, 60, what="3 submits")
        if wait == "poll":
            wait_until(lambda: len([e for e in log_lines() if "task" in e]) == 3, 60,
                       what="3 task ids recorded")
        assert emu.stats()["tasks_completed"] == 0  # their answers are still to come
        first.send_signal(sig)
        _, err = first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate()
    if sig == signal.SIGINT:
        assert first.returncode == 130, err
        assert "run the same command again" in err and "bgremove tasks" in err, err
    else:
        assert first.returncode == -signal.SIGKILL
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
    # what the log says of each image: a submit left open, or (an answer that came while
    # Ctrl-C waited for it) a task whose result was never saved
    digests = {hashlib.sha256(p.read_bytes()).hexdigest() for p in inputs}
    assert set(tasklog.pending(emu.base_url)) == digests
    if sig == signal.SIGKILL:
        assert len(open_submits()) == 3
    if wait == "poll":
        assert not open_submits()
        assert all(p.task for ps in tasklog.pending(emu.base_url).values() for p in ps)

    again = bgremove(tmp_path, *args, emulator=emu, config=settings)
    assert again.returncode == 0, again.stderr
    assert emu.stats()["tasks_submitted"] == 3
    assert emu.count("submit") == 3
    assert emu.stats()["duplicate_submits"] == 0
    for src, image in zip(inputs, images, strict=True):
        assert_cutout(tmp_path / "out" / f"{src.stem}.png", image)
    assert tasklog.pending(emu.base_url) == {}
    # `bgremove tasks` now names each task's input
    listed = bgremove(tmp_path, "tasks", "--json", emulator=emu, config=settings)
    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert sorted(r["input"] for r in rows) == sorted(str(p) for p in inputs)
    # a third run has nothing left pending: results kept, nothing sent
    third = bgremove(tmp_path, *args, emulator=emu, config=settings)
    assert third.returncode == 0 and emu.count("submit") == 3


def plant_open_submit(src: Path, base_url: str, url: str, sent_at: float) -> None:
    tasklog.record_submit(url, input=src, sha256=hashlib.sha256(src.read_bytes()).hexdigest(),
                          sent_at=sent_at, service=base_url)


def test_a_recorded_submit_the_list_does_not_hold_is_sent_once_more(
        tmp_path: Path, emulator_factory: Any) -> None:
    """The list shows each task's input: another image's task is there, none from our
    upload. The service surely has no task of it: the one allowed resend."""
    emu = emulator_factory(list_input=True)
    other, mine = (tmp_path / "other.png"), (tmp_path / "mine.png")
    make_keyed_image(size=(40, 30), key=(0, 200, 0)).save(other)
    image = make_keyed_image(size=(64, 48))
    image.save(mine)
    sent_at = time.time()
    done = bgremove(tmp_path, "remove", str(other), "-o", str(tmp_path / "o1"), emulator=emu,
                    config=SYNC)
    assert done.returncode == 0, done.stderr
    plant_open_submit(mine, emu.base_url, f"{emu.base_url}/never-uploaded.png", sent_at)
    result = bgremove(tmp_path, "remove", str(mine), "-o", str(tmp_path / "out"),
                      emulator=emu, config=SYNC)
    assert result.returncode == 0, result.stderr
    assert "no task for it: submitting it again" in result.stderr, result.stderr
    assert emu.count("submit") == 2  # the other image's, and ours once
    assert sorted(emu.stats()["tasks_per_content"].values()) == [1, 1]
    assert_cutout(tmp_path / "out" / "mine.png", image)
    assert tasklog.pending(emu.base_url) == {}


def test_a_recorded_submit_that_cannot_be_looked_up_is_never_sent_again(
        tmp_path: Path, emulator_factory: Any) -> None:
    """No list route: whether the earlier submit made a task cannot be told. The image
    fails with one line saying so and what to do; nothing is sent; the record stays."""
    emu = emulator_factory(list_route=False)
    mine = tmp_path / "mine.png"
    make_keyed_image(size=(64, 48)).save(mine)
    plant_open_submit(mine, emu.base_url, f"{emu.base_url}/lost.png", time.time() - 5)
    result = bgremove(tmp_path, "remove", str(mine), "-o", str(tmp_path / "out"),
                      emulator=emu, config=SYNC)
    assert result.returncode != 0
    assert "no task list" in result.stderr and "bgremove tasks" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert emu.count("submit") == 0 and emu.count("upload") == 0
    assert len(tasklog.pending(emu.base_url)) == 1  # looked up again by the next run


def test_a_record_of_another_service_is_not_looked_up(
        tmp_path: Path, emulator_factory: Any) -> None:
    emu = emulator_factory(list_route=False)
    mine = tmp_path / "mine.png"
    make_keyed_image(size=(64, 48)).save(mine)
    plant_open_submit(mine, "http://127.0.0.1:9", "http://127.0.0.1:9/lost.png", time.time())
    result = bgremove(tmp_path, "remove", str(mine), "-o", str(tmp_path / "out"),
                      emulator=emu, config=SYNC)
    assert result.returncode == 0, result.stderr
    assert emu.count("submit") == 1
    assert len(tasklog.pending("http://127.0.0.1:9")) == 1


@pytest.mark.parametrize("wait", ["sync", "poll"])
def test_a_run_with_a_refused_key_leaves_what_is_pending_pending(
        tmp_path: Path, emulator_factory: Any, wait: str) -> None:
    """Run 1 is killed with its task at the service; run 2 has a mistyped key (the lookup,
    the poll or the breaker fails); run 3, with the right key, still pays nothing more."""
    emu = emulator_factory(api_key="the-right-key", delay=1.0)
    mine, other = tmp_path / "mine.png", tmp_path / "other.png"
    image = make_keyed_image(size=(64, 48))
    image.save(mine)
    make_keyed_image(size=(40, 30), key=(0, 200, 0)).save(other)
    settings = SYNC.replace("wait: sync", f"wait: {wait}")
    config = tmp_path / "config.yaml"
    config.write_text(settings, encoding="utf-8")
    env = dict(os.environ, WAVESPEED_API_KEY=emu.api_key, WAVESPEED_BASE_URL=emu.base_url,
               BGREMOVE_CONFIG=str(config), PYTHONUNBUFFERED="1")
    args = ["remove", str(mine), "-o", str(tmp_path / "out")]
    first = subprocess.Popen([*COMMAND, *args], cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: emu.stats()["tasks_submitted"] == 1, 60, what="the submit")
        if wait == "poll":
            wait_until(lambda: any("task" in e for e in log_lines()), 60, what="its task id")
    finally:
        first.kill()
        first.wait()
    wrong = bgremove(tmp_path, "remove", str(other), str(mine), "-o", str(tmp_path / "out"),
                     emulator=emu, config=settings, env={"WAVESPEED_API_KEY": "mistyped"})
    assert wrong.returncode != 0
    assert len(tasklog.pending(emu.base_url)) == 1, log_lines()
    right = bgremove(tmp_path, *args, emulator=emu, config=settings)
    assert right.returncode == 0, right.stderr
    assert emu.count("submit") == 1
    assert_cutout(tmp_path / "out" / "mine.png", image)
