"""``bgremove remove INPUT...``: cut out a batch of files, N at a time."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from bgremove.cli import EXIT_FAILED, EXIT_OK, add_config_argument, config_from_args
from bgremove.errors import ConfigError

if TYPE_CHECKING:
    from bgremove.errors import OutputError
    from bgremove.jobs import JobResult

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif"}


def register(sub: Any) -> None:
    p = sub.add_parser(
        "remove",
        help="remove the background of image files",
        description="Remove the background of each INPUT (files, or folders of images). "
        "Writes DIR/<stem>.<ext> with -o DIR, else <stem>-nobg.<ext> beside the input. "
        "A result that already exists is kept and its input not sent again (--overwrite "
        "to redo it).",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders")
    p.add_argument("-o", "--output-dir", "--output", dest="output", metavar="DIR|FILE",
                   help="folder for the results; for a single image, a name ending in .png, "
                   ".jpg, .webp or .tif names the result file itself")
    p.add_argument("-r", "--recursive", action="store_true",
                   help="take the images in subfolders too (mirrored under -o DIR)")
    p.add_argument("--overwrite", action="store_true",
                   help="cut out again images whose result already exists (by default they "
                   "are skipped and not sent)")
    p.add_argument("--concurrency", type=int, metavar="N",
                   help="images processed at once (default: concurrency in the config, 4)")
    p.add_argument("--backend", choices=("auto", "wavespeed", "local"),
                   help="auto: WaveSpeed when an API key is set, else the offline model")
    p.add_argument("--format", choices=("png", "webp", "tiff", "jpg"),
                   help="output format (default png; jpg is flattened onto --background, "
                   "white by default)")
    p.add_argument("--model", metavar="NAME",
                   help="the offline model: u2netp (fast) or u2net (better); the WaveSpeed "
                   "service has one model (default: local.model in the config)")
    p.add_argument("--strip-metadata", action="store_true", default=None,
                   help="write no EXIF (by default outputs keep the input's EXIF, such as "
                   "artist, copyright, date and camera, but never its GPS location)")
    p.add_argument("--mask-only", action="store_true", default=None,
                   help="write the mask as a greyscale image instead of the cut-out")
    p.add_argument("--background", metavar="COLOR",
                   help="fill the background with a colour (#ffffff, white, 255,255,255)")
    p.add_argument("--crop", action="store_true", default=None, help="crop to the subject")
    p.add_argument("--crop-margin", type=int, metavar="PX", help="margin kept around the subject")
    p.add_argument("--foreground", action="store_true", default=None,
                   help="estimate the foreground colour of soft edges (no background colour "
                   "bleeding through hair and fur)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object per file on stdout")
    add_config_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from bgremove.backends import make_backend, resolve_backend_name
    from bgremove.imaging import parse_color

    if args.concurrency is not None and args.concurrency < 1:
        raise ConfigError("--concurrency must be at least 1")
    out_dir, out_file = output_target(args.output)
    named_format = _format_of(out_file, args.format)
    config = config_from_args(args, {
        "concurrency": args.concurrency,
        "backend": args.backend,
        "output.format": args.format or named_format,
        "output.mask_only": args.mask_only,
        "output.background": args.background,
        "output.crop": args.crop,
        "output.crop_margin": args.crop_margin,
        "output.foreground": args.foreground,
        "output.strip_metadata": args.strip_metadata,
        "local.model": args.model,
    })
    if args.model is not None and resolve_backend_name(config) == "wavespeed":
        raise ConfigError("--model picks the offline model; the WaveSpeed service has one model",
                          hint="add --backend local to use the offline model")
    if config.output.background:
        parse_color(config.output.background)  # a bad colour is a usage error, before any work
    if config.output.foreground and not config.output.mask_only:
        _require_numpy()
    found = expand_inputs(args.inputs, config.output.suffix, out_dir, recursive=args.recursive)
    if found.subfolders:
        _say(f"{_count(found.subfolders, 'subfolder')} left out "
             f"({', '.join(found.subfolder_parents)}): add -r to include them")
    if not found.images:
        raise ConfigError(f"no images found in {', '.join(args.inputs)}",
                          hint=f"images are {', '.join(sorted(IMAGE_SUFFIXES))}")
    if out_file is not None:
        if len(found.images) != 1:
            raise ConfigError(f"-o {out_file} names one result file, but there are "
                              f"{len(found.images)} images", hint="give a folder to -o")
        plan = [(found.images[0], out_file)]
    else:
        plan = plan_outputs(found.images, out_dir, config.output, subdirs=found.subdirs)
    check_output_folder(out_file.parent if out_file is not None else out_dir)
    backend = make_backend(config)
    try:
        results = run_batch(plan, backend, config, json_lines=args.json,
                            overwrite=args.overwrite)
    finally:
        backend.close()
    _say(summary(results, found.others))
    return EXIT_OK if all(r.status in ("ok", "skipped") for r in results) else EXIT_FAILED


def _say(text: str) -> None:
    sys.stderr.write(f"bgremove: {text}\n")
    sys.stderr.flush()


def _require_numpy() -> None:
    from bgremove.errors import ConfigError

    try:
        import numpy  # noqa: F401
    except ImportError:
        raise ConfigError("--foreground needs numpy",
                          hint="pip install 'bgremove[local]'") from None


# --- where the results go ------------------------------------------------------------------

#: ``-o NAME`` with one of these endings (and not an existing folder) names the result file.
_NAMED_FORMATS = {".png": "png", ".jpg": "jpg", ".jpeg": "jpg", ".webp": "webp",
                  ".tif": "tiff", ".tiff": "tiff"}


def output_target(value: str | None) -> tuple[Path | None, Path | None]:
    """``(folder, None)``, ``(None, file)`` or ``(None, None)`` (beside each input) for ``-o``."""
    if not value:
        return None, None
    path = Path(value)
    if path.suffix.lower() in _NAMED_FORMATS and not path.is_dir():
        return None, path
    return path, None


def _format_of(out_file: Path | None, asked: str | None) -> str | None:
    """The output format a result file's name implies; a contradicting ``--format`` is refused."""
    if out_file is None:
        return None
    named = _NAMED_FORMATS[out_file.suffix.lower()]
    if asked is not None and asked != named:
        raise ConfigError(f"--format {asked} contradicts the result name {out_file}",
                          hint=f"name it .{asked if asked != 'tiff' else 'tif'}, "
                          "or drop --format")
    return named


