"""Speed and peak memory of the local backend beside rembg, on the same model file.

    .venv/bin/python benchmarks/bench_local.py [--models u2netp,u2net] [--runs 4]

Each measurement runs in a fresh process (benchmarks/local_bench_worker.py) so
its ``ru_maxrss`` is that run's own peak. rembg runs in its own throwaway venv
(scripts/rembg-env.sh) with ``U2NET_HOME`` pointing at bgremove's model cache
and its session passed explicitly (``new_session(MODEL)``). Both produce the
same thing from the same in-memory RGB image: a mask of the image's size
("mask"), or the RGBA cut-out ("rgba": for bgremove the alpha put on a copy of
the image, which is what the pipeline's compose does; for rembg ``remove()``).
The image is a photo of the quality set (portrait-coffee) resized to each size.
Both use onnxruntime's default thread count.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import throwaway_state

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

SIZES = ((1024, 768), (6000, 4000))


def measure(python: str, impl: str, model: str, size: tuple[int, int], runs: int, output: str,
            source: Path, env: dict[str, str]) -> dict[str, float]:
    cmd = [python, str(ROOT / "benchmarks" / "local_bench_worker.py"), impl, model,
           str(size[0]), str(size[1]), str(runs), output, str(source)]
    done = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True, env=env)
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> int:
    throwaway_state.isolate()
    from bench_quality import DEFAULT_SET, ensure_set, rembg_python

    from bgremove.local.models import ensure_model, model_dir

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="u2netp,u2net")
    parser.add_argument("--runs", type=int, default=4, help="images per process (first is warm-up)")
    parser.add_argument("--outputs", default="mask,rgba")
    args = parser.parse_args()
    ensure_set(DEFAULT_SET)
    source = DEFAULT_SET / "portrait-coffee.png"
    rembg_py = rembg_python()
    env = dict(os.environ, U2NET_HOME=str(model_dir()))
    import onnxruntime

    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"onnxruntime {onnxruntime.__version__}; median of {args.runs - 1} images after a "
          "first one that loads the model\n")
    print("| model | size | output | bgremove s/image | rembg s/image | bgremove peak MB "
          "| rembg peak MB |")
    print("|---|---|---|---|---|---|---|")
    for model in args.models.split(","):
        ensure_model(model)
        for size in SIZES:
            for output in args.outputs.split(","):
                ours = measure(sys.executable, "bgremove", model, size, args.runs, output, source,
                               env)
                theirs = measure(rembg_py, "rembg", model, size, args.runs, output, source, env)
                print(f"| {model} | {size[0]}x{size[1]} | {output} | {ours['per_image']:.2f} "
                      f"| {theirs['per_image']:.2f} | {ours['maxrss_mb']:.0f} "
                      f"| {theirs['maxrss_mb']:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
