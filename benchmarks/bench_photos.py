"""Photo benchmark: 24 MP camera JPEGs through bgremove beside three reference clients.

    .venv/bin/python benchmarks/bench_photos.py                  # everything (~20 min)
    .venv/bin/python benchmarks/bench_photos.py --only wall --only cpu
    .venv/bin/python benchmarks/bench_photos.py --only many --many 2000 --many-concurrency 500
    .venv/bin/python benchmarks/bench_photos.py --only cpu --output-colours zero-clear

The photos are made by ``camera_photos.py`` (6000x4000, about 4.4 MB, sensor-like noise,
camera EXIF with GPS, every third stored sideways with orientation 6) and cached. The
emulator (``bgremove emulator``, its own process on 127.0.0.1) keeps the service's output
of an upload it has seen, so after each client's first run (untimed: its outputs are
checked pixel by pixel, see ``check_outputs``) its own image work is out of the timings.
Each client is a process of its own, timed from start to exit; CPU is its rusage.

(a) plain   ``photos_client.py plain``: the file's bytes up, sync mode, the PNG as it comes
(b) lean    ``photos_client.py lean``: the leanest correct client (the floor); it trusts
            the service's colour pixels
(b') checked ``photos_client.py checked``: (b) without that trust, as bgremove: the service's
            colours kept only when bgremove's check passes them (both decoded, compared)
bgremove    ``bgremove remove PHOTOS -o DIR --concurrency 3``

Sections (``--only``/``--skip``):
wall   wall time of the photos at concurrency 3 on loopback and with ``--uplink-mbit 40``
       (medians of ``--rounds``), each client's CPU and peak RSS in those runs, when its
       uploads went over the link (the emulator's upload log), bytes uploaded per photo and
       whether GPS went up
cpu    CPU seconds per photo of each client process, orientation 1 and 6 separately
rss    ``bgremove watch``'s peak RSS (VmHWM) with 12 and 48 photos in flight at once (the
       emulator's delay long; then its delays are ended and the peak through the drain too)
many   2,000 small images at concurrency 500 with 3 s tasks, through ``remove`` and
       through a running ``watch``: drain time over the ideal (2000 / 500 x 3 s), peak
       threads and RSS of the process, CPU of it and of the emulator

``--output-colours zero-clear`` (or ``premultiplied``) runs the wall and cpu sections against a
service that makes the colours of its fully transparent pixels 0,0,0 (or premultiplies them
by alpha), as many do; the default is the input's own colours everywhere.

Results: a table on stdout, everything in ``benchmarks/results/photos.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import throwaway_state

from bgremove.choices import EMULATOR_OUTPUT_COLOURS

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))

import camera_photos  # noqa: E402

KEY = "bench-key"
CLIENTS = ("plain", "lean", "checked", "bgremove")
LABEL = {"plain": "(a) plain", "lean": "(b) lean", "checked": "(b') checked",
         "bgremove": "bgremove"}
SECTIONS = ("wall", "cpu", "rss", "many")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.1f} {five:.1f} {fifteen:.1f}"


class EmulatorProcess:
    """``bgremove emulator`` in its own process (its CPU is not the client's)."""

    def __init__(self, *flags: str) -> None:
        self.flags = flags
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bgremove", "emulator", "--port", "0", "--log-level",
             "warning", "--list-input", *flags],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert self.proc.stdout is not None
        self.base_url = self.proc.stdout.readline().strip()
        if not self.base_url.startswith("http"):
            raise RuntimeError(f"the emulator did not start: {self.base_url!r}")
        self.http = httpx.Client(base_url=self.base_url, timeout=60,
                                 headers={"Authorization": f"Bearer {KEY}"})

    def stats(self) -> dict[str, Any]:
        return dict(self.http.get("/_emulator/stats").json())

    def cpu(self) -> float:
        """CPU seconds the emulator process used so far."""
        return process_cpu(self.proc.pid)

    def end_delays(self) -> None:
        self.http.post("/_emulator/end-delays").raise_for_status()

    def uploads_of_last(self, count: int) -> list[bytes]:
        """The uploaded images of the newest ``count`` tasks (fetched from the service)."""
        items: list[dict[str, Any]] = []
        page = 1
        while len(items) < count:
            data = self.http.post("/api/v3/predictions",
                                  json={"page": page, "page_size": 100}).json()["data"]
            if not data["items"]:
                break
            items += data["items"]
            page += 1
        return [self.http.get(item["input"]["image"]).content for item in items[:count]]

    def close(self) -> None:
        self.http.close()
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> EmulatorProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class Run:
    wall: float
    cpu: float  # user + system seconds of the client process (and children it waited for)
    peak_rss: int = 0
    peak_threads: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def environment(emu: EmulatorProcess) -> dict[str, str]:
    # The config and state folders are throwaway ones already (throwaway_state.isolate).
    return dict(os.environ, WAVESPEED_API_KEY=KEY, WAVESPEED_BASE_URL=emu.base_url)


