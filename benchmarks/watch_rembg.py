"""``bgremove watch --backend local`` beside ``rembg p -w``: same model file, same images.

Used by ``benchmarks/bench_watch.py`` (its ``rembg`` section); runnable alone:

    .venv/bin/python benchmarks/watch_rembg.py [--files 50]

Images: the photo composites of the quality set (``local_dataset.py``, built
from scikit-image's bundled photos) scaled and cropped to 1024x768, each a
different crop so no two files have the same content (bgremove skips content
it has seen), saved as JPEG q90. Both tools use u2netp from bgremove's model
cache (rembg through ``U2NET_HOME`` and ``-m u2netp``), onnxruntime's default
thread count, and write RGBA PNGs.

Watch mode, for each tool in turn: start the process, wait until it holds an
inotify watch (its observer is up), drop one warm-up image and wait for its
output (the model is then loaded), then rename the N images into the inbox
at once and poll the output folder until all N outputs exist (non-empty: rembg
writes in place, bgremove renames finished files in). Peak memory is the
process's VmHWM (and the sum of VmRSS over its process tree while polling, in
case it forks); CPU is the process's user+system time over the drain. Then
the process is stopped (SIGTERM). Batch mode: the N images are in the folder
before the start; ``bgremove watch --once`` and ``rembg p`` (no ``-w``) are
timed from start to exit, model load included.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import throwaway_state

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
for _p in (str(ROOT), str(BENCH)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

SIZE = (1024, 768)
MODEL = "u2netp"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- images -----------------------------------------------------------------------------------


def make_images(folder: Path, count: int) -> list[Path]:
    """``count`` distinct 1024x768 JPEG photos (plus ``warmup.jpg``) in ``folder``."""
    from bench_quality import DEFAULT_SET, ensure_set
    from PIL import Image

    names = ensure_set(DEFAULT_SET)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count + 1):
        name = names[i % len(names)]
        grow = i // len(names)  # a new crop each time round the set
        with Image.open(DEFAULT_SET / f"{name}.png") as src:
            im = src.convert("RGB").resize((SIZE[0] + 8 * grow, SIZE[1] + 6 * grow),
                                           Image.Resampling.LANCZOS)
        left, top = 4 * grow, 3 * grow
        im = im.crop((left, top, left + SIZE[0], top + SIZE[1]))
        if grow % 2:
            im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        path = folder / ("warmup.jpg" if i == count else f"img{i:04d}.jpg")
        im.save(path, quality=90)
        if i < count:
            paths.append(path)
    return paths


# -- /proc --------------------------------------------------------------------------------


def _status_kb(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def tree_pids(root: int) -> list[int]:
    """``root`` and its descendants (from /proc/*/stat)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo.extend(children.get(pid, ()))
    return pids


def tree_rss(root: int) -> int:
    """Bytes resident in ``root``'s process tree now."""
    return sum(_status_kb(pid, "VmRSS") for pid in tree_pids(root)) * 1024


def vm_hwm(pid: int) -> int:
    return _status_kb(pid, "VmHWM") * 1024


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def has_inotify(pid: int) -> bool:
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if "inotify" in os.readlink(f"/proc/{pid}/fd/{fd}"):
                    return True
            except OSError:
                continue
    except OSError:
        pass
    return False


# -- the two tools --------------------------------------------------------------------------


class Tool:
    """How to start one tool and where its outputs appear."""

    def __init__(self, label: str, argv: Callable[[Path, Path, bool], list[str]],
                 env: dict[str, str]) -> None:
        self.label, self.argv, self.env = label, argv, env


def tools(rembg_py: str, config: Path) -> list[Tool]:
    from bgremove.local.models import model_dir

    base = {k: v for k, v in os.environ.items()
            if k not in ("WAVESPEED_API_KEY", "BGREMOVE_CONFIG")}
    cache = str(model_dir())
    rembg = str(Path(rembg_py).parent / "rembg")
    config.write_text(f"backend: local\nlocal:\n  model: {MODEL}\n", encoding="utf-8")

    def ours(*extra: str) -> Callable[[Path, Path, bool], list[str]]:
        def argv(inbox: Path, outbox: Path, once: bool) -> list[str]:
            return [sys.executable, "-m", "bgremove", "watch", str(inbox), str(outbox), "--backend",
                    "local", "--config", str(config), "--log-level", "warning", *extra,
                    *(["--once"] if once else [])]
        return argv

    def theirs(inbox: Path, outbox: Path, once: bool) -> list[str]:
        return [rembg, "p", "-m", MODEL,
                *([] if once else ["-w"]), str(inbox), str(outbox)]

    return [Tool("bgremove watch --backend local (concurrency 2, the default)", ours(), base),
            Tool("bgremove watch --backend local --concurrency 1", ours("--concurrency", "1"),
                 base),
            Tool(f"rembg p -w -m {MODEL}", theirs, dict(base, U2NET_HOME=cache))]


def _outputs(outbox: Path, names: set[str]) -> int:
    n = 0
    for name in names:
        try:
            if (outbox / name).stat().st_size > 0:
                n += 1
        except OSError:
            pass
    return n


def run_watch(tool: Tool, sources: list[Path], warmup: Path, timeout: float) -> dict[str, Any]:
    """Drop ``sources`` into the running tool; time until every output exists."""
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        inbox, outbox, staging = tmp / "in", tmp / "out", tmp / "staging"
        inbox.mkdir()
        outbox.mkdir()
        staging.mkdir()
        for src in [*sources, warmup]:
            os.link(src, staging / src.name)
        log = open(tmp / "tool.log", "wb")  # noqa: SIM115 - closed below
        proc = subprocess.Popen(tool.argv(inbox, outbox, False), cwd=ROOT, env=tool.env,
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        result: dict[str, Any] = {"tool": tool.label, "error": None}
        try:
            started = time.monotonic()
            deadline = started + 120
            while not has_inotify(proc.pid):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise _ToolFailed("never started watching")
                time.sleep(0.05)
            os.rename(staging / warmup.name, inbox / warmup.name)
            while _outputs(outbox, {"warmup.png"}) < 1:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise _ToolFailed("warm-up image never came out")
                time.sleep(0.05)
            result["ready"] = time.monotonic() - started
            names = {p.with_suffix(".png").name for p in sources}
            cpu0 = cpu_seconds(proc.pid)
            peak_tree = tree_rss(proc.pid)
            dropped = time.monotonic()
            for src in sources:
                os.rename(staging / src.name, inbox / src.name)
            deadline = dropped + timeout
            n = 0
            while True:
                peak_tree = max(peak_tree, tree_rss(proc.pid))
                n = _outputs(outbox, names)
                if n >= len(names):
                    break
                if proc.poll() is not None:
                    raise _ToolFailed(f"exited with {proc.returncode} after {n} outputs")
                if time.monotonic() > deadline:
                    raise _ToolFailed(f"only {n} of {len(names)} outputs after {timeout:.0f} s")
                time.sleep(0.05)
            result["drain"] = time.monotonic() - dropped
            result["cpu"] = cpu_seconds(proc.pid) - cpu0
            result["hwm"] = vm_hwm(proc.pid)
            result["tree_peak"] = max(peak_tree, tree_rss(proc.pid))
        except _ToolFailed as exc:
            result["error"] = str(exc)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
            log.close()
            text = (tmp / "tool.log").read_text(errors="replace")
        if result["error"]:
            result["error"] += ": " + _last_error(text)
        elif "Traceback" in text or "Error" in text:
            result["warnings"] = _last_error(text)
        return result


def run_batch(tool: Tool, sources: list[Path], timeout: float) -> dict[str, Any]:
    """The N images already in the folder; time from start to exit (model load included)."""
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        inbox, outbox = tmp / "in", tmp / "out"
        inbox.mkdir()
        outbox.mkdir()
        for src in sources:
            os.link(src, inbox / src.name)
        started = time.monotonic()
        done = subprocess.run(tool.argv(inbox, outbox, True), cwd=ROOT, env=tool.env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, timeout=timeout)
        wall = time.monotonic() - started
        n = _outputs(outbox, {p.with_suffix(".png").name for p in sources})
        error = None
        if done.returncode != 0 or n != len(sources):
            error = (f"exit {done.returncode}, {n} of {len(sources)} outputs: "
                     + _last_error(done.stdout.decode(errors="replace")))
        return {"tool": tool.label, "wall": wall, "error": error}


class _ToolFailed(Exception):
    pass


def _last_error(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        if "Error" in line or "error" in line:
            return line[:300]
    return lines[-1][:300] if lines else "(no output)"


def ensure_rembg_cli(python: str) -> None:
    """``rembg p`` needs rembg's ``cli`` extra (click, watchdog, filetype, its server deps);
    scripts/rembg-env.sh installs the library only. Add the extra, same rembg version."""
    check = "import click, watchdog, filetype, rembg.commands"
    if subprocess.run([python, "-c", check], capture_output=True).returncode == 0:
        return
    version = subprocess.run([python, "-c", "import importlib.metadata as m; "
                              "print(m.version('rembg'))"], stdout=subprocess.PIPE, text=True,
                             check=True).stdout.strip()
    print(f"installing rembg[cli]=={version} into {Path(python).parent.parent}", file=sys.stderr)
    subprocess.run([python, "-m", "pip", "install", "--quiet", f"rembg[cli]=={version}"],
                   check=True, stdout=sys.stderr)


def rembg_version(python: str) -> str:
    out = subprocess.run([python, "-c", "import importlib.metadata as m; "
                          "print(m.version('rembg'), m.version('onnxruntime'))"],
                         stdout=subprocess.PIPE, text=True, check=True)
    rembg, ort = out.stdout.split()
    return f"rembg {rembg}, onnxruntime {ort} (its venv)"


def compare(count: int, *, batch: bool = True,
            timeout: float = 900.0) -> list[tuple[str, str, str]]:
    """Rows for bench_watch.py's table: drain time, CPU and peak memory of each tool."""
    import onnxruntime
    from bench_quality import rembg_python

    from bgremove.local.models import ensure_model

    ensure_model(MODEL)
    rembg_py = rembg_python()
    ensure_rembg_cli(rembg_py)
    rows: list[tuple[str, str, str]] = []
    with tempfile.TemporaryDirectory() as td:
        folder = Path(td) / "images"
        sources = make_images(folder, count)
        warmup = folder / "warmup.jpg"
        ours, ours_one, theirs = tools(rembg_py, Path(td) / "config.yaml")
        versions = f"{rembg_version(rembg_py)}; bgremove onnxruntime {onnxruntime.__version__}"
        rows.append((f"local backend vs rembg watch, {count} JPEGs {SIZE[0]}x{SIZE[1]}, "
                     f"{MODEL}", versions, "-"))
        for tool in (ours, ours_one, theirs):
            print(f"watch: {tool.label} ...", file=sys.stderr)
            r = run_watch(tool, sources, warmup, timeout)
            if r["error"]:
                rows.append((f"  {tool.label}: watch mode", f"FAILED: {r['error']}", "-"))
                continue
            note = f"; log: {r['warnings']}" if r.get("warnings") else ""
            rows.append((
                f"  {tool.label}: drain {count} dropped files",
                f"{r['drain']:.1f} s ({r['drain'] / count:.2f} s/image, CPU "
                f"{r['cpu'] / count:.2f} s/image); peak RSS {r['hwm'] / 2**20:.0f} MB"
                f" (tree {r['tree_peak'] / 2**20:.0f} MB); start to warm-up out "
                f"{r['ready']:.1f} s{note}", "-"))
        if batch:
            for tool in (ours, theirs):
                print(f"batch: {tool.label} ...", file=sys.stderr)
                r = run_batch(tool, sources, timeout)
                label = "bgremove watch --backend local --once" if tool is ours \
                    else f"rembg p -m {MODEL} (no -w)"
                value = f"FAILED: {r['error']}" if r["error"] else \
                    f"{r['wall']:.1f} s start to exit ({r['wall'] / count:.2f} s/image)"
                rows.append((f"  {label}: {count} files already there", value, "-"))
    return rows


def main() -> int:
    throwaway_state.isolate()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=50)
    parser.add_argument("--no-batch", action="store_true", help="watch mode only")
    args = parser.parse_args()
    rows = compare(args.files, batch=not args.no_batch)
    for name, value, _goal in rows:
        print(f"{name}: {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