def check_output_folder(folder: Path | None) -> None:
    """Check once, before anything is sent, that ``-o``'s folder can take the results."""
    if folder is None:
        return
    problem = OutputCheck.probe(folder)
    if problem is not None:
        raise ConfigError(problem.message, hint=problem.hint)


# --- which files are inputs ----------------------------------------------------------------

@dataclass
class Found:
    """What ``expand_inputs`` found, and what it left out of the folders it looked in."""

    images: list[Path] = field(default_factory=list)
    #: image -> its folder below the folder named on the command line (with ``recursive``)
    subdirs: dict[Path, Path] = field(default_factory=dict)
    subfolders: int = 0  # subfolders not entered (no ``recursive``)
    subfolder_parents: list[str] = field(default_factory=list)
    others: Counter[str] = field(default_factory=Counter)  # files that are not images, by ending


def is_earlier_result(name: Path, suffix: str) -> bool:
    """``x-nobg.png`` and the collision names ``x-nobg-2.png``: a result, never an input."""
    return re.search(f"{re.escape(suffix)}(-[0-9]+)?$", name.stem) is not None


def expand_inputs(inputs: list[str], suffix: str = "-nobg", out_dir: Path | None = None, *,
                  recursive: bool = False) -> Found:
    """Files as given (missing ones too: they fail with a clear line); folders -> their images.

    Each file is taken once, however it is named. From a folder, earlier results
    (``<stem><suffix>.<ext>``, ``<stem><suffix>-2.<ext>``) and the output folder are left
    out, so running the same command twice does not cut out (and pay for) the cut-outs.
    Hidden files and folders are ignored; subfolders are entered with ``recursive`` only
    and counted otherwise, as are the files that are not images.
    """
    found = Found()
    seen: set[str] = set()
    skip_dir = _key(out_dir) if out_dir is not None else None

    def add(path: Path, subdir: Path | None = None) -> None:
        if _key(path) not in seen:
            seen.add(_key(path))
            found.images.append(path)
            if subdir is not None and subdir.parts:
                found.subdirs[path] = subdir

    def scan(folder: Path, subdir: Path) -> None:
        try:
            children = sorted(folder.iterdir())
        except OSError:
            add(folder)  # unreadable: it fails later with one clear line
            return
        skipped_here = 0
        for child in children:
            if child.name.startswith("."):
                continue
            with contextlib.suppress(OSError):
                if child.is_dir():
                    if _key(child) == skip_dir:
                        continue
                    if recursive:
                        scan(child, subdir / child.name)
                    else:
                        skipped_here += 1
                elif child.is_file():
                    if child.suffix.lower() not in IMAGE_SUFFIXES:
                        found.others[child.suffix.lower() or "(no ending)"] += 1
                    elif out_dir is not None or not is_earlier_result(child, suffix):
                        add(child, subdir)
        if skipped_here:
            found.subfolders += skipped_here
            found.subfolder_parents.append(str(folder))

    for raw in inputs:
        path = Path(raw)
        try:
            is_dir = path.is_dir()
        except OSError:
            is_dir = False
        if not is_dir:
            add(path)
        elif _key(path) != skip_dir:
            scan(path, Path())
    return found


