"""The stages pipeline at an account's scale: N small images in flight at once.

``bgremove.batch.run_batch`` (what ``bgremove remove`` runs) with concurrency N on N
images, against the emulator in its own process with a fixed inference delay. Reported
per N: the drain wall over the ideal (the delay plus one image's own time), the most
threads the client process had, and its peak RSS. Every image is a task at the service
at the same moment, and none has a thread of its own: threads stay at cores + IO
threads + one poller whatever N is.

    .venv/bin/python benchmarks/bench_stages.py [--counts 100 1000] [--delay 3]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

import throwaway_state

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_core import EmulatorProcess, make_image  # noqa: E402


def run(count: int, delay: float, folder: Path) -> dict[str, float]:
    from bgremove.backends import make_backend
    from bgremove.batch import plan_outputs, run_batch
    from bgremove.config import Config

    srcs = [make_image(folder / f"{i}.png", (64, 48), i) for i in range(count)]
    emu = EmulatorProcess(delay)
    try:
        config = Config().with_overrides({
            "backend": "wavespeed", "wavespeed.base_url": emu.base_url,
            "wavespeed.api_key": "any", "concurrency": count})
        backend = make_backend(config)
        plan = plan_outputs(srcs, folder / f"out-{count}", config.output)
        most = threading.active_count()
        stop = threading.Event()

        def watch() -> None:
            nonlocal most
            while not stop.wait(0.05):
                most = max(most, threading.active_count())

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        started = time.perf_counter()
        results = run_batch(plan, backend, config, on_result=lambda r: None)
        wall = time.perf_counter() - started
        stop.set()
        watcher.join()
        backend.close()
        assert all(r.status == "ok" for r in results), [r.error for r in results if r.error]
        peak = emu.stats().get("max_concurrent_tasks", 0)
    finally:
        emu.close()
    return {"wall": wall, "threads": most - 1, "at_once": peak}  # less the watcher thread


def main() -> None:
    throwaway_state.isolate()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--delay", type=float, default=3.0)
    args = parser.parse_args()
    print(f"{os.cpu_count()} cores; emulator delay {args.delay} s; images 64x48 PNG")
    print("| images = concurrency | tasks at once | drain (s) | over the ideal | "
          "most threads | peak RSS (MB) |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for count in args.counts:
            figures = run(count, args.delay, Path(tmp))
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(f"| {count} | {figures['at_once']} | {figures['wall']:.1f} | "
                  f"{figures['wall'] / args.delay:.2f}x | {figures['threads']} | {rss:.0f} |",
                  flush=True)
    print("(peak RSS is the process's so far: each row includes the rows above it)")


if __name__ == "__main__":
    main()
