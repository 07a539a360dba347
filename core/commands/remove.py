"""``bgremove remove INPUT...``: cut out a batch of files, N at a time."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from bgremove.cli import EXIT_FAILED, EXIT_OK, add_config_argument, config_from_args
from bgremove.errors import ConfigError

if TYPE_CHECKING:
    from bgremove.jobs import JobResult

#: Seconds between progress lines when stderr is not a terminal.
PLAIN_PROGRESS_SECONDS = 10.0

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif"}


def register(sub: Any) -> None:
    p = sub.add_parser(
        "remove",
        help="remove the background of image files",
        description="Remove the background of each INPUT (files, or folders of images). "
        "Writes DIR/<stem>.<ext> with -o, else <stem>-nobg.<ext> beside the input.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders")
    p.add_argument("-o", "--output-dir", metavar="DIR", help="folder for the results")
    p.add_argument("--concurrency", type=int, metavar="N",
                   help="images processed at once (default: concurrency in the config, 4)")
    p.add_argument("--backend", choices=("auto", "wavespeed", "local"),
                   help="auto: WaveSpeed when an API key is set, else the offline model")
    p.add_argument("--format", choices=("png", "webp", "tiff"), help="output format (default png)")
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
    from bgremove.backends import make_backend
    from bgremove.imaging import parse_color

    if args.concurrency is not None and args.concurrency < 1:
        raise ConfigError("--concurrency must be at least 1")
    config = config_from_args(args, {
        "concurrency": args.concurrency,
        "backend": args.backend,
        "output.format": args.format,
        "output.mask_only": args.mask_only,
        "output.background": args.background,
        "output.crop": args.crop,
        "output.crop_margin": args.crop_margin,
        "output.foreground": args.foreground,
    })
    if config.output.background:
        parse_color(config.output.background)  # a bad colour is a usage error, before any work
    if config.output.foreground and not config.output.mask_only:
        _require_numpy()
    out_dir = Path(args.output_dir) if args.output_dir else None
    inputs = expand_inputs(args.inputs, config.output.suffix, out_dir)
    if not inputs:
        raise ConfigError(f"no images found in {', '.join(args.inputs)}",
                          hint=f"images are {', '.join(sorted(IMAGE_SUFFIXES))}")
    plan = plan_outputs(inputs, out_dir, config.output)
    backend = make_backend(config)
    try:
        results = run_batch(plan, backend, config, json_lines=args.json)
    finally:
        backend.close()
    return EXIT_OK if all(r.status == "ok" for r in results) else EXIT_FAILED


def _require_numpy() -> None:
    from bgremove.errors import ConfigError

    try:
        import numpy  # noqa: F401
    except ImportError:
        raise ConfigError("--foreground needs numpy",
                          hint="pip install 'bgremove[local]'") from None


def expand_inputs(inputs: list[str], suffix: str = "-nobg",
                  out_dir: Path | None = None) -> list[Path]:
    """Files as given (missing ones too: they fail with a clear line); folders -> their images.

    Each file is taken once, however it is named. From a folder, earlier results
    (``<stem><suffix>.<ext>``) and the output folder's own files are left out, so
    running the same command twice does not cut out (and pay for) the cut-outs.
    """
    paths: list[Path] = []
    seen: set[str] = set()
    skip_dir = _key(out_dir) if out_dir is not None else None

    def add(path: Path) -> None:
        if _key(path) not in seen:
            seen.add(_key(path))
            paths.append(path)

    for raw in inputs:
        path = Path(raw)
        try:
            if not path.is_dir():
                add(path)
                continue
            if _key(path) == skip_dir:
                continue
            children = sorted(path.iterdir())
        except OSError:
            add(path)  # unreadable or a bad name: it fails later with one clear line
            continue
        for child in children:
            with contextlib.suppress(OSError):
                if (child.suffix.lower() in IMAGE_SUFFIXES and not child.name.startswith(".")
                        and not (out_dir is None and child.stem.endswith(suffix))
                        and child.is_file()):
                    add(child)
    return paths


def plan_outputs(inputs: list[Path], out_dir: Path | None, output: Any) -> list[tuple[Path, Path]]:
    """Pair each input with an output; never two inputs on one output, never onto an input."""
    from bgremove.jobs import output_path_for

    taken: set[str] = {_key(p) for p in inputs}
    plan: list[tuple[Path, Path]] = []
    for src in inputs:
        dst = output_path_for(src, out_dir, output)
        n = 1
        while _key(dst) in taken:
            n += 1
            base = output_path_for(src, out_dir, output)
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


def run_batch(plan: list[tuple[Path, Path]], backend: Any, config: Any, *,
              json_lines: bool, out: TextIO | None = None, err: TextIO | None = None
              ) -> list[JobResult]:
    """Run every job on a pool of ``config.concurrency`` threads; report each as it ends."""
    from concurrent.futures import ThreadPoolExecutor, as_completed

    from bgremove.backends import CancelToken, JobHooks
    from bgremove.console import Console, Progress

    out = out or sys.stdout
    err = err or sys.stderr
    cancel = CancelToken()
    console = Console(err, live=False if json_lines else None,
                      plain_every=None if json_lines else PLAIN_PROGRESS_SECONDS)
    console.attach()
    bar = Progress(console, len(plan))
    results: list[JobResult] = []
    lock = threading.Lock()

    check_output = OutputCheck()

    def one(src: Path, dst: Path) -> JobResult:
        return _run_one(src, dst, backend, config, JobHooks(cancel=cancel), check_output)

    pool = ThreadPoolExecutor(max_workers=max(1, min(config.concurrency, len(plan) or 1)),
                              thread_name_prefix="bgremove")
    futures = {pool.submit(one, src, dst): src for src, dst in plan}
    breaker = _Breaker()
    try:
        for future in as_completed(futures):
            if future.cancelled():
                result = breaker.skipped(futures[future])
            else:
                result = future.result()
                if breaker.trips(result):
                    for pending in futures:
                        pending.cancel()  # only images not started yet
            with lock:
                results.append(result)
                with console.cleared():
                    _report(result, json_lines, out, err)
                bar.step(result.status == "ok")
    except KeyboardInterrupt:
        # Stop at once: queued images never start; images in flight are abandoned (their
        # tasks may still run and be billed, so say how many), the process exits 130.
        cancel.cancel()
        pool.shutdown(wait=False, cancel_futures=True)
        in_flight = sum(1 for f in futures if f.running())
        console.close()
        if in_flight:
            err.write(f"bgremove: stopped; {in_flight} image(s) were being processed and may "
                      "still be billed by the service\n")
        raise
    pool.shutdown(wait=True)
    if len(plan) > 1:
        bar.finish(_summary(results, bar.elapsed()))
    else:
        console.close()
    return results


def _summary(results: list[JobResult], seconds: float) -> str:
    """``3 images: 2 done, 1 failed in 4.2 s``, the last line of a batch."""
    from bgremove.console import format_duration

    done = sum(r.status == "ok" for r in results)
    parts = [f"{done} done"]
    if len(results) - done:
        parts.append(f"{len(results) - done} failed")
    took = f"{seconds:.1f} s" if seconds < 60 else format_duration(seconds)
    return f"{len(results)} images: {', '.join(parts)} in {took}"


class _Breaker:
    """Stops starting new images once the service has shown every one would fail.

    A refused key or a suspended account fails every image the same way: the
    first one stops the batch. An outage (no connection, timeouts) stops it
    after three failures in a row, each with its own retries used up. Images
    already running finish; the rest are reported as not attempted.
    """

    OUTAGE_IN_A_ROW = 3

    def __init__(self) -> None:
        self.reason: BaseException | None = None
        self._outages = 0

    def trips(self, result: JobResult) -> bool:
        if self.reason is not None:
            return False
        kind = result.error.kind if result.error else None
        self._outages = self._outages + 1 if kind in ("connection", "timeout") else 0
        if kind in ("auth", "suspended") or self._outages >= self.OUTAGE_IN_A_ROW:
            self.reason = result.error
            return True
        return False

    def skipped(self, src: Path) -> JobResult:
        from bgremove.errors import BgremoveError
        from bgremove.jobs import JobResult

        error = BgremoveError(f"{src}: not attempted: {self.reason}")
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
                self._folders[key] = self._probe(folder)
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
    def _probe(folder: Path) -> BaseException | None:
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
    elif result.status == "ok":
        out.write(f"{result.input} -> {result.output} ({result.seconds:.1f} s)\n")
        out.flush()
    else:
        # Core errors usually name the file already; add it only where they do not.
        text = str(result.error)
        where = "" if str(result.input) in text else f"{result.input}: "
        err.write(f"bgremove: {where}{text}\n")
        err.flush()