def plan_outputs(inputs: list[Path], out_dir: Path | None, output: Any, *,
                 subdirs: dict[Path, Path] | None = None) -> list[tuple[Path, Path]]:
    """Pair each input with an output; never two inputs on one output, never onto an input.

    With ``out_dir`` an image found in a subfolder goes to the same subfolder of it. The
    pairing depends on the inputs alone, so the same command names the same results again.
    """
    from bgremove.jobs import output_path_for

    subdirs = subdirs or {}
    taken: set[str] = {_key(p) for p in inputs}
    plan: list[tuple[Path, Path]] = []
    for src in inputs:
        folder = out_dir / subdirs[src] if out_dir is not None and src in subdirs else out_dir
        base = output_path_for(src, folder, output)
        dst, n = base, 1
        while _key(dst) in taken:
            n += 1
            dst = base.with_name(f"{base.stem}-{n}{base.suffix}")
        taken.add(_key(dst))
        plan.append((src, dst))
    return plan


def _key(path: Path) -> str:
    # The real path (``..`` and symlinks resolved), so `-o in/../in` cannot overwrite an input;
    # case-folded because on case-insensitive filesystems X.png and x.png are one file.
    try:
        return os.path.realpath(path).casefold()
    except (OSError, ValueError):
        return str(path.absolute()).casefold()


# --- the batch -----------------------------------------------------------------------------