def bgremove_config(tmp: Path, extra: str = "") -> Path:
    path = tmp / "bgremove.yaml"
    path.write_text(f"backend: wavespeed\n{extra}", encoding="utf-8")
    return path


def client_command(client: str, photos: list[Path], out: Path, concurrency: int,
                   config: Path) -> list[str]:
    if client == "bgremove":
        return [sys.executable, "-m", "bgremove", "remove", *map(str, photos), "-o", str(out),
                "--concurrency", str(concurrency), "--config", str(config),
                "--log-level", "warning"]
    return [sys.executable, str(BENCH / "photos_client.py"), client, "--out", str(out),
            "--concurrency", str(concurrency), *map(str, photos)]


def status_of(pid: int) -> tuple[int, int, int]:
    """(VmHWM bytes, VmRSS bytes, threads) of a live process; zeros once it is gone."""
    hwm = rss = threads = 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) * 1024
            elif line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
    except (OSError, ValueError):
        pass
    return hwm, rss, threads


def run_process(cmd: list[str], env: dict[str, str], *, sample: bool = False,
                timeout: float = 1800) -> Run:
    """Run ``cmd`` to its end; wall, rusage CPU and (``sample``) peak RSS and threads.

    Raises RuntimeError with the end of its stderr when it fails."""
    with tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err)
        peak_hwm = peak_threads = 0
        deadline = started + timeout
        while True:  # waited for here, not by Popen: wait4 gives the child's rusage
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG if sample else 0)
            if pid:
                break
            hwm, _rss, threads = status_of(proc.pid)
            peak_hwm, peak_threads = max(peak_hwm, hwm), max(peak_threads, threads)
            if time.perf_counter() > deadline:
                proc.kill()
                sample = False
            time.sleep(0.05)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            tail = err.read().decode(errors="replace")[-1500:]
            raise RuntimeError(f"{Path(cmd[1]).name} {' '.join(cmd[2:4])} exited with "
                               f"{proc.returncode}: {tail}")
    return Run(wall, usage.ru_utime + usage.ru_stime, peak_hwm, peak_threads)


# -- correctness --------------------------------------------------------------------------


def check_outputs(photos: list[Path], outs: dict[str, Path]) -> dict[str, list[str]]:
    """What is wrong with each client's outputs (empty lists: all correct).

    Correct: the upright size, RGBA, the service's mask turned upright, every opaque
    pixel's colour the original's, and no GPS in the file. The key-out's key is the colour
    of the uploaded image's pixel (0, 0): another corner of the photo when it went up as
    stored (sideways) than when the service turned it, so for those both masks are right."""
    import numpy as np
    from PIL import Image, ImageOps

    from bgremove.emulator.model import keyout_alpha

    problems: dict[str, list[str]] = {client: [] for client in outs}
    for photo in photos:
        with Image.open(photo) as opened:
            opened.load()
            upright = ImageOps.exif_transpose(opened).convert("RGB")
            stored_alpha = ImageOps.exif_transpose(_with_orientation(
                keyout_alpha(opened.convert("RGB")), opened))
        masks = [np.asarray(keyout_alpha(upright)), np.asarray(stored_alpha)]
        pixels_upright = np.asarray(upright)
        for client, out in outs.items():
            path = out / f"{photo.stem}.png"
            if not path.exists():
                problems[client].append(f"{photo.name}: no output")
                continue
            data = path.read_bytes()
            with Image.open(path) as result:
                if result.size != upright.size or result.mode != "RGBA":
                    problems[client].append(
                        f"{photo.name}: {result.mode} {result.size}, not RGBA {upright.size}")
                    continue
                pixels = np.asarray(result)
            alpha = next((m for m in masks if np.array_equal(pixels[..., 3], m)), None)
            if alpha is None:
                problems[client].append(f"{photo.name}: alpha differs from the service's mask")
            elif not np.array_equal(pixels[..., :3][alpha == 255],
                                    pixels_upright[alpha == 255]):
                problems[client].append(f"{photo.name}: opaque colours differ from the photo")
            if camera_photos.has_gps(data):
                problems[client].append(f"{photo.name}: the output carries GPS")
    return problems


