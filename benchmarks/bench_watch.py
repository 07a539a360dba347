"""Benchmark of ``bgremove watch`` against the emulator; prints a table.

    .venv/bin/python benchmarks/bench_watch.py            # all four measurements
    .venv/bin/python benchmarks/bench_watch.py --files 1000 --rss-files 10000 --latency-files 20
    .venv/bin/python benchmarks/bench_watch.py --only rembg --rembg-files 50

1. Throughput: N small images dropped at once (renamed into INBOX together),
   emulator delay 0.3 s, concurrency 16; wall time from the drop to the last
   original in done/, over the ideal N x 0.3 / 16; HTTP requests per image.
   Run with the default poll schedule and with a tighter one, since in poll
   mode a task is seen finished only at the client's next poll.
2. Latency: time from a file's last write to the start of its upload
   (``Backend.cut_out`` entry), daemon in-process, one file at a time:
   each written as soon as the previous one is done ("back to back"), and
   each written 0.6 s after that ("isolated"). The two differ because
   watchdog's inotify observer holds an unpaired IN_MOVED_FROM (the
   daemon's claim renames a file out of the watched INBOX) for 0.5 s to
   pair it with a move target, and its queue is FIFO: a file written within
   0.5 s of the previous claim has its events delayed by the rest of that.
3. Memory: peak RSS (VmHWM) of the daemon process over an M-file burst.
4. rembg: ``bgremove watch --backend local`` beside ``rembg p -w`` on the same
   model file and images (``benchmarks/watch_rembg.py`` says how).

The daemon runs as a separate process (``python -m bgremove watch``) for 1 and
3, so its memory is its own; the emulator runs in this process.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any

import throwaway_state

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _image(path: Path | IO[bytes], variant: int) -> None:
    from PIL import Image

    im = Image.new("RGB", (32, 24), (variant % 256, 200, (variant // 256) % 256))
    im.paste((220, 20, 20), (8, 6, 16, 12))
    im.save(path, "PNG")


def _prepare(folder: Path, count: int, offset: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"img{i:05d}.png"
        _image(path, offset + i)
        paths.append(path)
    return paths


def _config(tmp: Path, poll_initial: float, poll_factor: float) -> Path:
    path = tmp / "config.yaml"
    path.write_text(f"backend: wavespeed\nwavespeed:\n  poll:\n    initial: {poll_initial}\n"
                    f"    factor: {poll_factor}\n", encoding="utf-8")
    return path


def _vm_hwm(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run_daemon_batch(count: int, delay: float, concurrency: int, poll_initial: float,
                     poll_factor: float) -> dict[str, Any]:
    """Drop ``count`` files into a running daemon; time until all are in done/."""
    from bgremove.emulator import Emulator, EmulatorOptions

    with tempfile.TemporaryDirectory() as td, \
            Emulator(EmulatorOptions(delay=delay, max_stored=max(10_000, count * 2))) as emu:
        tmp = Path(td)
        inbox, outbox, staging = tmp / "in", tmp / "out", tmp / "staging"
        inbox.mkdir()
        sources = _prepare(staging, count)
        env = dict(os.environ, WAVESPEED_API_KEY=emu.api_key, WAVESPEED_BASE_URL=emu.base_url)
        proc = subprocess.Popen(
            [sys.executable, "-m", "bgremove", "watch", str(inbox), str(outbox),
             "--concurrency", str(concurrency), "--config",
             str(_config(tmp, poll_initial, poll_factor)), "--log-level", "warning"],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 30
            while not (outbox / ".bgremove" / "journal.sqlite3").exists():
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("the daemon did not start")
                time.sleep(0.05)
            time.sleep(0.5)  # observer up
            started = time.monotonic()
            for src in sources:
                os.rename(src, inbox / src.name)
            done = inbox / "done"
            peak = 0
            while True:
                peak = max(peak, _vm_hwm(proc.pid))
                n = len(os.listdir(done)) if done.exists() else 0
                if n >= count:
                    break
                if proc.poll() is not None:
                    raise RuntimeError("the daemon exited")
                time.sleep(0.05)
            wall = time.monotonic() - started
            peak = max(peak, _vm_hwm(proc.pid))
        finally:
            proc.terminate()
            _out, err = proc.communicate(timeout=60)
        stats = emu.stats()
        if err.strip():
            sys.stderr.write(err.decode(errors="replace")[-2000:])
    return {"wall": wall, "requests": stats["requests_total"] / count,
            "tasks": stats["tasks_submitted"], "peak_rss": peak}


def run_latency(count: int, stable: float, gap: float = 0.0, *,
                renamed: bool = False) -> list[float]:
    """Seconds from a file's last write (or its rename into INBOX) to its upload starting,
    in-process daemon.

    Each file is written ``gap`` seconds after the previous one is in done/. Written in
    place, it is taken once unchanged for ``stable`` seconds; ``renamed``: written in
    another folder and renamed into INBOX, it is taken at once."""
    import io

    from bgremove.backends import make_backend
    from bgremove.config import Config
    from bgremove.emulator import Emulator, EmulatorOptions
    from bgremove.watcher.daemon import Daemon
    from bgremove.watcher.naming import Layout

    starts: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as td, Emulator(EmulatorOptions()) as emu:
        tmp = Path(td)
        (tmp / "in").mkdir()
        (tmp / "stage").mkdir()
        config = Config().with_overrides({
            "backend": "wavespeed", "wavespeed.base_url": emu.base_url,
            "wavespeed.api_key": emu.api_key, "watch.stable_seconds": stable})
        layout = Layout.create(tmp / "in", tmp / "out")

        def factory() -> Any:
            backend = make_backend(config, wait_mode="poll")
            inner = backend.client.upload  # the daemon's jobs upload through the client

            def upload(*args: Any, **kwargs: Any) -> Any:
                starts["last"] = time.monotonic()
                return inner(*args, **kwargs)

            backend.client.upload = upload  # type: ignore[method-assign]
            return backend

        daemon = Daemon(config, layout, backend_factory=factory)
        thread = threading.Thread(target=daemon.run)
        thread.start()
        time.sleep(0.5)
        latencies = []
        try:
            for i in range(count):
                starts.pop("last", None)
                path = tmp / "in" / f"lat{i}.png"
                buf = io.BytesIO()
                _image(buf, 50_000 + i)
                (tmp / "stage" if renamed else tmp / "in").joinpath(path.name).write_bytes(
                    buf.getvalue())
                if renamed:
                    os.rename(tmp / "stage" / path.name, path)
                written = time.monotonic()
                deadline = written + 10
                while "last" not in starts and time.monotonic() < deadline:
                    time.sleep(0.002)
                latencies.append(starts.get("last", deadline) - written)
                while not (tmp / "in" / "done" / path.name).exists() \
                        and time.monotonic() < deadline + 10:
                    time.sleep(0.01)
                time.sleep(gap)  # the scenario's spacing between files, not a wait for a state
        finally:
            daemon.request_stop()
            thread.join(30)
    return latencies


def main() -> int:
    throwaway_state.isolate()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--delay", type=float, default=0.3)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rss-files", type=int, default=10_000)
    parser.add_argument("--latency-files", type=int, default=20)
    parser.add_argument("--rembg-files", type=int, default=50,
                        help="images for the rembg comparison (1024x768 JPEG)")
    sections = ("throughput", "latency", "rss", "rembg")
    parser.add_argument("--skip", action="append", default=[], choices=sections)
    parser.add_argument("--only", action="append", default=[], choices=sections,
                        help="run only these sections (repeatable)")
    args = parser.parse_args()
    if args.only:
        args.skip = [s for s in sections if s not in args.only]
    rows: list[tuple[str, str, str]] = []
    load = os.getloadavg()
    print(f"{os.cpu_count()} cores, load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} "
          "at the start", file=sys.stderr)
    ideal = args.files * args.delay / args.concurrency
    if "throughput" not in args.skip:
        print(f"throughput: {args.files} files ...", file=sys.stderr)
        for label, initial, factor in (("default poll (0.5 s x1.5)", 0.5, 1.5),
                                       ("tight poll (0.1 s x1.2)", 0.1, 1.2),
                                       ("poll matched to the delay (0.32 s x1.5)", 0.32, 1.5)):
            r = run_daemon_batch(args.files, args.delay, args.concurrency, initial, factor)
            rows.append((f"{args.files} files, delay {args.delay}s, c={args.concurrency}, "
                         f"{label}", f"{r['wall']:.1f} s = {r['wall'] / ideal:.2f} x ideal "
                         f"({ideal:.2f} s)", "<= 1.15 x"))
            rows.append(("  requests per image", f"{r['requests']:.2f} "
                         f"({r['tasks']} tasks)", "-"))
    if "latency" not in args.skip:
        for label, gap, renamed in (("written in place back to back", 0.0, False),
                                    ("written in place 0.6 s apart", 0.6, False),
                                    ("renamed in back to back", 0.0, True)):
            lat = run_latency(args.latency_files, 0.5, gap, renamed=renamed)
            rows.append((f"last write -> upload start ({len(lat)} files {label}, stable 0.5 s)",
                         f"median {statistics.median(lat):.3f} s, max {max(lat):.3f} s",
                         "< 1 s"))
    if "rss" not in args.skip:
        r = run_daemon_batch(args.rss_files, 0.0, args.concurrency, 0.05, 1.5)
        rows.append((f"peak RSS of the daemon, {args.rss_files}-file burst",
                     f"{r['peak_rss'] / 2**20:.0f} MB ({r['wall']:.0f} s to drain)", "< 150 MB"))
    if "rembg" not in args.skip:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from watch_rembg import compare

        rows.extend(compare(args.rembg_files))
    width = max(len(r[0]) for r in rows)
    vwidth = max(len(r[1]) for r in rows)
    print(f"{'measure':<{width}}  {'result':<{vwidth}}  goal")
    for name, value, goal in rows:
        print(f"{name:<{width}}  {value:<{vwidth}}  {goal}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