def run_batch(plan: list[tuple[Path, Path]], backend: Any, config: Any, *,
              json_lines: bool, out: TextIO | None = None, err: TextIO | None = None,
              overwrite: bool = False) -> list[JobResult]:
    """Run every job on a pool of ``config.concurrency`` threads; report each as it ends.

    An output that already exists is kept and its input not sent (status "skipped"),
    unless ``overwrite``. Each worker asks the breaker before it starts an image, so once
    the service has shown every image would fail no new one is started.
    """
    from concurrent.futures import ThreadPoolExecutor, as_completed

    from bgremove.backends import CancelToken, JobHooks

    out = out or sys.stdout
    err = err or sys.stderr
    cancel = CancelToken()
    bar = _ProgressBar(len(plan), err) if err.isatty() and not json_lines else None
    results: list[JobResult] = []
    check_output = OutputCheck()
    breaker = _Breaker()

    def one(src: Path, dst: Path) -> JobResult:
        if not overwrite and _is_file(dst):
            return _skipped(src, dst)
        stop = breaker.reason_to_stop(src)
        if stop is not None:
            return stop
        result = _run_one(src, dst, backend, config, JobHooks(cancel=cancel), check_output)
        breaker.record(result)  # here, before this worker takes its next image
        return result

    pool = ThreadPoolExecutor(max_workers=max(1, min(config.concurrency, len(plan) or 1)),
                              thread_name_prefix="bgremove")
    futures = {pool.submit(one, src, dst): src for src, dst in plan}
    try:
        for future in as_completed(futures):
            result = future.result()
            results.append(result)
            if bar:
                bar.clear()
            _report(result, json_lines, out, err)
            if bar:
                bar.update(result.status != "failed")
    except KeyboardInterrupt:
        # Stop at once: queued images never start; images in flight are abandoned (their
        # tasks may still run and be billed, so say how many), the process exits 130.
        cancel.cancel()
        pool.shutdown(wait=False, cancel_futures=True)
        in_flight = sum(1 for f in futures if f.running())
        if bar:
            bar.clear()
        if in_flight:
            err.write(f"bgremove: stopped; {in_flight} image(s) were being processed and may "
                      "still be billed by the service\n")
        raise
    pool.shutdown(wait=True)
    if bar:
        bar.finish()
    return results


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:
        return False


def _skipped(src: Path, dst: Path) -> JobResult:
    from bgremove.jobs import JobResult

    return JobResult(src, dst, "skipped", None, 0.0)


def summary(results: list[JobResult], others: Counter[str] | None = None) -> str:
    """The closing line: what was done, skipped and failed, and what was left out."""
    counts = Counter(r.status for r in results)
    parts = [f"{counts['ok']} done"]
    if counts["skipped"]:
        parts.append(f"{counts['skipped']} skipped (result already there; --overwrite "
                     "to redo)")
    if counts["failed"]:
        parts.append(f"{counts['failed']} failed")
    text = f"{_count(len(results), 'image')}: {', '.join(parts)}"
    empty = sum(1 for r in results if r.warning)
    if empty:
        text += f"; {empty} with no subject found"
    if others:
        endings = ", ".join(sorted(others))
        text += (f"; {_count(sum(others.values()), 'other file')} left out "
                 f"(not images bgremove reads: {endings})")
    return text


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


class _Breaker:
    """Stops starting new images once the service has shown every one would fail.

    A refused key or a suspended account fails every image the same way: the
    first one stops the batch. An outage (no connection, timeouts) stops it
    after three failures in a row, each with its own retries used up. Images
    already running finish; the rest are reported as not attempted. Workers
    record each result and ask before each start, under one lock, so the
    decision never lags behind the work.
    """

    OUTAGE_IN_A_ROW = 3

    def __init__(self) -> None:
        self.reason: BaseException | None = None
        self._outages = 0
        self._lock = threading.Lock()

    def record(self, result: JobResult) -> None:
        kind = result.error.kind if result.error else None
        with self._lock:
            if self.reason is not None:
                return
            self._outages = self._outages + 1 if kind in ("connection", "timeout") else 0
            if kind in ("auth", "suspended") or self._outages >= self.OUTAGE_IN_A_ROW:
                self.reason = result.error

    def reason_to_stop(self, src: Path) -> JobResult | None:
        """None to go on; else the "not attempted" result for ``src``."""
        from bgremove.errors import BgremoveError
        from bgremove.jobs import JobResult

        with self._lock:
            reason = self.reason
        if reason is None:
            return None
        error = BgremoveError(f"{src}: not attempted: {reason}")
        error.kind = "not_attempted"
        return JobResult(src, None, "failed", error, 0.0)


