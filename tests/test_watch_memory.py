"""The daemon's memory follows its CPU work, not the number of tasks waiting at the service.

A real ``bgremove watch`` process, the real emulator with tasks that take an hour: its peak
resident memory with a hundred photos waiting at the service is compared with ten. A job
waiting on the service holds no decoded pixels (nor its upload, once sent), so the two
peaks are close; a job that kept its decoded photo would add some 11 MB per photo here.
The threads are counted too: a task waiting needs none of its own.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bgremove.emulator import Emulator
from tests.test_watch_support import wait_until

pytestmark = pytest.mark.usefixtures("no_leaked_threads")

PHOTOS = 100
SIZE = (2400, 1600)  # 11.5 MB decoded (RGB)
DECODED = SIZE[0] * SIZE[1] * 3


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Distinct camera-sized JPEGs (gradients and a block of each one's own colour)."""
    from PIL import Image, ImageDraw

    folder = tmp_path_factory.mktemp("photos")
    base = Image.merge("RGB", [Image.linear_gradient("L").resize(SIZE),
                               Image.radial_gradient("L").resize(SIZE),
                               Image.linear_gradient("L").rotate(90).resize(SIZE)])
    paths = []
    for i in range(PHOTOS):
        image = base.copy()
        ImageDraw.Draw(image).rectangle((600, 400, 1800, 1200), fill=(i, 255 - i, (i * 7) % 256))
        path = folder / f"IMG_{i:04d}.jpg"
        image.save(path, quality=90)
        paths.append(path)
    return paths


def peak_and_threads(pid: int) -> tuple[int, int]:
    """The process's peak resident set (VmHWM) in bytes, and its threads now."""
    fields = dict(line.split(":", 1) for line in
                  Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmHWM"].split()[0]) * 1024, int(fields["Threads"])


def daemon_peak(tmp: Path, emu: Emulator, photos: list[Path], in_flight: int
                ) -> tuple[int, int]:
    """Drop every photo, wait until ``in_flight`` tasks wait at the service: the daemon's
    peak memory and its threads then."""
    inbox, outbox = tmp / "in", tmp / "out"
    inbox.mkdir(parents=True)
    config = tmp / "config.yaml"
    config.write_text("backend: wavespeed\n"
                      "wavespeed:\n  poll:\n    initial: 1.0\n    max: 2.0\n"
                      "watch:\n  stable_seconds: 0.2\n  settle_seconds: 0.6\n", encoding="utf-8")
    for photo in photos:
        shutil.copyfile(photo, inbox / photo.name)  # (a file with two names is refused)
    before = emu.stats()["tasks_submitted"]
    env = dict(os.environ, WAVESPEED_API_KEY=emu.api_key, WAVESPEED_BASE_URL=emu.base_url,
               XDG_STATE_HOME=str(tmp / "state"))
    log = open(tmp / "daemon.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "bgremove", "watch", str(inbox), str(outbox),
                             "--config", str(config), "--concurrency", str(in_flight)],
                            stdout=subprocess.DEVNULL, stderr=log, env=env,
                            cwd=Path(__file__).resolve().parents[1])
    try:
        wait_until(lambda: emu.stats()["tasks_submitted"] - before >= in_flight
                   or proc.poll() is not None or (inbox / "failed").exists(), 240, interval=0.2,
                   what=f"{in_flight} tasks at the service")
        assert proc.poll() is None and not (inbox / "failed").exists(), \
            (tmp / "daemon.log").read_text()
        return peak_and_threads(proc.pid)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(20)
        log.close()


def test_a_hundred_tasks_in_flight_keep_the_daemon_memory_flat(
        tmp_path: Path, emulator_factory, photos: list[Path]) -> None:
    emu = emulator_factory(delay=3600.0)  # no task ends while the peaks are read
    ten, ten_threads = daemon_peak(tmp_path / "ten", emu, photos, 10)
    hundred, hundred_threads = daemon_peak(tmp_path / "hundred", emu, photos, 100)
    # 90 more photos waiting: holding each one's pixels would add ~1 GB; allow a fraction
    # of that for connections and the allocator
    assert hundred - ten < 25 * DECODED, (ten, hundred)
    # nor a thread each: the same few upload, poll and download for all of them
    assert hundred_threads < ten_threads + 20, (ten_threads, hundred_threads)
