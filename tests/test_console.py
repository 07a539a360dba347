"""One way of talking on stderr: the live line (progress, daemon status) on a real terminal,
cleared before every log line; ETA and a summary line off a terminal too; one line style."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

from bgremove.console import Console, Progress
from bgremove.emulator import Fault
from tests.terminal import ROOT, run_in_terminal
from tests.test_watch_support import write_image

BAR = re.compile(r"\[[#.]{30}\] \d+/\d+")


def _env(emu, tmp_path: Path, key: str | None = None) -> dict[str, str]:  # type: ignore[no-untyped-def]
    config = tmp_path / "config.yaml"
    config.write_text("wavespeed:\n  poll:\n    initial: 0.05\n    max: 0.2\n"
                      "  retry:\n    backoff_initial: 0.01\n    backoff_max: 0.1\n"
                      "watch:\n  stable_seconds: 0.2\n  settle_seconds: 0.6\n")
    return {"WAVESPEED_API_KEY": key or emu.api_key, "WAVESPEED_BASE_URL": emu.base_url,
            "BGREMOVE_CONFIG": str(config)}


def test_remove_on_a_terminal_clears_the_bar_before_each_log_line(
        tmp_path: Path, emulator_factory) -> None:  # type: ignore[no-untyped-def]
    emu = emulator_factory(delay=0.2, faults=(Fault("status", route="submit", status=500,
                                                    every=2),))
    srcs = [write_image(tmp_path / f"p{i}.png", i) for i in range(4)]
    run = run_in_terminal(["remove", *map(str, srcs), "-o", str(tmp_path / "out"),
                           "--concurrency", "1"], _env(emu, tmp_path))
    assert run.code == 0, run.terminal
    assert run.stdout.count(" -> ") == 4
    assert BAR.search(run.terminal) and "left" in run.terminal  # the bar, with an ETA
    shown = run.lines()
    # every line left on the screen is in the one style; the bar never shares a line with a
    # log line ("0/4bgremove: warning: ..."), and it is gone at the end
    assert shown and all(line.startswith("bgremove: ") for line in shown), shown
    assert any("warning: " in line and "retrying" in line for line in shown), shown
    assert not any(BAR.search(line) for line in shown), shown
    assert shown[-1] == "bgremove: 4 images: 4 done", shown


def test_remove_off_a_terminal_ends_with_a_summary_line(
        tmp_path: Path, emulator_factory) -> None:  # type: ignore[no-untyped-def]
    emu = emulator_factory()
    srcs = [write_image(tmp_path / f"p{i}.png", i) for i in range(3)]
    (tmp_path / "junk.png").write_text("not an image")
    done = subprocess.run([sys.executable, "-m", "bgremove", "remove", *map(str, srcs),
                           str(tmp_path / "junk.png"), "-o", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env={**_base_env(), **_env(emu, tmp_path)})
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert "\x1b" not in done.stderr and "\r" not in done.stderr  # no drawing off a terminal
    assert len(lines) == 2 and "junk.png" in lines[0]
    assert lines[1] == "bgremove: 4 images: 3 done, 1 failed"


def test_progress_off_a_terminal_prints_plain_lines_with_an_eta() -> None:
    stream = io.StringIO()
    console = Console(stream, plain_every=0)
    progress = Progress(console, 4)
    progress.step()
    progress.step(ok=False)
    progress.finish("4 images: 3 done, 1 failed in 1.0 s")
    lines = stream.getvalue().splitlines()  # nothing at the start: no pace known yet
    assert re.fullmatch(r"bgremove: 1/4 images, about \d+ s left", lines[0]), lines
    assert re.fullmatch(r"bgremove: 2/4 images, 1 failed, about \d+ s left", lines[1]), lines
    assert lines[-1] == "bgremove: 4 images: 3 done, 1 failed in 1.0 s"


def test_watch_on_a_terminal_clears_its_status_line_before_each_log_line(
        tmp_path: Path, emulator_factory) -> None:  # type: ignore[no-untyped-def]
    emu = emulator_factory(delay=0.3)
    inbox, outbox = tmp_path / "in", tmp_path / "out"
    for i in range(3):
        write_image(inbox / f"w{i}.png", i)
    run = run_in_terminal(["watch", str(inbox), str(outbox), "--once", "--concurrency", "1"],
                          _env(emu, tmp_path))
    assert run.code == 0, run.terminal
    assert "queued " in run.terminal and "| done " in run.terminal  # the live status line
    shown = run.lines()
    assert all(re.match(r"bgremove: \d\d:\d\d:\d\d ", line) for line in shown), shown
    assert sum(" done w" in line for line in shown) == 3, shown
    assert not any("| in flight" in line for line in shown), shown  # cleared, never mixed


def test_watch_json_goes_to_stdout_and_plain_lines_to_stderr(
        tmp_path: Path, emulator_factory) -> None:  # type: ignore[no-untyped-def]
    emu = emulator_factory()
    inbox, outbox = tmp_path / "in", tmp_path / "out"
    write_image(inbox / "j.png", 1)
    run = run_in_terminal(["watch", str(inbox), str(outbox), "--once", "--json"],
                          _env(emu, tmp_path))
    assert run.code == 0, run.terminal
    assert run.terminal.strip() == ""  # --json: nothing drawn, nothing on stderr
    assert '"event": "done"' in run.stdout


def test_a_short_key_does_not_garble_messages(tmp_path: Path, emulator_factory) -> None:  # type: ignore[no-untyped-def]
    # a short key that happens to be part of a longer word ("image-background-remover", in
    # every request line at debug level) leaves that word alone; the key itself is scrubbed
    emu = emulator_factory(faults=(Fault("status", route="submit", status=429, first=100),))
    src = write_image(tmp_path / "a.png")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("wavespeed:\n  retry:\n    max_attempts: 1\n")
    done = subprocess.run([sys.executable, "-m", "bgremove", "remove", str(src), "--config",
                           str(cfg), "--log-level", "debug"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env={**_base_env(), "WAVESPEED_API_KEY": "ackground",
                               "WAVESPEED_BASE_URL": emu.base_url})
    assert done.returncode == 1
    assert "Too many requests" in done.stderr, done.stderr
    assert "image-background-remover" in done.stderr, done.stderr
    assert "[redacted]" not in done.stderr, done.stderr
    assert re.search(r"ackground(?!-remover)", done.stderr) is None


def _base_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items()
            if k not in ("WAVESPEED_API_KEY", "WAVESPEED_BASE_URL", "BGREMOVE_CONFIG")}