def _with_orientation(image: Any, source: Any) -> Any:
    """``image`` carrying ``source``'s EXIF orientation (for ``exif_transpose``)."""
    image.getexif()[camera_photos.ORIENTATION] = source.getexif().get(
        camera_photos.ORIENTATION, 1)
    return image


# -- sections -------------------------------------------------------------------------------


def wall_and_cpu(photos: list[Path], args: argparse.Namespace, tmp: Path, uplink: float,
                 cpu: bool) -> dict[str, Any]:
    """One emulator (loopback, or an uplink of ``uplink`` Mbit/s): the checked first run of
    each client, then ``rounds`` timed runs of each, then (``cpu``) the CPU runs."""
    flags = ["--delay", str(args.delay), "--max-stored-mb", "2048"]
    if args.output_colours != "input":
        flags += ["--output-colours", args.output_colours]
    if uplink:
        flags += ["--uplink-mbit", str(uplink)]
    link = f"uplink {uplink:g} Mbit/s" if uplink else "loopback"
    result: dict[str, Any] = {"link": link, "load_before": load()}
    with EmulatorProcess(*flags) as emu:
        env = environment(emu)
        config = bgremove_config(tmp)
        outs = {client: tmp / f"check-{client}-{uplink:g}" for client in CLIENTS}
        uploads: dict[str, Any] = {}
        for client in CLIENTS:
            log(f"{link}: {client}, checked run ...")
            run_process(client_command(client, photos, outs[client], args.concurrency, config),
                        env)
            sent = emu.uploads_of_last(len(photos))
            own = sum(p.stat().st_size for p in photos)
            uploads[client] = {
                "bytes_per_photo": sum(map(len, sent)) / len(sent),
                "ratio_to_files": sum(map(len, sent)) / own,
                "gps_up": sum(camera_photos.has_gps(data) for data in sent),
            }
        log(f"{link}: checking the outputs pixel by pixel ...")
        result["problems"] = check_outputs(photos, outs)
        for out in outs.values():
            shutil.rmtree(out)
        result["uploads"] = uploads
        walls: dict[str, list[float]] = {client: [] for client in CLIENTS}
        cpus: dict[str, list[float]] = {client: [] for client in CLIENTS}
        rsss: dict[str, list[int]] = {client: [] for client in CLIENTS}
        timelines: dict[str, dict[str, list[float]]] = {client: {} for client in CLIENTS}
        for round_ in range(args.rounds):
            turn = round_ % len(CLIENTS)
            order = CLIENTS[turn:] + CLIENTS[:turn]
            for client in order:
                out = tmp / f"run-{client}"
                logged = len(emu.stats()["upload_log"])
                began = time.time()
                run = run_process(client_command(client, photos, out, args.concurrency,
                                                 config), env, sample=True)
                for key, value in upload_timeline(
                        emu.stats()["upload_log"][logged:], began).items():
                    timelines[client].setdefault(key, []).append(value)
                shutil.rmtree(out, ignore_errors=True)
                walls[client].append(run.wall)
                cpus[client].append(run.cpu)
                rsss[client].append(run.peak_rss)
                log(f"{link}: round {round_ + 1} {client}: {run.wall:.2f} s wall, "
                    f"{run.cpu:.2f} s CPU (load {load()})")
        result["wall"] = {c: statistics.median(v) for c, v in walls.items()}
        result["walls"] = walls
        result["cpu_all"] = {c: statistics.median(v) / len(photos) for c, v in cpus.items()}
        result["peak_rss"] = {c: max(v) for c, v in rsss.items()}
        result["timeline"] = {key: {c: statistics.median(timelines[c][key]) for c in CLIENTS}
                              for key in timelines[CLIENTS[0]]}
        if cpu:
            result["cpu"] = cpu_per_photo(photos, args, tmp, env, config)
        result["load_after"] = load()
    return result


