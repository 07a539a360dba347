"""The daemon's malloc arenas: at most two, so freed photo buffers are reused across threads."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Eight threads allocating at the same time (each held at a barrier), then glibc's own
# per-arena report on stderr ("Arena 0:", "Arena 1:", ...).
_PROBE = """
import ctypes, sys, threading
from bgremove.memory import limit_malloc_arenas
print(limit_malloc_arenas() if sys.argv[1] == "limit" else None)
barrier = threading.Barrier(8)
def work():
    kept = [bytearray(65536) for _ in range(40)]
    barrier.wait()
threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
ctypes.CDLL(None).malloc_stats()
"""


def _arenas(mode: str) -> tuple[str, int]:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    proc = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True,
                          text=True, cwd=REPO, env=env, timeout=60, check=True)
    return proc.stdout.strip(), sum(line.startswith("Arena ") for line in
                                    proc.stderr.splitlines())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
def test_the_daemon_limits_malloc_to_two_arenas() -> None:
    said, limited = _arenas("limit")
    assert said == "True"
    assert 1 <= limited <= 2
    _, unlimited = _arenas("no")
    assert unlimited > 2  # the probe does make arenas of its own without the limit


def test_the_users_malloc_arena_max_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    from bgremove.memory import limit_malloc_arenas

    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert limit_malloc_arenas() is False


# Two photos decoded one after the other, the first one dropped: Pillow's own block counters.
_BLOCKS_PROBE = """
import io, json, sys
from PIL import Image
buffer = io.BytesIO()
Image.new("RGBA", (3000, 2000), (10, 20, 30, 255)).save(buffer, "PNG")
Image.core.reset_stats()  # counters from here on
from bgremove.imaging import alpha_from_bytes
from bgremove.memory import reuse_image_blocks
if sys.argv[1] == "reuse":
    reuse_image_blocks()
for _ in range(2):
    alpha_from_bytes(buffer.getvalue(), max_pixels=10**8)
print(json.dumps({**Image.core.get_stats(), "max": Image.core.get_blocks_max()}))
"""


def _blocks(env_max: str | None, mode: str = "reuse") -> dict[str, int]:
    env = {k: v for k, v in os.environ.items() if k != "PILLOW_BLOCKS_MAX"}
    if env_max is not None:
        env["PILLOW_BLOCKS_MAX"] = env_max
    proc = subprocess.run([sys.executable, "-c", _BLOCKS_PROBE, mode], capture_output=True,
                          text=True, cwd=REPO, env=env, timeout=60, check=True)
    import json

    return dict(json.loads(proc.stdout))


def test_a_decoded_images_blocks_are_reused_by_the_next() -> None:
    from bgremove.memory import IMAGE_BLOCKS

    stats = _blocks(None)
    assert stats["max"] == IMAGE_BLOCKS
    assert stats["reused_blocks"] >= 2  # the second photo (24 MB: two blocks) took the first's
    untouched = _blocks(None, "library")  # decoding alone (the daemon, a library) sets nothing
    assert untouched["max"] == 0 and untouched["reused_blocks"] == 0


def test_the_users_pillow_blocks_max_wins() -> None:
    stats = _blocks("0")
    assert stats["max"] == 0
    assert stats["reused_blocks"] == 0  # and the probe would reuse blocks without it
