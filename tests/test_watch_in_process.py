"""``bgremove watch`` run in-process (a library user, a test): it stops on a signal while it
runs and leaves the process's signal handlers as it found them."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Any

import pytest

from bgremove.cli import main
from bgremove.emulator import Emulator
from tests.test_watch_support import files, wait_until, write_image

STOPS = (signal.SIGINT, signal.SIGTERM)


@pytest.mark.parametrize("how", ["sigterm", "once"])
def test_watch_in_process_puts_back_the_signal_handlers(
        tmp_path: Path, emulator: Emulator, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    monkeypatch.setenv("WAVESPEED_API_KEY", emulator.api_key)
    monkeypatch.setenv("WAVESPEED_BASE_URL", emulator.base_url)
    inbox, outbox = tmp_path / "in", tmp_path / "out"
    write_image(inbox / "a.png")
    outbox.mkdir()
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
