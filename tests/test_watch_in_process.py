"""``bgremove watch`` run in-process (a library user, a test): it stops on a signal while it
runs and leaves the process's signal handlers as it found them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from bgremove.cli import main
from bgremove.emulator import Emulator
from tests.test_watch_support import files, wait_until, write_image

STOPS = (signal.SIGINT, signal.SIGTERM)


def folders(tmp_path: Path, emu: Emulator,
            monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """INBOX holding a.png and an empty OUTBOX, the command pointed at ``emu``."""
    monkeypatch.setenv("WAVESPEED_API_KEY", emu.api_key)
    monkeypatch.setenv("WAVESPEED_BASE_URL", emu.base_url)
    inbox, outbox = tmp_path / "in", tmp_path / "out"
    write_image(inbox / "a.png")
    outbox.mkdir()
    return inbox, outbox


@pytest.mark.parametrize("how", ["sigterm", "once"])
def test_watch_in_process_puts_back_the_signal_handlers(
        tmp_path: Path, emulator: Emulator, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    inbox, outbox = folders(tmp_path, emulator, monkeypatch)
    caught: list[int] = []

    def callers_own(signum: int, _frame: Any) -> None:
        caught.append(signum)

    found = {sig: signal.signal(sig, callers_own) for sig in STOPS}
    try:
        if how == "sigterm":  # stop it as a service manager would, once it has done a file
            def stop() -> None:
                wait_until(lambda: files(outbox) == ["a.png"], 60, what="a.png done")
                os.kill(os.getpid(), signal.SIGTERM)

            threading.Thread(target=stop, daemon=True).start()
        code = main(["watch", str(inbox), str(outbox), "--backend", "wavespeed",
                     *(["--once"] if how == "once" else [])])
        handlers = {sig: signal.getsignal(sig) for sig in STOPS}
    finally:
        for sig, handler in found.items():
            signal.signal(sig, handler)
    assert code == 0 and files(outbox) == ["a.png"]
    assert caught == [], "the signal reached the caller's handler, not the daemon's"
    assert handlers == {sig: callers_own for sig in STOPS}


IN_PROCESS = """
import signal, sys
from bgremove.cli import main

signal.signal(signal.SIGTERM, lambda *_: print("the caller's handler", flush=True))
code = main(["watch", sys.argv[1], sys.argv[2], "--backend", "wavespeed"])
print("returned", code, flush=True)
"""


def test_a_second_signal_to_watch_in_process_returns_rather_than_ending_the_process(
        tmp_path: Path, emulator_factory: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """As a command the second signal ends the process at once; run in-process it stops
    the daemon at once and returns to the caller, whose process goes on."""
    emu = emulator_factory(delay=3600)  # the job stays in flight: the first stop waits
    inbox, outbox = folders(tmp_path, emu, monkeypatch)
    errors: list[str] = []
    with subprocess.Popen([sys.executable, "-c", IN_PROCESS, str(inbox), str(outbox)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        stderr, stdout = proc.stderr, proc.stdout
        assert stderr is not None and stdout is not None
        reader = threading.Thread(target=lambda: errors.extend(iter(stderr.readline, "")),
                                  daemon=True)
        reader.start()
        try:
            wait_until(lambda: emu.stats()["tasks_submitted"] == 1, 60,
                       what="a task in flight")
            proc.send_signal(signal.SIGTERM)
            wait_until(lambda: any("SIGTERM received" in line for line in errors), 60,
                       what="the first signal handled")
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
        finally:
            if proc.poll() is None:
                proc.kill()
        reader.join(10)  # stderr read to its end (communicate would race the reader for it)
        out = stdout.read()
    assert proc.returncode == 0, "".join(errors)
    # neither signal reached the caller's handler; the abort is the command's exit code
    assert out.splitlines() == ["returned 130"]
    assert any("second signal" in line for line in errors)


@pytest.mark.parametrize("argv", [["watch", "IN", "OUT", "--backend", "wavespeed"],
                                  ["emulator", "--port", "0"]], ids=["watch", "emulator"])
def test_a_command_only_a_signal_stops_refuses_to_start_off_the_main_thread(
        tmp_path: Path, emulator: Emulator, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    """Signals reach only the main thread: on another the call would never return."""
    inbox, outbox = folders(tmp_path, emulator, monkeypatch)
    args = [str(inbox) if a == "IN" else str(outbox) if a == "OUT" else a for a in argv]
    codes: list[int] = []
    worker = threading.Thread(target=lambda: codes.append(main(args)), daemon=True)
    worker.start()
    worker.join(60)
    assert not worker.is_alive(), "the command runs on with no way to stop it"
    err = capsys.readouterr().err
    assert codes == [2] and f"bgremove: error: bgremove {argv[0]} run off the main thread" in err
    assert "Traceback" not in err
    assert files(outbox) == []  # refused before anything was taken


def test_watch_once_runs_off_the_main_thread(tmp_path: Path, emulator: Emulator,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    inbox, outbox = folders(tmp_path, emulator, monkeypatch)
    codes: list[int] = []
    worker = threading.Thread(target=lambda: codes.append(main(
        ["watch", str(inbox), str(outbox), "--backend", "wavespeed", "--once"])), daemon=True)
    worker.start()
    worker.join(120)
    assert codes == [0] and files(outbox) == ["a.png"]