def _run_one(src: Path, dst: Path, backend: Any, config: Any, hooks: Any,
             check_output: OutputCheck) -> JobResult:
    import logging
    import time

    from bgremove.errors import BgremoveError
    from bgremove.jobs import JobResult, remove_file

    started = time.monotonic()
    try:
        check_output(dst)  # before the upload: a result we cannot save is not paid for
        return remove_file(src, dst, backend, config, hooks)
    except BgremoveError as exc:
        return JobResult(src, None, "failed", exc, time.monotonic() - started,
                         getattr(exc, "task_id", None))
    except Exception as exc:  # a bug must cost one file, not the batch
        logging.getLogger(__name__).debug("unexpected error on %s", src, exc_info=True)
        error = BgremoveError(f"{src}: internal error: {type(exc).__name__}: {exc}",
                              hint="please report it with --log-level debug output")
        return JobResult(src, None, "failed", error, time.monotonic() - started)


class OutputCheck:
    """Checks, before an image is uploaded, that its result could be saved.

    Each output folder is probed once per batch (created if needed, then a test
    file written and removed); each output name is checked against the
    filesystem's name length limit.
    """

    def __init__(self) -> None:
        self._folders: dict[str, BaseException | None] = {}
        self._lock = threading.Lock()

    def __call__(self, dst: Path) -> None:
        from bgremove.errors import OutputError

        folder = dst.parent
        with self._lock:
            key = _key(folder)
            if key not in self._folders:
                self._folders[key] = self.probe(folder)
            problem = self._folders[key]
        if problem is not None:
            raise problem
        try:
            name_max = os.pathconf(folder, "PC_NAME_MAX")
        except (OSError, ValueError, AttributeError):
            name_max = 255
        if len(os.fsencode(dst.name)) > name_max:
            raise OutputError(f"cannot write {dst}: the name is longer than {name_max} bytes",
                              hint="rename the input to a shorter name", transient=False)

    @staticmethod
    def probe(folder: Path) -> OutputError | None:
        """The reason ``folder`` cannot take results (created if missing), or None."""
        import tempfile

        from bgremove.errors import OutputError

        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(prefix=".bgremove-", suffix=".tmp", dir=folder)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            return OutputError(f"cannot write to output folder {folder}: {exc.strerror or exc}",
                               hint="check the -o path, its permissions and free space")
        return None


def _report(result: JobResult, json_lines: bool, out: TextIO, err: TextIO) -> None:
    if json_lines:
        out.write(json.dumps(result.as_dict(), ensure_ascii=False) + "\n")
        out.flush()
    elif result.status == "skipped":
        pass  # counted in the summary: a re-run of a big folder is not a page of lines
    elif result.status == "ok":
        out.write(f"{result.input} -> {result.output} ({result.seconds:.1f} s)\n")
        out.flush()
        if result.warning:
            err.write(f"bgremove: {result.input}: warning: {result.warning}\n")
            err.flush()
    else:
        # Core errors usually name the file already; add it only where they do not.
        text = str(result.error)
        where = "" if str(result.input) in text else f"{result.input}: "
        err.write(f"bgremove: {where}{text}\n")
        err.flush()


class _ProgressBar:
    """A one-line bar on stderr, redrawn in place; only used on a terminal."""

    def __init__(self, total: int, stream: TextIO) -> None:
        self.total, self.done, self.failed, self.stream = total, 0, 0, stream
        self.draw()

    def draw(self) -> None:
        width = 30
        filled = int(width * self.done / self.total) if self.total else width
        failed = f", {self.failed} failed" if self.failed else ""
        self.stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] "
                          f"{self.done}/{self.total}{failed}")
        self.stream.flush()

    def clear(self) -> None:
        self.stream.write("\r\033[K")

    def update(self, ok: bool) -> None:
        self.done += 1
        self.failed += 0 if ok else 1
        self.draw()

    def finish(self) -> None:
        self.stream.write("\n")
        self.stream.flush()
