"""One measurement for bench_local.py, in its own process so ru_maxrss is this run's peak.

Usage: python benchmarks/local_bench_worker.py IMPL MODEL WIDTH HEIGHT N OUTPUT SOURCE_PNG
IMPL is "bgremove" (this repo, run with the project's Python) or "rembg" (run in the rembg venv
with U2NET_HOME set). OUTPUT is "mask" (an L mask of the image's size) or "rgba" (the cut-out).
Prints one JSON line: first (s, includes loading the model), per_image (median s of the
rest), maxrss_mb (peak of the whole process), before_mb (peak before the model was loaded).
"""

from __future__ import annotations

import json
import resource
import statistics
import sys
import time
from pathlib import Path

from PIL import Image

impl, model, w, h, n, output, source = sys.argv[1:8]
width, height, count = int(w), int(h), int(n)


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


with Image.open(source) as im:
    image = im.convert("RGB").resize((width, height), Image.Resampling.BICUBIC)

if impl == "bgremove":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from bgremove.config import Config, LocalConfig
    from bgremove.local import LocalBackend

    before = rss_mb()
    backend = LocalBackend(Config(local=LocalConfig(model=model)))

    def run() -> Image.Image:
        alpha = backend.cut_out(image).alpha
        if output == "mask":
            return alpha
        out = image.copy()
        out.putalpha(alpha)
        return out
else:
    from rembg import new_session, remove

    before = rss_mb()
    session = new_session(model)

    def run() -> Image.Image:
        result = remove(image, session=session, only_mask=output == "mask")
        assert isinstance(result, Image.Image)
        return result

times = []
for _ in range(count):
    t = time.perf_counter()
    result = run()
    times.append(time.perf_counter() - t)
    assert result.size == (width, height)
    del result
print(json.dumps({"first": times[0], "per_image": statistics.median(times[1:] or times),
                  "maxrss_mb": rss_mb(), "before_mb": before}))