def upload_timeline(entries: list[dict[str, Any]], began: float) -> dict[str, float]:
    """When a run's uploads went over the link, from the emulator's upload log, in seconds
    from the client's start: the first upload's start, the last one's end, and how long
    no upload was under way between the two."""
    spans = sorted((e["began"] - began, e["ended"] - began) for e in entries)
    if not spans:
        return {}
    busy, (start, end) = 0.0, spans[0]
    for lo, hi in spans[1:]:
        if lo > end:
            busy += end - start
            start, end = lo, hi
        else:
            end = max(end, hi)
    busy += end - start
    first, last = spans[0][0], max(hi for _lo, hi in spans)
    return {"first_upload": first, "last_upload_end": last, "link_idle": last - first - busy}


def cpu_per_photo(photos: list[Path], args: argparse.Namespace, tmp: Path,
                  env: dict[str, str], config: Path) -> dict[str, dict[str, float]]:
    """CPU seconds per photo of each client, run on the orientation-1 photos alone and on
    the sideways ones alone (median of ``rounds``; process start-up included)."""
    groups = {"1": [p for i, p in enumerate(photos) if not camera_photos.is_sideways(i)],
              "6": [p for i, p in enumerate(photos) if camera_photos.is_sideways(i)]}
    found: dict[str, dict[str, float]] = {}
    for orientation, group in groups.items():
        if not group:
            continue
        found[orientation] = {}
        for client in CLIENTS:
            runs = []
            for _ in range(args.rounds):
                out = tmp / f"cpu-{client}"
                runs.append(run_process(client_command(client, group, out, args.concurrency,
                                                       config), env).cpu / len(group))
                shutil.rmtree(out, ignore_errors=True)
            found[orientation][client] = statistics.median(runs)
            log(f"CPU, orientation {orientation}: {client} {found[orientation][client]:.2f} "
                "s per photo")
    return found


def daemon_rss(count: int, emu: EmulatorProcess, tmp: Path, args: argparse.Namespace
               ) -> dict[str, Any]:
    """``bgremove watch`` with ``count`` photos dropped at once; the emulator's delay is
    long, so all of them wait on the service together. Peak RSS while they all wait, then
    through the drain once the delays are ended."""
    photos = camera_photos.photos(count)
    work = tmp / f"rss-{count}"
    inbox, outbox, staging = work / "in", work / "out", work / "staging"
    for folder in (inbox, staging):
        folder.mkdir(parents=True)
    for photo in photos:
        shutil.copyfile(photo, staging / photo.name)
    cap = min(args.rss_cap_mb * 2**20, available_memory() - 4 * 2**30)
    before = emu.stats()["tasks_submitted"]
    proc = start_daemon(inbox, outbox, count, emu, work)
    result: dict[str, Any] = {"photos": count}
    try:
        started = time.monotonic()
        for photo in photos:
            os.rename(staging / photo.name, inbox / photo.name)
        peak = peak_threads = 0
        phase, all_waiting_at = "intake", 0.0
        next_stats = 0.0
        done = inbox / "done"
        deadline = started + args.rss_timeout
        while True:
            hwm, rss, threads = status_of(proc.pid)
            peak, peak_threads = max(peak, hwm), max(peak_threads, threads)
            now = time.monotonic()
            if rss > cap:
                result["stopped"] = (f"RSS passed {cap / 2**20:.0f} MB in the {phase} phase; "
                                     "the daemon was stopped")
                break
            if proc.poll() is not None:
                raise RuntimeError("the daemon exited")
            if now > deadline:
                result["stopped"] = f"not done after {args.rss_timeout:.0f} s ({phase})"
                break
            if phase == "intake" and now >= next_stats:
                next_stats = now + 0.5
                if emu.stats()["tasks_submitted"] - before >= count:
                    phase, all_waiting_at = "waiting", now
                    result["seconds_to_all_in_flight"] = now - started
            elif phase == "waiting" and now - all_waiting_at >= args.rss_hold:
                result["peak_waiting"] = peak
                phase = "drain"
                emu.end_delays()
            elif phase == "drain" and done.exists() and len(os.listdir(done)) >= count:
                result["peak_drain"] = peak
                result["seconds_total"] = now - started
                break
            time.sleep(0.05)
        result["peak"], result["peak_threads"] = peak, peak_threads
    finally:
        err = stop_daemon(proc)
        emu.end_delays()  # whatever still waits
    if err:
        result["stderr"] = err
    shutil.rmtree(work, ignore_errors=True)
    return result


