"""The finish of one upright 24 MP camera photo, in this process, by the service's colours.

    .venv/bin/python benchmarks/bench_finish.py [--rounds 5]

The photo is ``camera_photos.py``'s first (6000x4000, orientation 1); the service's
cut-out is the emulator's key-out of it with its edges blurred (partial alpha along them,
as a model's are), as a PNG, with the colours a service may send:
the photo's own everywhere ("input"), 0,0,0 under alpha 0 ("zero-clear", as many
services send), or premultiplied by alpha. Reported (CPU seconds of this process, all
its threads, median of ``--rounds``):

- the colour check alone (``_finish._same_colours``) on the decoded images;
- ``finish_file`` whole (re-read and sha256, both decodes, the check, the write), and
  for "zero-clear" also with the zeroed rule switched off: the compose and encode every
  such photo paid before the fast path took them.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import throwaway_state

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import camera_photos  # noqa: E402


def cpu(rounds: int, action: Callable[..., object], *args: object) -> float:
    """Median process CPU seconds of ``action(*args)`` over ``rounds``."""
    def once() -> float:
        started = time.process_time()
        action(*args)
        return time.process_time() - started

    return statistics.median(once() for _ in range(rounds))


def main() -> int:
    throwaway_state.isolate()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    from PIL import Image, ImageFilter

    from bgremove.config import OutputConfig
    from bgremove.contract import Result
    from bgremove.emulator.model import cutout_png, decode_image, keyout_alpha
    from bgremove.imaging import _finish, finish_file, prepare_file

    one, five, _ = os.getloadavg()
    print(f"{os.cpu_count()} cores, load average {one:.1f} {five:.1f} at the start")
    [src] = camera_photos.photos(1)
    prepared = prepare_file(src, max_pixels=10**8, max_upload_bytes=30 * 2**20,
                            max_upload_side=8192)
    seen = decode_image(prepared.upload.data)  # what the service decodes
    alpha = keyout_alpha(seen).filter(ImageFilter.GaussianBlur(2))
    with Image.open(src) as opened:
        original = opened.convert("RGB")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-finish-") as tmp:
        dst = Path(tmp) / "out.png"
        for colours in ("input", "zero-clear", "premultiplied"):
            png = cutout_png(seen, alpha, 0, colours)
            result = Result("wavespeed", data=png, max_pixels=prepared.size[0]
                            * prepared.size[1])
            with Image.open(io.BytesIO(png)) as opened:
                service = opened.convert("RGBA")
            check = cpu(args.rounds, _finish._same_colours, service, original)
            kept = _finish._same_colours(service, original)
            finish = (finish_file, prepared, result, src, dst, OutputConfig())
            whole = cpu(args.rounds, *finish)
            rows.append(f"| {colours} | {'kept' if kept else 'composed'} | {check:.3f} s | "
                        f"{whole:.2f} s |")
            if colours == "zero-clear":
                real = _finish._shown_and_zeroed
                _finish._shown_and_zeroed = lambda service, original: False
                try:
                    before = cpu(args.rounds, *finish)
                finally:
                    _finish._shown_and_zeroed = real
                rows.append(f"| zero-clear, zeroed rule off (before) | composed | - | "
                            f"{before:.2f} s |")
    print(f"{prepared.size[0]}x{prepared.size[1]}, median of {args.rounds}, process CPU")
    print("| service's colours | output | colour check | finish_file |")
    print("|---|---|---|---|")
    print("\n".join(rows))
    one, five, _ = os.getloadavg()
    print(f"load average {one:.1f} {five:.1f} at the end")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
