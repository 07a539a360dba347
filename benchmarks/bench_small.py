"""Small images: bgremove against the minimal pooled-httpx client, side by side in one run.

The minimal client (``benchmarks/minimal_client.py``) sends the file's bytes, one sync
submit, and writes the result as it came: the floor for the job on this machine. Both
talk to the same emulator (its own process on 127.0.0.1, fixed inference delay), each as
a whole process, alternating run by run so load changes hit both alike:

1. one image: ``bgremove remove IMG -o DIR`` against the minimal client's process
   (start-up, imports, config, first connection, the job); goal under 0.1 s slower;
2. ``bgremove remove`` of 200 images at concurrency 16: goal at most 1.10x the minimal
   client's wall for the same images;
3. ``bgremove watch`` draining 300 images dropped at once into its INBOX (from the drop
   to the last original in done/) against the minimal client's process for the same
   300: goal at most 1.15x.

    .venv/bin/python benchmarks/bench_small.py [--delay 0.3] [--reps 7] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import throwaway_state

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_core import EmulatorProcess, make_image  # noqa: E402
from bench_watch import run_daemon_batch  # noqa: E402

KEY = "bench-key"
BGREMOVE = str(Path(sys.executable).with_name("bgremove"))
MINIMAL = str(ROOT / "benchmarks" / "minimal_client.py")


def _env(base_url: str) -> dict[str, str]:
    return dict(os.environ, WAVESPEED_API_KEY=KEY, WAVESPEED_BASE_URL=base_url)


#: CPU seconds (user + system) of each side's processes, summed over the runs.
CPU: dict[str, float] = {}


def _timed(cmd: list[str], env: dict[str, str], side: str) -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU[side] = CPU.get(side, 0.0) + (after.ru_utime - before.ru_utime
                                      + after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:3]} exited {proc.returncode}: {proc.stderr[-2000:]}")
    return wall


def _fresh(folder: Path) -> Path:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def side_by_side(base_url: str, srcs: list[Path], tmp: Path, concurrency: int,
                 reps: int) -> dict[str, list[float]]:
    """Wall seconds of each whole process, ``reps`` times each, alternating."""
    env = _env(base_url)
    names = [str(s) for s in srcs]
    walls: dict[str, list[float]] = {"bgremove": [], "minimal": []}
    for rep in range(-1, reps):  # rep -1 is a warm-up (bytecode, disk cache), not counted
        out = _fresh(tmp / "out-minimal")
        walls["minimal"].append(_timed(
            [sys.executable, MINIMAL, "--base-url", base_url, "--concurrency", str(concurrency),
             "-o", str(out), *names], env, "minimal"))
        out = _fresh(tmp / "out-bgremove")
        walls["bgremove"].append(_timed(
            [BGREMOVE, "remove", "--concurrency", str(concurrency), "-o", str(out), *names], env,
            "bgremove"))
        if rep < 0:
            walls = {side: [] for side in walls}
            CPU.clear()
    return walls


def watch_vs_minimal(count: int, delay: float, concurrency: int, rounds: int,
                     tmp: Path) -> dict[str, list[float]]:
    """Daemon drain time (bench_watch, default poll schedule) beside the minimal client."""
    from bgremove.emulator import Emulator, EmulatorOptions

    walls: dict[str, list[float]] = {"bgremove": [], "minimal": []}
    srcs = [make_image(tmp / f"w{i:04d}.png", (32, 24), i) for i in range(count)]
    for _ in range(rounds):
        with Emulator(EmulatorOptions(delay=delay, api_key=KEY)) as emu:
            out = _fresh(tmp / "out-watch-minimal")
            walls["minimal"].append(_timed(
                [sys.executable, MINIMAL, "--base-url", emu.base_url, "--concurrency",
                 str(concurrency), "-o", str(out), *map(str, srcs)], _env(emu.base_url),
                "minimal"))
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        walls["bgremove"].append(
            run_daemon_batch(count, delay, concurrency, 0.5, 1.5)["wall"])
        after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the daemon, once it exited
        CPU["bgremove"] = CPU.get("bgremove", 0.0) + (after.ru_utime - before.ru_utime
                                                      + after.ru_stime - before.ru_stime)
    return walls


def _row(measure: str, walls: dict[str, list[float]], goal: str, *,
         difference: bool = False) -> dict[str, Any]:
    """One table row; takes (and resets) the CPU seconds the runs since the last row used."""
    ours, floor = statistics.median(walls["bgremove"]), statistics.median(walls["minimal"])
    value = (f"+{ours - floor:.3f} s" if difference else f"{ours / floor:.3f}x")
    cpu = {side: round(CPU.pop(side, 0.0) / len(walls[side]), 3) for side in walls}
    return {"measure": measure, "bgremove_s": round(ours, 3), "minimal_s": round(floor, 3),
            "result": value, "goal": goal, "cpu_per_run_s": cpu,
            "runs": {k: [round(v, 3) for v in vs] for k, vs in walls.items()}}


def main() -> None:
    throwaway_state.isolate()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--delay", type=float, default=0.3)
    parser.add_argument("--reps", type=int, default=7, help="runs of the one-image process")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each batch")
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--watch-files", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=16)
    sections = ("single", "remove", "watch")
    parser.add_argument("--only", action="append", default=[], choices=sections)
    args = parser.parse_args()
    wanted = args.only or list(sections)
    # As installed by pip, whose install compiles the bytecode: an editable checkout run
    # with PYTHONDONTWRITEBYTECODE would compile bgremove's ~40 modules at every start.
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    load = os.getloadavg()
    print(f"{os.cpu_count()} cores, load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} "
          "at the start")
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        emu = EmulatorProcess(args.delay)
        try:
            if "single" in wanted:
                src = make_image(tmp / "one.png", (256, 256), 0)
                walls = side_by_side(emu.base_url, [src], tmp, 1, args.reps)
                rows.append(_row(f"one 256x256 image, whole process (median of {args.reps})",
                                 walls, "< +0.1 s", difference=True))
            if "remove" in wanted:
                srcs = [make_image(tmp / f"b{i:04d}.png", (256, 256), i)
                        for i in range(args.batch)]
                walls = side_by_side(emu.base_url, srcs, tmp, args.concurrency, args.rounds)
                rows.append(_row(f"`remove` {args.batch} images 256x256, concurrency "
                                 f"{args.concurrency} (median of {args.rounds})", walls,
                                 "<= 1.10x"))
        finally:
            emu.close()
        if "watch" in wanted:
            walls = watch_vs_minimal(args.watch_files, args.delay, args.concurrency,
                                     args.rounds, tmp)
            rows.append(_row(f"`watch` draining {args.watch_files} images 32x24, concurrency "
                             f"{args.concurrency} (median of {args.rounds})", walls, "<= 1.15x"))
    print(f"inference delay {args.delay} s; each side a whole process, run alternately\n")
    print("| measure | bgremove (s) | minimal client (s) | result | goal | CPU per run, "
          "bgremove / minimal (s) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        cpu = r["cpu_per_run_s"]
        print(f"| {r['measure']} | {r['bgremove_s']} | {r['minimal_s']} | **{r['result']}** "
              f"| {r['goal']} | {cpu['bgremove']} / {cpu['minimal']} |")
    print()
    for r in rows:
        print(f"{r['measure']}: {r['runs']}")
    out = ROOT / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    (out / "small.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
