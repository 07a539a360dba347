"""Tests that fail on bugs once planted in the daemon and went unnoticed (issue 12, item 13):
a claim that is not one rename, the settle window, the cost guard's hour, the periodic
rescan, images-per-minute pacing. Real files, processes and threads; deadlines, not sleeps.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from bgremove.watcher.journal import Journal
from bgremove.watcher.limits import HOUR, CostGuard
from tests.test_watch_process import Proc
from tests.test_watch_support import DaemonRun, files, image_bytes, wait_until, write_image

pytestmark = pytest.mark.usefixtures("no_leaked_threads")

ROOT = Path(__file__).resolve().parents[1]

CLAIMER = """
import json, os, sys
from pathlib import Path
from bgremove.watcher.claims import Claims, make_owner_id
root, inbox, go = (Path(a) for a in sys.argv[1:4])
claims = Claims(root, make_owner_id())
claims.start()
print("ready", flush=True)
while not go.exists():
    pass
won = []
for name in sorted(os.listdir(inbox)):
    try:
        if claims.claim(inbox / name, Path(name)) is not None:
            won.append(name)
    except OSError:
        pass
print(json.dumps(won), flush=True)
"""


def test_claimers_racing_over_a_thousand_files_never_share_one(tmp_path: Path) -> None:
    """Three processes claim the same 1000 files in the same order at the same moment: each
    file ends in exactly one claim folder (a claim must be one rename, never link + unlink)."""
    inbox, root, go = tmp_path / "in", tmp_path / "in" / ".bgremove-claims", tmp_path / "go"
    inbox.mkdir()
    for i in range(1000):
        (inbox / f"f{i:04d}.png").write_bytes(b"x" * (i + 1))
    procs = [subprocess.Popen([sys.executable, "-c", CLAIMER, str(root), str(inbox), str(go)],
                              stdout=subprocess.PIPE, text=True, cwd=ROOT) for _ in range(3)]
    try:
        for proc in procs:  # both wait at the start line, then take the same files in order
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        go.write_text("go")
        won = [set(json.loads(proc.communicate(timeout=60)[0])) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    assert sum(len(w) for w in won) == len(set().union(*won)) == 1000  # none claimed twice
    claimed = list(root.rglob("*.png"))
    assert len(claimed) == 1000 and not list(inbox.glob("*.png"))  # each file in one place


def test_a_writer_pausing_longer_than_stable_seconds_is_waited_for(
        tmp_path: Path, emulator_factory) -> None:  # type: ignore[no-untyped-def]
    """A half-written file is stable (unchanged) for a moment but does not decode yet: it is
    given the settle window to be finished, not failed."""
    emu = emulator_factory()
    inbox, outbox = tmp_path / "in", tmp_path / "out"
    inbox.mkdir()
    (tmp_path / "config.yaml").write_text(
        "backend: wavespeed\nwatch:\n  stable_seconds: 0.2\n  settle_seconds: 4\n"
        "  poll_seconds: 0.1\n  shutdown_grace: 10\n")
    proc = Proc(tmp_path, emu, str(inbox), str(outbox))
    try:
        wait_until(lambda: "watching" in proc.log(), 30, what="the daemon to start")
        data = image_bytes(5, size=(120, 90))
        target = inbox / "paused.png"
        with open(target, "wb") as fh:
            fh.write(data[: len(data) // 2])
            fh.flush()
            # the writer stalls (a slow network copy): 1 s, well past stable_seconds
            resume = time.monotonic() + 1.0
            while time.monotonic() < resume:
                assert files(inbox / "failed") == [], "a paused write was failed"
                time.sleep(0.05)
            fh.write(data[len(data) // 2:])
        wait_until(lambda: files(inbox / "done") == ["paused.png"], 30, what="paused.png done")
    finally:
        proc.signal(signal.SIGTERM)
        proc.wait(30)
    assert files(inbox / "failed") == [] and files(outbox) == ["paused.png"]


class _Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_the_cost_guards_hour_is_an_hour(tmp_path: Path) -> None:
    clock = _Clock(2_000_000.0)
    journal = Journal(tmp_path / "j.sqlite3")
    try:
        guard = CostGuard(journal, per_hour=2, per_day=0, clock=clock)
        assert guard.try_acquire("a") == 0 and guard.try_acquire("b") == 0
        for later in (61.0, 600.0, 1800.0, HOUR - 1.0):  # still the same hour
            clock.now = 2_000_000.0 + later
            assert not guard.open_now(), f"open after {later} s"
            assert guard.try_acquire("c") == pytest.approx(HOUR - later)
        clock.now = 2_000_000.0 + HOUR + 1.0
        assert guard.open_now() and guard.try_acquire("c") == 0
    finally:
        journal.close()
    assert HOUR == 3600.0


def test_the_periodic_rescan_finds_files_no_event_announced(tmp_path: Path,
                                                            emulator_factory) -> None:  # type: ignore[no-untyped-def]
    """Events can be lost (network shares, a full inotify queue, coalescing): the rescan
    every ``watch.rescan_seconds`` takes what they missed."""
    emu = emulator_factory()
    with DaemonRun(tmp_path, emu, "native", rescan_seconds=1.0) as run:
        run.daemon.watcher.offer = lambda path, whole=False: None  # every file event is lost
        run.daemon.watcher.rescan_folder = lambda folder: None
        write_image(run.inbox / "missed.png", 7)
        wait_until(lambda: files(run.done) == ["missed.png"], 20, what="found by a rescan")
    assert files(run.outbox) == ["missed.png"]


def test_images_per_minute_paces_the_daemon(tmp_path: Path, emulator_factory) -> None:  # type: ignore[no-untyped-def]
    emu = emulator_factory()
    clock = _Clock(1000.0)  # the limiter's clock stands still until the test moves it
    with DaemonRun(tmp_path, emu, "native", images_per_minute=2, concurrency=3) as run:
        limiter = run.daemon.rate
        limiter._clock = clock
        calls: list[Any] = []
        acquire = limiter.acquire

        def counted(*args: Any, **kwargs: Any) -> bool:
            calls.append(threading.current_thread().name)
            return bool(acquire(*args, **kwargs))

        limiter.acquire = counted
        for i in range(3):
            write_image(run.inbox / f"p{i}.png", 20 + i)
        # two go out; the third waits in the limiter (its clock does not move)
        wait_until(lambda: len(calls) == 3 and emu.stats()["tasks_submitted"] == 2, 20,
                   what="two submitted, the third waiting for its turn")
        assert limiter.delay() > 0 and emu.stats()["tasks_submitted"] == 2
        clock.now += limiter.window + limiter.slack  # a minute later the third may go
        wait_until(lambda: len(files(run.done)) == 3, 20, what="the third after a minute")
    assert emu.stats()["tasks_submitted"] == 3


def test_a_killed_daemon_is_reported_as_killed(tmp_path: Path, emulator_factory) -> None:  # type: ignore[no-untyped-def]
    emu = emulator_factory(delay=600.0)
    inbox, outbox = tmp_path / "in", tmp_path / "out"
    write_image(inbox / "k.png", 3)
    proc = Proc(tmp_path, emu, str(inbox), str(outbox))
    try:
        wait_until(lambda: (outbox / ".bgremove" / "journal.sqlite3").exists()
                   and "watching" in proc.log(), 30, what="the daemon to start")
        wait_until(lambda: _status(outbox)["daemons"][0]["state"] == "running", 30,
                   what="status: running")
    finally:
        proc.kill()  # SIGKILL: it never writes "stopped"
    assert _status(outbox)["daemons"][0]["state"] == "killed"
    text = subprocess.run([sys.executable, "-m", "bgremove", "status", str(outbox)],
                          capture_output=True, text=True, timeout=30, cwd=ROOT).stdout
    assert "not running (last daemon pid" in text and "killed" in text, text

    stopped = Proc(tmp_path, emu, str(inbox), str(outbox), name="stopped")
    wait_until(lambda: "watching" in stopped.log(), 30, what="the second daemon to start")
    stopped.signal(signal.SIGTERM)  # a clean stop (the task resumes later)
    stopped.wait(60)
    states = {d["pid"]: d["state"] for d in _status(outbox)["daemons"]}
    assert states == {proc.popen.pid: "killed", stopped.popen.pid: "stopped"}


def _status(outbox: Path) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-m", "bgremove", "status", str(outbox), "--json"],
                          capture_output=True, text=True, timeout=30, cwd=ROOT,
                          env={**os.environ})
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))