def start_daemon(inbox: Path, outbox: Path, concurrency: int, emu: EmulatorProcess,
                 work: Path) -> subprocess.Popen[bytes]:
    """``bgremove watch INBOX OUTBOX``, once it watches (its journal exists)."""
    config = bgremove_config(work, "watch:\n  images_per_minute: 0\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "bgremove", "watch", str(inbox), str(outbox), "--concurrency",
         str(concurrency), "--config", str(config), "--log-level", "warning"],
        cwd=ROOT, env=environment(emu), stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not (outbox / ".bgremove" / "journal.sqlite3").exists():
        if time.monotonic() > deadline or proc.poll() is not None:
            stop_daemon(proc)
            raise RuntimeError("the daemon did not start")
        time.sleep(0.05)
    time.sleep(0.5)  # its file-system observer starts after the journal
    return proc


def stop_daemon(proc: subprocess.Popen[bytes]) -> str:
    """Stop the daemon (SIGTERM, a second one if it lingers); the end of its stderr."""
    proc.terminate()
    try:
        _out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.terminate()  # a second SIGTERM: exit at once
        try:
            _out, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            _out, err = proc.communicate()
    return err.decode(errors="replace")[-1000:].strip()


def available_memory() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 8 * 2**30


def small_images(folder: Path, count: int) -> None:
    from PIL import Image

    folder.mkdir(parents=True)
    for i in range(count):
        image = Image.new("RGB", (48, 32), (i % 256, 200, (i // 256) % 256))
        image.paste((220, 20, 20), (12, 8, 36, 24))
        image.save(folder / f"small{i:05d}.png")


def many(args: argparse.Namespace, tmp: Path, command: str) -> dict[str, Any]:
    """``remove`` (or ``watch``) of many small images at a high concurrency, long tasks."""
    src, out = tmp / f"many-{command}-in", tmp / f"many-{command}-out"
    small_images(src, args.many)
    with EmulatorProcess("--delay", str(args.many_delay)) as emu:
        log(f"many: {command}, {args.many} images, concurrency {args.many_concurrency}, "
            f"delay {args.many_delay} s (load {load()}) ...")
        emulator_cpu = emu.cpu()
        if command == "remove":
            run = run_process([sys.executable, "-m", "bgremove", "remove", str(src), "-o",
                               str(out), "--concurrency", str(args.many_concurrency),
                               "--config", str(bgremove_config(tmp)), "--log-level",
                               "warning"], environment(emu), sample=True)
        else:
            run = watch_drain(src, out, args, emu, tmp)
        stats = emu.stats()
        emulator_cpu = emu.cpu() - emulator_cpu
    written = len(list(out.rglob("*.png")))
    ideal = args.many / args.many_concurrency * args.many_delay
    return {"command": command, "images": args.many, "concurrency": args.many_concurrency,
            "delay": args.many_delay, "wall": run.wall, "ideal": ideal,
            "ratio": run.wall / ideal, "peak_threads": run.peak_threads,
            "peak_rss": run.peak_rss, "cpu": run.cpu, "written": written,
            "max_concurrent_tasks": stats["max_concurrent_tasks"],
            "tasks": stats["tasks_submitted"], "requests": stats["requests_total"],
            "emulator_cpu": emulator_cpu, "load_after": load(), **run.extra}


def watch_drain(src: Path, out: Path, args: argparse.Namespace, emu: EmulatorProcess,
                tmp: Path) -> Run:
    """The images renamed into a running daemon's INBOX at once; wall until all are in
    done/ (or failed/), peak RSS and threads of the daemon, its CPU over the drain."""
    inbox = tmp / "many-watch-inbox"
    inbox.mkdir()
    proc = start_daemon(inbox, out, args.many_concurrency, emu, tmp)
    peak_hwm = peak_threads = 0
    try:
        cpu_before = process_cpu(proc.pid)
        started = time.perf_counter()
        for path in sorted(src.iterdir()):
            os.rename(path, inbox / path.name)
        deadline = started + args.many_timeout
        while True:
            hwm, _rss, threads = status_of(proc.pid)
            peak_hwm, peak_threads = max(peak_hwm, hwm), max(peak_threads, threads)
            finished = sum(len(os.listdir(inbox / name)) for name in ("done", "failed")
                           if (inbox / name).exists())
            if finished >= args.many or time.perf_counter() > deadline:
                break
            if proc.poll() is not None:
                raise RuntimeError("the daemon exited")
            time.sleep(0.05)
        wall = time.perf_counter() - started
        cpu = process_cpu(proc.pid) - cpu_before
        failed = len(os.listdir(inbox / "failed")) if (inbox / "failed").exists() else 0
    finally:
        err = stop_daemon(proc)
    return Run(wall, cpu, peak_hwm, peak_threads,
               {"failed": failed, "finished": finished, **({"stderr": err} if err else {})})


def process_cpu(pid: int) -> float:
    """CPU seconds a live process used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- report ---------------------------------------------------------------------------------


def report(results: dict[str, Any], args: argparse.Namespace) -> str:
    lines: list[str] = []
    if results.get("wall"):
        lines += [f"{args.photos} photos {camera_photos.SIZE[0]}x{camera_photos.SIZE[1]} "
                  f"({results.get('photo_mb', 0):.2f} MB each on average), concurrency "
                  f"{args.concurrency}, emulator delay {args.delay} s, median of "
                  f"{args.rounds}"
                  + ("" if args.output_colours == "input" else
                     f", the service's output colours {args.output_colours}"),
                  "", "| measure | (a) plain | (b) lean | (b') checked | bgremove | "
                  "bgremove / (b) | bgremove / (b') | bgremove / (a) | goal |",
                  "|---|---|---|---|---|---|---|---|---|"]

    def row(name: str, values: dict[str, float], fmt: str, goal: str,
            ratios: bool = True) -> None:
        cells = " | ".join(format(values[c], fmt) for c in CLIENTS)
        if not ratios:
            lines.append(f"| {name} | {cells} | | | | {goal} |")
            return
        ratio = " | ".join(
            f"{values['bgremove'] / values[c]:.2f}x" if values[c] else "-"
            for c in ("lean", "checked", "plain"))
        lines.append(f"| {name} | {cells} | {ratio} | {goal} |")

    for section in results.get("wall", []):
        row(f"wall, {section['link']} (s)", section["wall"], ".2f", "<= 1.10x (b)")
        row("  CPU per photo in those runs (s)", section["cpu_all"], ".2f", "-")
        row("  peak RSS of the process (MB)",
            {c: v / 2**20 for c, v in section["peak_rss"].items()}, ".0f", "-")
        for key, name in (("first_upload", "first upload starts at (s)"),
                          ("last_upload_end", "last upload ends at (s)"),
                          ("link_idle", "no upload under way in between (s)")):
            if key in section.get("timeline", {}):
                row(f"  {name}", section["timeline"][key], ".2f", "-", ratios=False)
        if "cpu" in section:
            for orientation, values in section["cpu"].items():
                row(f"CPU per photo, orientation {orientation} (s)", values, ".2f", "-")
    for section in results.get("wall", [])[:1]:
        ups = section["uploads"]
        row("bytes uploaded per photo (MB)",
            {c: ups[c]["bytes_per_photo"] / 1e6 for c in CLIENTS}, ".2f", "-")
        row("  of the files' own bytes", {c: ups[c]["ratio_to_files"] for c in CLIENTS}, ".3f",
            "<= 1.00 (bgremove)")
        lines.append("| photos whose GPS went up | " + " | ".join(
            f"{ups[c]['gps_up']} of {args.photos}" for c in CLIENTS) + " | | | | 0 |")
    for section in results.get("wall", []):
        bad = {c: p for c, p in section["problems"].items() if p}
        lines.append(f"\noutputs checked ({section['link']}): " + (
            "all correct" if not bad else "; ".join(f"{LABEL[c]}: {', '.join(p[:3])}"
                                                    for c, p in bad.items())))
    if results.get("rss"):
        lines += ["", "| bgremove watch, photos in flight at once | peak RSS while all wait "
                  "| peak RSS through the drain | peak threads | goal |", "|---|---|---|---|---|"]
        for r in results["rss"]:
            waiting = r.get("peak_waiting")
            drain = r.get("peak_drain")
            lines.append(f"| {r['photos']} | "
                         f"{f'{waiting / 2**20:.0f} MB' if waiting else r.get('stopped', '-')} | "
                         f"{f'{drain / 2**20:.0f} MB' if drain else r.get('stopped', '-')} | "
                         f"{r.get('peak_threads', '-')} | <= 1.2 GB, about the same for both |")
    for m in results.get("many", []):
        lines += ["", f"{m['command']} of {m['images']} small images, concurrency "
                  f"{m['concurrency']}, "
                  f"{m['delay']:g} s tasks: {m['wall']:.1f} s = {m['ratio']:.2f}x the ideal "
                  f"({m['ideal']:.0f} s); peak {m['peak_threads']} threads, peak RSS "
                  f"{m['peak_rss'] / 2**20:.0f} MB, {m['cpu']:.1f} s CPU; {m['written']} "
                  f"written, {m['requests'] / m['images']:.1f} requests per image; the service "
                  f"saw at most {m['max_concurrent_tasks']} tasks at once and used "
                  f"{m['emulator_cpu']:.1f} s CPU"
                  + (f"; {m['failed']} failed" if m.get("failed") else "")]
    return "\n".join(lines)


def main() -> int:
    throwaway_state.isolate()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=6)
    parser.add_argument("--concurrency", type=int, default=3)
    parser.add_argument("--delay", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--uplink-mbit", type=float, default=40.0)
    parser.add_argument("--rss-counts", type=int, nargs="+", default=[12, 48])
    parser.add_argument("--rss-hold", type=float, default=3.0,
                        help="seconds the RSS is sampled once all photos wait on the service")
    parser.add_argument("--rss-cap-mb", type=int, default=6000,
                        help="stop the daemon when its RSS passes this (a shared machine)")
    parser.add_argument("--rss-timeout", type=float, default=1200.0)
    parser.add_argument("--many", type=int, default=2000)
    parser.add_argument("--many-concurrency", type=int, default=500)
    parser.add_argument("--many-delay", type=float, default=3.0)
    parser.add_argument("--many-commands", nargs="+", default=["remove", "watch"],
                        choices=("remove", "watch"))
    parser.add_argument("--many-timeout", type=float, default=900.0)
    parser.add_argument("--output-colours", default="input",
                        choices=EMULATOR_OUTPUT_COLOURS,
                        help="the colours of the service's cut-outs in the wall and cpu "
                        "sections (default: the input's own everywhere)")
    parser.add_argument("--only", action="append", default=[], choices=SECTIONS)
    parser.add_argument("--skip", action="append", default=[], choices=SECTIONS)
    args = parser.parse_args()
    wanted = [s for s in SECTIONS if (not args.only or s in args.only) and s not in args.skip]
    log(f"{os.cpu_count()} cores, load average {load()} at the start")
    results: dict[str, Any] = {"cores": os.cpu_count(), "load_start": load()}
    started = time.monotonic()
    photos = camera_photos.photos(args.photos)
    log(f"{args.photos} photos ready in {time.monotonic() - started:.1f} s "
        f"({camera_photos.cache_dir()})")
    results["photo_mb"] = statistics.mean(p.stat().st_size for p in photos) / 1e6
    with tempfile.TemporaryDirectory(prefix="bench-photos-") as name:
        tmp = Path(name)
        if "wall" in wanted or "cpu" in wanted:
            results["wall"] = [wall_and_cpu(photos, args, tmp, 0.0, "cpu" in wanted)]
            if "wall" in wanted and args.uplink_mbit:
                results["wall"].append(wall_and_cpu(photos, args, tmp, args.uplink_mbit, False))
        if "rss" in wanted:
            results["rss"] = []
            with EmulatorProcess("--delay", "3600", "--max-stored-mb", "4096") as emu:
                for count in args.rss_counts:
                    log(f"rss: {count} photos in flight (load {load()}) ...")
                    results["rss"].append(daemon_rss(count, emu, tmp, args))
                    log(f"rss: {results['rss'][-1]}")
        if "many" in wanted:
            results["many"] = [many(args, tmp, command) for command in args.many_commands]
    results["load_end"] = load()
    text = report(results, args)
    print(text)
    print(f"\nload average {results['load_start']} at the start, {results['load_end']} at "
          f"the end; {time.monotonic() - started:.0f} s in all")
    out = BENCH / "results"
    out.mkdir(exist_ok=True)
    (out / "photos.json").write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
