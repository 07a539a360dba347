"""Core benchmark: bgremove's client beside the official wavespeed SDK, in one run.

Both talk to the same emulator (a separate process on 127.0.0.1, fixed
inference delay) and do the same job: upload a local image, run the task,
download the result. Reported: wall time minus the inference delay for one
image, HTTP requests per image, a 200-image batch at concurrency 16 against
the ideal (200 x delay / 16), and `bgremove --version` start-up time.

    .venv/bin/python benchmarks/bench_core.py [--delay 0.3] [--reps 10] [--batch 200]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import throwaway_state
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MODEL = "wavespeed-ai/image-background-remover"
KEY = "bench-key"


class EmulatorProcess:
    """`bgremove emulator` in its own process, so its CPU is not the client's."""

    def __init__(self, delay: float) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bgremove", "emulator", "--port", "0", "--delay", str(delay),
             "--log-level", "warning"],
            cwd=ROOT, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.base_url = self.proc.stdout.readline().strip()
        if not self.base_url.startswith("http"):
            raise RuntimeError(f"emulator did not start: {self.base_url!r}")

    def stats(self) -> dict[str, Any]:
        return dict(httpx.get(f"{self.base_url}/_emulator/stats").json())

    def api_requests(self) -> int:
        # Every request the emulator answered except its own stats endpoint.
        routes = self.stats()["requests"]
        return sum(sum(methods.values()) for route, methods in routes.items()
                   if route != "control")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def make_image(path: Path, size: tuple[int, int], seed: int) -> Path:
    img = Image.new("RGB", size, (0, 180, 0))
    w, h = size
    img.paste((200 - seed % 100, 30, 60), (w // 4, h // 4, 3 * w // 4, 3 * h // 4))
    img.save(path)
    return path


def ours(base_url: str, wait: str) -> tuple[Callable[[Path, Path], Any], Callable[[], None]]:
    from bgremove.backends import make_backend
    from bgremove.config import Config
    from bgremove.stages import remove_file

    config = Config().with_overrides({"backend": "wavespeed", "wavespeed.base_url": base_url,
                                      "wavespeed.api_key": KEY, "wavespeed.wait": wait,
                                      "concurrency": 16})
    backend = make_backend(config)
    return (lambda src, dst: remove_file(src, dst, backend, config)), backend.close


def sdk(base_url: str, sync: bool) -> tuple[Callable[[Path, Path], Any], Callable[[], None]]:
    import requests
    import wavespeed

    client = wavespeed.Client(api_key=KEY, base_url=base_url)

    def job(src: Path, dst: Path) -> None:
        # As the SDK's README shows: upload, run (default poll interval), then fetch the output.
        url = client.upload(str(src))
        output = client.run(MODEL, {"image": url}, enable_sync_mode=sync)
        dst.write_bytes(requests.get(output["outputs"][0], timeout=60).content)

    return job, lambda: None


def single(emu: EmulatorProcess, name: str, factory: Callable[[], Any], src: Path,
           tmp: Path, reps: int, delay: float) -> dict[str, Any]:
    job, close = factory()
    job(src, tmp / "warm.png")  # connection set-up and imports are not per-image costs
    before = emu.api_requests()
    times = []
    for i in range(reps):
        t0 = time.perf_counter()
        job(src, tmp / f"{name}-{i}.png")
        times.append(time.perf_counter() - t0)
    requests_per_image = (emu.api_requests() - before) / reps
    close()
    return {"client": name, "overhead_ms": round((statistics.median(times) - delay) * 1000, 1),
            "p90_overhead_ms": round((sorted(times)[int(0.9 * (reps - 1))] - delay) * 1000, 1),
            "requests_per_image": round(requests_per_image, 2)}


def batch(emu: EmulatorProcess, name: str, factory: Callable[[], Any], srcs: list[Path],
          tmp: Path, concurrency: int, delay: float) -> dict[str, Any]:
    job, close = factory()
    out = tmp / f"batch-{name}"
    out.mkdir()
    before = emu.api_requests()
    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(lambda s: job(s, out / s.name), srcs))
    wall = time.perf_counter() - t0
    close()
    ideal = len(srcs) * delay / concurrency
    return {"client": name, "wall_s": round(wall, 2), "ideal_s": round(ideal, 2),
            "ratio": round(wall / ideal, 3),
            "requests_per_image": round((emu.api_requests() - before) / len(srcs), 2)}


def startup(reps: int = 10) -> dict[str, float]:
    def run(cmd: list[str]) -> float:
        best = []
        for _ in range(reps):
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
            best.append(time.perf_counter() - t0)
        return statistics.median(best) * 1000

    bgremove = str(Path(sys.executable).with_name("bgremove"))
    return {"bgremove_version_ms": round(run([bgremove, "--version"]), 1),
            "python_baseline_ms": round(run([sys.executable, "-c", "pass"]), 1),
            "bgremove_help_ms": round(run([bgremove, "remove", "--help"]), 1)}


def table(rows: list[dict[str, Any]]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    throwaway_state.isolate()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--delay", type=float, default=0.3)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()

    clients: dict[str, Callable[[str], Any]] = {
        "bgremove (sync)": lambda base: ours(base, "sync"),
        "bgremove (poll)": lambda base: ours(base, "poll"),
        "wavespeed SDK": lambda base: sdk(base, False),
        "wavespeed SDK (sync)": lambda base: sdk(base, True),
    }
    results: dict[str, Any] = {}
    emu = EmulatorProcess(args.delay)
    try:
        with tempfile.TemporaryDirectory() as tmp_name:
            tmp = Path(tmp_name)
            src = make_image(tmp / "single.png", (1024, 768), 0)
            rows = [single(emu, name, lambda f=f: f(emu.base_url), src, tmp, args.reps, args.delay)
                    for name, f in clients.items()]
            results["single"] = rows
            print(f"## One 1024x768 image, inference delay {args.delay} s, median of {args.reps}")
            print(table(rows))
            by_name = {r["client"]: r for r in rows}
            added = (by_name["bgremove (poll)"]["overhead_ms"]
                     - by_name["bgremove (sync)"]["overhead_ms"])
            results["polling_latency_added_ms"] = round(added, 1)
            print(f"\npolling latency added (poll minus sync overhead): {added:.1f} ms\n")
            srcs = [make_image(tmp / f"b{i:04d}.png", (256, 256), i) for i in range(args.batch)]
            rows = [batch(emu, name, lambda f=f: f(emu.base_url), srcs, tmp, args.concurrency,
                          args.delay)
                    for name, f in clients.items() if "sync" in name or name == "wavespeed SDK"]
            results["batch"] = rows
            print(f"## Batch of {args.batch} images, delay {args.delay} s, "
                  f"concurrency {args.concurrency}")
            print(table(rows), "\n")
    finally:
        emu.close()
    results["startup"] = startup()
    print("## Start-up (median of 10 process starts)")
    print(table([results["startup"]]))
    out = ROOT / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    (out / "core.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
